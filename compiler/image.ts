/**
 * Decodes PNG and JPEG files to 8-bit RGB the way PIL's Image.open(path).convert('RGB') does,
 * so that what the CLI feeds the preprocessor is what transformers would have seen.
 */
import { readFile } from 'node:fs/promises';
import pngjs from 'pngjs';
import jpeg from 'jpeg-js';
import { CxcError } from './errors.js';
import type { ImageInput } from '../runtime/preprocess.js';

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_SIGNATURE = [0xff, 0xd8, 0xff];

/** Images over this many pixels are refused (PIL warns at ~89M and refuses at twice that). */
const MAX_PIXELS = 178_956_970;

/** Reads an image file and returns its pixels as interleaved 8-bit RGB. */
export async function decodeImageFile(path: string): Promise<ImageInput> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : (error as Error).message;
    throw new CxcError(`cannot read the image: ${why}`, { file: path, cause: error });
  }
  return decodeImageBytes(bytes, path);
}

/** Decodes PNG or JPEG bytes, recognised by their signature rather than the file name. */
export function decodeImageBytes(bytes: Uint8Array, source: string): ImageInput {
  if (startsWith(bytes, PNG_SIGNATURE)) return decodePng(bytes, source);
  if (startsWith(bytes, JPEG_SIGNATURE)) return decodeJpeg(bytes, source);
  throw new CxcError('unsupported image format: only PNG and JPEG files can be read', {
    file: source,
    hint: 'convert the image to PNG or JPEG first',
  });
}

function startsWith(bytes: Uint8Array, signature: number[]): boolean {
  return bytes.length >= signature.length && signature.every((byte, i) => bytes[i] === byte);
}

// ---------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------

const PNG_COLOR_GRAY = 0;
const PNG_COLOR_PALETTE = 3;

function decodePng(bytes: Uint8Array, source: string): ImageInput {
  // Check the IHDR size before pngjs allocates for it, so that a decompression bomb is
  // refused cheaply; a missing or malformed IHDR is left for pngjs to report.
  if (bytes.length >= 24) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    checkPixelCount(view.getUint32(16), view.getUint32(20), source);
  }
  let decoded: { width: number; height: number; depth: number; colorType: number; data: ArrayLike<number> };
  try {
    // skipRescale keeps the raw sample values, so that 16-bit and low-bit-depth samples can
    // be reduced to 8 bits the way PIL does rather than the way pngjs does.
    const png = pngjs.PNG.sync.read(Buffer.from(withoutTransparencyChunk(bytes)), { skipRescale: true });
    decoded = png as unknown as typeof decoded;
  } catch (error) {
    throw new CxcError(`cannot decode the PNG: ${(error as Error).message}`, { file: source, cause: error });
  }
  const { width, height, depth, colorType, data } = decoded;
  checkPixelCount(width, height, source);

  // pngjs hands back 4 samples per pixel (gray expanded to RGB, palettes looked up). A
  // palette holds 8-bit colours whatever the index depth, so those need no reduction.
  const toByte = colorType === PNG_COLOR_PALETTE ? (v: number) => v : sampleToByte(depth, colorType);
  const count = width * height;
  const rgb = new Uint8Array(count * 3);
  for (let i = 0; i < count; i++) {
    rgb[i * 3] = toByte(data[i * 4]);
    rgb[i * 3 + 1] = toByte(data[i * 4 + 1]);
    rgb[i * 3 + 2] = toByte(data[i * 4 + 2]);
  }
  return { data: rgb, width, height, channels: 3 };
}

/**
 * How PIL 9.4 turns one raw PNG sample into the 8-bit value that convert('RGB') yields:
 * - 1, 2 and 4 bits (gray only) are stretched to 0..255 (x255, x85, x17: exact);
 * - 16-bit colour or gray+alpha keeps the high byte;
 * - 16-bit gray without alpha opens as 32-bit mode "I", whose conversion to RGB clamps to
 *   255 instead of scaling: surprising, but it is what transformers would be given.
 */
function sampleToByte(depth: number, colorType: number): (sample: number) => number {
  if (depth === 8) return (v) => v;
  if (depth < 8) {
    const scale = 255 / ((1 << depth) - 1);
    return (v) => v * scale;
  }
  if (colorType === PNG_COLOR_GRAY) return (v) => (v > 255 ? 255 : v);
  return (v) => v >> 8;
}

/**
 * Returns the PNG without its tRNS chunk. pngjs blackens every pixel that matches a tRNS
 * colour key, while PIL's convert('RGB') leaves the colour alone and only drops the
 * transparency; since the alpha is discarded anyway, the chunk is removed before decoding.
 * Any structural problem is left for pngjs to report.
 */
function withoutTransparencyChunk(bytes: Uint8Array): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = PNG_SIGNATURE.length;
  while (offset + 12 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(bytes[offset + 4], bytes[offset + 5], bytes[offset + 6], bytes[offset + 7]);
    const next = offset + 12 + length;
    if (next > bytes.length) break;
    if (type === 'tRNS') {
      const stripped = new Uint8Array(bytes.length - (next - offset));
      stripped.set(bytes.subarray(0, offset), 0);
      stripped.set(bytes.subarray(next), offset);
      return stripped;
    }
    if (type === 'IEND') break;
    offset = next;
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------

/**
 * JPEG through jpeg-js. Its IDCT and chroma upsampling are not libjpeg's, so pixels can
 * differ from PIL's by a few levels: only PNG input reproduces transformers byte for byte.
 * Like Image.open, EXIF orientation is not applied.
 */
function decodeJpeg(bytes: Uint8Array, source: string): ImageInput {
  try {
    const image = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      maxResolutionInMP: Math.ceil(MAX_PIXELS / 1_000_000),
      maxMemoryUsageInMB: 2048,
    });
    checkPixelCount(image.width, image.height, source);
    if (image.data.length !== image.width * image.height * 3) {
      throw new Error(`decoder returned ${image.data.length} bytes for ${image.width}x${image.height} RGB`);
    }
    return { data: image.data, width: image.width, height: image.height, channels: 3 };
  } catch (error) {
    if (error instanceof CxcError) throw error;
    throw new CxcError(`cannot decode the JPEG: ${(error as Error).message}`, { file: source, cause: error });
  }
}

function checkPixelCount(width: number, height: number, source: string): void {
  if (!(width > 0 && height > 0)) {
    throw new CxcError(`the image has no pixels (${width}x${height})`, { file: source });
  }
  if (width * height > MAX_PIXELS) {
    throw new CxcError(`the image is too large: ${width}x${height} is over ${MAX_PIXELS} pixels`, { file: source });
  }
}
