/**
 * Image sources as pages hold them, turned into the 8-bit pixels preprocess() takes.
 *
 * Everything encoded or drawn goes through createImageBitmap with no colour-space conversion
 * and no premultiplied alpha, then is read back from a 2D canvas: a PNG's stored bytes come out
 * as Pillow decodes them. A 2D canvas keeps premultiplied pixels, so a translucent pixel's
 * colour would be rounded on the way back; such images are read again through WebGL 2, which
 * uploads and reads back unpremultiplied bytes exactly. EXIF orientation is applied (the
 * createImageBitmap default), as transformers' load_image does with exif_transpose.
 *
 * Node has no image decoder built in: there, pass decoded pixels (see `NODE_NEEDS_PIXELS`).
 */
import type { ImageInput } from './preprocess.js';

/** Pixels already in memory: preprocess() takes them synchronously. */
export type PixelSource = ImageInput | ImageData;
/** What needs decoding or drawing first: preprocess() returns a Promise for these. */
export type EncodedImage = HTMLImageElement | HTMLCanvasElement | OffscreenCanvas | ImageBitmap | VideoFrame | Blob | string | URL;
/** Every image classify() and preprocess() take. */
export type ImageSource = PixelSource | EncodedImage;

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';

/** Keep the bytes as stored: no colour management, no premultiplication. */
const BITMAP_OPTIONS: ImageBitmapOptions = { colorSpaceConversion: 'none', premultiplyAlpha: 'none' };

export const NODE_NEEDS_PIXELS =
  'in Node, pass decoded pixels { data, width, height, channels: 3 | 4 } (8-bit, rows top to bottom), ' +
  'e.g. from pngjs (PNG.sync.read(bytes)) or sharp (.raw().toBuffer({ resolveWithObject: true })): Node has no image decoder built in';

/** The pixels of an image that holds them already, or undefined when it needs decoding. */
export function pixelsOf(source: unknown): ImageInput | undefined {
  if (typeof source !== 'object' || source === null || !('data' in source) || !('width' in source) || !('height' in source)) return undefined;
  if ('channels' in source) return source as ImageInput;
  // ImageData (or a look-alike, as Node has no ImageData): RGBA, 4 bytes per pixel.
  const { data, width, height } = source as { data: unknown; width: number; height: number };
  if (!(data instanceof Uint8ClampedArray || data instanceof Uint8Array)) return undefined;
  return { data, width, height, channels: 4 };
}

/** Names the kind of a source for messages: "a Blob", "a string", "an object with keys a, b". */
export function describeSource(source: unknown): string {
  if (source === null || source === undefined) return String(source);
  if (typeof source !== 'object') return `a ${typeof source}`;
  const name = (source as object).constructor?.name;
  if (name && name !== 'Object') return `a ${name}`;
  return `an object with keys ${Object.keys(source).slice(0, 6).join(', ') || '(none)'}`;
}

const has = (name: string): boolean => typeof (globalThis as Record<string, unknown>)[name] === 'function';
const isA = (source: unknown, name: string): boolean => has(name) && source instanceof ((globalThis as Record<string, unknown>)[name] as new () => unknown);

/** How an image that needs decoding is read: fetched, decoded from its bytes, or drawn. */
export function isEncodedImage(source: unknown): 'url' | 'blob' | 'drawable' | undefined {
  if (typeof source === 'string' || source instanceof URL) return 'url';
  if (isA(source, 'Blob')) return 'blob';
  for (const name of ['HTMLImageElement', 'ImageBitmap', 'HTMLCanvasElement', 'OffscreenCanvas', 'VideoFrame']) if (isA(source, name)) return 'drawable';
  return undefined;
}

/** Decodes any image source to RGBA pixels as stored (PNG: byte for byte what Pillow reads). */
export async function decodeImage(source: ImageSource): Promise<ImageInput> {
  const pixels = pixelsOf(source);
  if (pixels) return pixels;
  const kind = isEncodedImage(source);
  if (!kind) {
    throw new TypeError(
      `cxc: cannot read an image from ${describeSource(source)}: pass ImageData, an <img>, a canvas, an OffscreenCanvas, an ImageBitmap, ` +
        'a VideoFrame, a Blob or File, a URL, or pixels { data, width, height, channels: 3 | 4 }',
    );
  }
  if (isNode) throw new TypeError(`cxc: cannot decode ${describeSource(source)} here: ${NODE_NEEDS_PIXELS}`);
  if (kind === 'url') return decodeBlob(await fetchImage(source as string | URL));
  if (kind === 'blob') return decodeBlob(source as Blob);
  if (isA(source, 'HTMLImageElement')) return bitmapPixels(await imageElementBitmap(source as HTMLImageElement), true);
  if (isA(source, 'ImageBitmap')) return bitmapPixels(source as ImageBitmap, false);
  return bitmapPixels(await createImageBitmap(source as ImageBitmapSource, BITMAP_OPTIONS), true);
}

/** A URL (relative to the page or worker) fetched as a Blob; failures name the URL. */
export async function fetchImage(source: string | URL): Promise<Blob> {
  const url = new URL(String(source), (globalThis as { location?: { href: string } }).location?.href);
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`cxc: cannot fetch the image ${url.href}: ${(error as Error).message}`, { cause: error });
  }
  if (!response.ok) throw new Error(`cxc: fetching the image ${url.href} failed: HTTP ${response.status}`);
  return response.blob();
}

async function decodeBlob(blob: Blob): Promise<ImageInput> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, BITMAP_OPTIONS);
  } catch (error) {
    throw new Error(`cxc: the browser cannot decode this ${blob.type || 'untyped'} Blob of ${blob.size} bytes as an image: ${(error as Error).message}`, { cause: error });
  }
  return bitmapPixels(bitmap, true);
}

/** An <img> once loaded, as a bitmap decoded from its source again without colour conversion. */
export async function imageElementBitmap(image: HTMLImageElement): Promise<ImageBitmap> {
  try {
    if (!image.complete || image.naturalWidth === 0) await image.decode();
  } catch (error) {
    throw new Error(`cxc: the <img> ${image.currentSrc || image.src || '(no src)'} did not load: ${(error as Error).message}`, { cause: error });
  }
  return createImageBitmap(image, BITMAP_OPTIONS);
}

/** Any drawable source as a bitmap that may be transferred (the caller's own object is left as it is). */
export async function toBitmap(source: EncodedImage): Promise<ImageBitmap> {
  if (isA(source, 'HTMLImageElement')) return imageElementBitmap(source as HTMLImageElement);
  return createImageBitmap(source as ImageBitmapSource, BITMAP_OPTIONS);
}

/** A bitmap's RGBA bytes; translucent images are read again through WebGL 2 for exact colours. */
export function bitmapPixels(bitmap: ImageBitmap, close: boolean): ImageInput {
  try {
    const { width, height } = bitmap;
    if (width === 0 || height === 0) throw new RangeError('cxc: the image is empty (0 pixels wide or high)');
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (!context) throw new Error('cxc: no 2D canvas context to read the image with');
    context.drawImage(bitmap, 0, 0);
    const data = readPixels(context, width, height);
    if (!hasTranslucentPixels(data)) return { data, width, height, channels: 4 };
    const exact = readThroughWebGl(bitmap);
    if (!exact) console.warn('cxc: no WebGL 2 here: the colours of translucent pixels come from a 2D canvas and may be off by rounding');
    return { data: exact ?? data, width, height, channels: 4 };
  } finally {
    if (close) bitmap.close();
  }
}

/** getImageData, with the error of a cross-origin image (a tainted canvas) explained. */
function readPixels(context: OffscreenCanvasRenderingContext2D, width: number, height: number): Uint8ClampedArray {
  try {
    return context.getImageData(0, 0, width, height).data;
  } catch (error) {
    if ((error as Error).name !== 'SecurityError') throw error;
    throw new Error(
      "cxc: the browser will not let a page read the pixels of this cross-origin image: serve it with CORS (Access-Control-Allow-Origin) and set img.crossOrigin = 'anonymous'",
      { cause: error },
    );
  }
}

function hasTranslucentPixels(rgba: Uint8ClampedArray): boolean {
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] !== 255) return true;
  return false;
}

/** Unpremultiplied RGBA bytes of a bitmap through a WebGL 2 texture, or undefined without WebGL 2. */
function readThroughWebGl(bitmap: ImageBitmap): Uint8Array | undefined {
  const gl = new OffscreenCanvas(1, 1).getContext('webgl2');
  if (!gl) return undefined;
  try {
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    const framebuffer = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return undefined;
    const out = new Uint8Array(bitmap.width * bitmap.height * 4);
    gl.readPixels(0, 0, bitmap.width, bitmap.height, gl.RGBA, gl.UNSIGNED_BYTE, out);
    return gl.getError() === gl.NO_ERROR ? out : undefined;
  } finally {
    gl.getExtension('WEBGL_lose_context')?.loseContext();
  }
}
