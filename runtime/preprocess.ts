// Image preprocessing that reproduces transformers' ConvNextImageProcessor (its PIL path)
// byte for byte: Pillow 9.4's Image.resize(size, resample, reducing_gap=None) on an 8-bit
// RGB image, transformers' shortest-edge/crop_pct sizing and center crop, then rescale and
// normalize in the same float32 steps numpy takes.
//
// This file has no imports on purpose: it is copied verbatim into generated packages that
// run in browsers and in Node.

export interface PreprocessSpec {
  doResize: boolean;
  /** size.shortest_edge: below 384 the short side is resized to shortestEdge / cropPct and then center-cropped; at 384 and above the image is warped to a square. */
  shortestEdge: number;
  cropPct: number;
  /** PIL resample code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. */
  resample: number;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  mean: number[];
  std: number[];
}

/** Interleaved (HWC) 8-bit pixels. With 4 channels the alpha is dropped, as PIL's convert('RGB') does. */
export interface ImageInput {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  channels: 3 | 4;
}

/** PIL's Image.Resampling codes. */
export const RESAMPLE_NEAREST = 0;
export const RESAMPLE_LANCZOS = 1;
export const RESAMPLE_BILINEAR = 2;
export const RESAMPLE_BICUBIC = 3;
export const RESAMPLE_BOX = 4;
export const RESAMPLE_HAMMING = 5;
/** The filters by code, named as PIL names them. */
export const RESAMPLE_NAMES: Readonly<Record<number, string>> = {
  [RESAMPLE_NEAREST]: 'nearest', [RESAMPLE_LANCZOS]: 'lanczos', [RESAMPLE_BILINEAR]: 'bilinear',
  [RESAMPLE_BICUBIC]: 'bicubic', [RESAMPLE_BOX]: 'box', [RESAMPLE_HAMMING]: 'hamming',
};

/** The most pixels a resize step may produce (3 bytes each: 384 MiB). */
const MAX_RESIZE_PIXELS = 2 ** 27;

/** transformers warps (no crop) from this shortest_edge up. */
const WARP_FROM_SHORTEST_EDGE = 384;

/** An RGB image, 3 bytes per pixel, rows top to bottom. */
interface RgbImage {
  pixels: Uint8Array;
  width: number;
  height: number;
}

// ---------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------

/**
 * Resize and center-crop as ConvNextImageProcessor.resize does, returning the uint8 pixels
 * (HWC RGB) that transformers would go on to rescale and normalize.
 */
export function resizeAndCrop(
  image: ImageInput,
  spec: PreprocessSpec,
): { pixels: Uint8Array; width: number; height: number } {
  validateImage(image);
  validateSpec(spec);
  const rgb = toRgb(image);
  if (!spec.doResize) return rgb;

  const edge = spec.shortestEdge;
  if (edge >= WARP_FROM_SHORTEST_EDGE) {
    return pillowResize(rgb, edge, edge, spec.resample);
  }
  // Python: int(shortest_edge / crop_pct), a float division then truncation.
  const newShort = Math.trunc(edge / spec.cropPct);
  if (newShort < 1) {
    throw new Error(`preprocess: shortestEdge / cropPct = ${edge / spec.cropPct} leaves no pixels to resize to`);
  }
  const { width, height } = shortestEdgeOutputSize(rgb.width, rgb.height, newShort);
  const resized = pillowResize(rgb, width, height, spec.resample);
  return centerCrop(resized, edge, edge);
}

/**
 * The full ConvNextImageProcessor pipeline for one image: resize and crop, then
 * float32(uint8 * rescaleFactor) and (x - mean) / std in float32, laid out CHW.
 */
export function preprocess(
  image: ImageInput,
  spec: PreprocessSpec,
): { pixelValues: Float32Array; height: number; width: number } {
  const { pixels, width, height } = resizeAndCrop(image, spec);
  const planeSize = width * height;
  const pixelValues = new Float32Array(3 * planeSize);
  // numpy casts mean and std to the image's dtype (float32) before using them.
  const mean32 = spec.mean.map((m) => Math.fround(m));
  const std32 = spec.std.map((s) => Math.fround(s));
  for (let channel = 0; channel < 3; channel++) {
    const plane = channel * planeSize;
    const mean = mean32[channel];
    const std = std32[channel];
    for (let i = 0; i < planeSize; i++) {
      const byte = pixels[i * 3 + channel];
      // transformers' rescale multiplies in float64 and then casts to float32; without
      // rescaling, normalize casts the uint8 image to float32 (exact).
      let value = spec.doRescale ? Math.fround(byte * spec.rescaleFactor) : byte;
      if (spec.doNormalize) {
        // Each float32 operation, done in float64 and rounded once, is exactly the
        // float32 result (float64 has more than twice float32's precision).
        value = Math.fround(Math.fround(value - mean) / std);
      }
      pixelValues[plane + i] = value;
    }
  }
  return { pixelValues, height, width };
}

/**
 * Pillow's Image.resize((width, height), resample, reducing_gap=None) on its own, for any
 * target size: HWC RGB out.
 */
export function resizeImage(
  image: ImageInput,
  width: number,
  height: number,
  resample: number,
): { pixels: Uint8Array; width: number; height: number } {
  validateImage(image);
  for (const [name, value] of [['width', width], ['height', height]] as const) {
    if (!Number.isInteger(value) || value <= 0) {
      throw new Error(`preprocess: target ${name} must be a positive integer, got ${String(value)}`);
    }
  }
  if (resample !== RESAMPLE_NEAREST && !(resample in CONVOLUTION_FILTERS)) {
    throw new Error(`preprocess: unknown PIL resample code ${String(resample)} (expected 0-5)`);
  }
  return pillowResize(toRgb(image), width, height, resample);
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

function validateImage(image: ImageInput): void {
  if (image === null || typeof image !== 'object') {
    throw new Error('preprocess: the image must be an object { data, width, height, channels }');
  }
  const { data, width, height, channels } = image;
  if (!Number.isInteger(width) || width <= 0) {
    throw new Error(`preprocess: image width must be a positive integer, got ${String(width)}`);
  }
  if (!Number.isInteger(height) || height <= 0) {
    throw new Error(`preprocess: image height must be a positive integer, got ${String(height)}`);
  }
  if (channels !== 3 && channels !== 4) {
    throw new Error(`preprocess: image channels must be 3 (RGB) or 4 (RGBA), got ${String(channels)}`);
  }
  if (!(data instanceof Uint8Array) && !(data instanceof Uint8ClampedArray)) {
    throw new Error('preprocess: image data must be a Uint8Array or Uint8ClampedArray of interleaved (HWC) pixels');
  }
  const expected = width * height * channels;
  if (data.length !== expected) {
    throw new Error(
      `preprocess: image data has ${data.length} bytes, but ${width}x${height}x${channels} needs ${expected}`,
    );
  }
}

function validateSpec(spec: PreprocessSpec): void {
  if (spec === null || typeof spec !== 'object') {
    throw new Error('preprocess: the spec must be an object (a PreprocessSpec)');
  }
  if (spec.doResize) {
    if (!Number.isInteger(spec.shortestEdge) || spec.shortestEdge <= 0) {
      throw new Error(`preprocess: shortestEdge must be a positive integer, got ${String(spec.shortestEdge)}`);
    }
    if (!(spec.cropPct > 0) || !Number.isFinite(spec.cropPct)) {
      throw new Error(`preprocess: cropPct must be a positive number, got ${String(spec.cropPct)}`);
    }
    if (spec.resample !== RESAMPLE_NEAREST && !(spec.resample in CONVOLUTION_FILTERS)) {
      throw new Error(`preprocess: unknown PIL resample code ${String(spec.resample)} (expected 0-5)`);
    }
  }
  if (spec.doRescale && !Number.isFinite(spec.rescaleFactor)) {
    throw new Error(`preprocess: rescaleFactor must be a finite number, got ${String(spec.rescaleFactor)}`);
  }
  if (spec.doNormalize) {
    if (!Array.isArray(spec.mean) || spec.mean.length !== 3 || !Array.isArray(spec.std) || spec.std.length !== 3) {
      throw new Error('preprocess: mean and std must each hold 3 numbers (one per RGB channel)');
    }
    // numpy computes in float32: each statistic must be a finite float32, and std not 0 there.
    const float32 = (v: unknown) => typeof v === 'number' && Number.isFinite(Math.fround(v));
    if (!spec.mean.every(float32) || !spec.std.every((s) => float32(s) && Math.fround(s) !== 0)) {
      throw new Error(`preprocess: mean ${String(spec.mean)} and std ${String(spec.std)} must be finite float32 values, std non-zero`);
    }
  }
}

/** Packs the image into 3-byte RGB pixels; PIL's RGBA -> RGB conversion simply drops alpha. */
function toRgb(image: ImageInput): RgbImage {
  const { data, width, height, channels } = image;
  if (channels === 3) {
    return { pixels: Uint8Array.from(data), width, height };
  }
  const count = width * height;
  const pixels = new Uint8Array(count * 3);
  for (let i = 0; i < count; i++) {
    pixels[i * 3] = data[i * 4];
    pixels[i * 3 + 1] = data[i * 4 + 1];
    pixels[i * 3 + 2] = data[i * 4 + 2];
  }
  return { pixels, width, height };
}

// ---------------------------------------------------------------------------------------
// transformers: output size and center crop
// ---------------------------------------------------------------------------------------

/**
 * transformers' get_resize_output_image_size(size=int, default_to_square=False): the short
 * side becomes `newShort`, the long side int(newShort * long / short). A square image
 * counts its width as the short side, as transformers' `width <= height` test does.
 */
function shortestEdgeOutputSize(width: number, height: number, newShort: number): { width: number; height: number } {
  if (width <= height) {
    // The product is an exact integer and the division one IEEE operation, as in Python.
    return { width: newShort, height: Math.trunc((newShort * height) / width) };
  }
  return { width: Math.trunc((newShort * width) / height), height: newShort };
}

/**
 * transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2 (floor division).
 * When the image is smaller than the crop on an axis, transformers first pads it with zeros,
 * ceil((crop - size) / 2) before; the crop then always covers exactly `cropWidth x cropHeight`.
 */
function centerCrop(image: RgbImage, cropWidth: number, cropHeight: number): RgbImage {
  const top = cropOrigin(image.height, cropHeight);
  const left = cropOrigin(image.width, cropWidth);
  const out = new Uint8Array(cropWidth * cropHeight * 3); // zeros: transformers' padding
  for (let y = 0; y < cropHeight; y++) {
    const sourceY = top + y;
    if (sourceY < 0 || sourceY >= image.height) continue;
    for (let x = 0; x < cropWidth; x++) {
      const sourceX = left + x;
      if (sourceX < 0 || sourceX >= image.width) continue;
      const from = (sourceY * image.width + sourceX) * 3;
      const to = (y * cropWidth + x) * 3;
      out[to] = image.pixels[from];
      out[to + 1] = image.pixels[from + 1];
      out[to + 2] = image.pixels[from + 2];
    }
  }
  return { pixels: out, width: cropWidth, height: cropHeight };
}

/**
 * Where the crop window starts, in source coordinates (negative when padded). Without
 * padding it is floor((size - crop) / 2). With padding transformers shifts by
 * pad = ceil((crop - size) / 2) and clamps the window at 0, which is the same as starting
 * at -pad.
 */
function cropOrigin(size: number, crop: number): number {
  if (size >= crop) return Math.floor((size - crop) / 2);
  return -Math.ceil((crop - size) / 2);
}

// ---------------------------------------------------------------------------------------
// Pillow 9.4 Image.resize for 8-bit RGB
// ---------------------------------------------------------------------------------------

/**
 * Image.resize((width, height), resample) with the default box (the whole image) and
 * reducing_gap=None. Like Pillow, an unchanged size is a plain copy.
 */
function pillowResize(image: RgbImage, width: number, height: number, resample: number): RgbImage {
  if (width === image.width && height === image.height) {
    return { pixels: image.pixels.slice(), width, height };
  }
  // The output and, when the width changes, the horizontal pass's rows (at most every source
  // row at the new width) are allocated whole: refuse sizes no typed array should hold, as an
  // error that says why rather than an allocation failure.
  const pixels = Math.max(width * height, width !== image.width ? width * image.height : 0);
  if (pixels > MAX_RESIZE_PIXELS) {
    throw new Error(
      `preprocess: resizing the ${image.width}x${image.height} image to ${width}x${height} would hold ${pixels} pixels, ` +
        `over the limit of ${MAX_RESIZE_PIXELS} (the image is too large or too elongated)`,
    );
  }
  if (resample === RESAMPLE_NEAREST) return resizeNearest(image, width, height);
  const filter = CONVOLUTION_FILTERS[resample];
  if (filter === undefined) throw new Error(`preprocess: unknown PIL resample code ${resample}`);
  return resizeConvolution(image, width, height, filter);
}

/** A separable resampling kernel as Pillow defines it (Resample.c). */
interface ConvolutionFilter {
  /** Half-width of the kernel, in source pixels, before scaling for downsampling. */
  support: number;
  weight(x: number): number;
}

// Each kernel follows Pillow's double-precision expression, operation for operation, since
// the weights are rounded to fixed point afterwards and a different last bit could flip one.
const BOX_FILTER: ConvolutionFilter = {
  support: 0.5,
  weight: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0),
};

const BILINEAR_FILTER: ConvolutionFilter = {
  support: 1.0,
  weight: (x) => {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
  },
};

// Pillow writes the Hamming window's constants as C floats (0.54f, 0.46f); they are promoted
// to double with their float32 values, so use exactly those.
const HAMMING_A = Math.fround(0.54);
const HAMMING_B = Math.fround(0.46);
const HAMMING_FILTER: ConvolutionFilter = {
  support: 1.0,
  weight: (x) => {
    if (x < 0.0) x = -x;
    if (x === 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * Math.PI;
    return (Math.sin(x) / x) * (HAMMING_A + HAMMING_B * Math.cos(x));
  },
};

/** Keys' cubic convolution with a = -0.5, as Pillow's BICUBIC. */
const BICUBIC_A = -0.5;
const BICUBIC_FILTER: ConvolutionFilter = {
  support: 2.0,
  weight: (x) => {
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * BICUBIC_A;
    return 0.0;
  },
};

function sinc(x: number): number {
  if (x === 0.0) return 1.0;
  x = x * Math.PI;
  return Math.sin(x) / x;
}

/** Sinc windowed by a 3-lobe sinc (truncated at |x| = 3). */
const LANCZOS_FILTER: ConvolutionFilter = {
  support: 3.0,
  weight: (x) => (-3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0),
};

const CONVOLUTION_FILTERS: Record<number, ConvolutionFilter> = {
  [RESAMPLE_LANCZOS]: LANCZOS_FILTER,
  [RESAMPLE_BILINEAR]: BILINEAR_FILTER,
  [RESAMPLE_BICUBIC]: BICUBIC_FILTER,
  [RESAMPLE_BOX]: BOX_FILTER,
  [RESAMPLE_HAMMING]: HAMMING_FILTER,
};

/**
 * Pillow's fixed-point precision for 8-bit images: 32 bits less 8 for the pixel value and
 * 2 of headroom, because kernels with negative lobes can sum past 1 on the way.
 */
const PRECISION_BITS = 32 - 8 - 2;
const FIXED_ONE = 1 << PRECISION_BITS;
/** Accumulators start at one half so that the final shift rounds to nearest. */
const FIXED_HALF = 1 << (PRECISION_BITS - 1);

/** The kernel of every output pixel along one axis. */
interface AxisCoefficients {
  /** Stride between output pixels in `weights` (Pillow's ksize). */
  kernelSize: number;
  /** First source pixel each output pixel reads. */
  first: Int32Array;
  /** How many source pixels each output pixel reads. */
  count: Int32Array;
  /** Fixed-point weights, `kernelSize` per output pixel. */
  weights: Int32Array;
}

/**
 * Pillow's precompute_coeffs and normalize_coeffs_8bpc for the box [0, inSize): weights in
 * double, normalized to sum 1, then rounded half away from zero to PRECISION_BITS fixed point.
 * When shrinking, the kernel is stretched by the scale so it averages (antialiases).
 */
function computeAxisCoefficients(inSize: number, outSize: number, filter: ConvolutionFilter): AxisCoefficients {
  const scale = inSize / outSize;
  const filterScale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterScale;
  const kernelSize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * kernelSize);
  const kernel = new Float64Array(kernelSize);
  const inverseFilterScale = 1.0 / filterScale;

  for (let outIndex = 0; outIndex < outSize; outIndex++) {
    const center = (outIndex + 0.5) * scale;
    // C's (int) cast truncates toward zero; a negative start is then clamped to 0 anyway.
    let start = Math.trunc(center - support + 0.5);
    if (start < 0) start = 0;
    let end = Math.trunc(center + support + 0.5);
    if (end > inSize) end = inSize;
    const taps = end - start;

    let total = 0.0;
    for (let tap = 0; tap < taps; tap++) {
      const w = filter.weight((tap + start - center + 0.5) * inverseFilterScale);
      kernel[tap] = w;
      total += w;
    }
    const base = outIndex * kernelSize;
    for (let tap = 0; tap < taps; tap++) {
      const normalized = total !== 0.0 ? kernel[tap] / total : kernel[tap];
      // normalize_coeffs_8bpc: (int)(w * 2^22 +/- 0.5), truncation toward zero, i.e. round
      // half away from zero.
      weights[base + tap] =
        normalized < 0 ? Math.trunc(-0.5 + normalized * FIXED_ONE) : Math.trunc(0.5 + normalized * FIXED_ONE);
    }
    first[outIndex] = start;
    count[outIndex] = taps;
  }
  return { kernelSize, first, count, weights };
}

/**
 * Pillow's clip8: the accumulator shifted down by PRECISION_BITS (an arithmetic shift, so
 * it floors), clamped to 0..255. The accumulator stays within int32 as it does in Pillow.
 */
function clip8(accumulator: number): number {
  const value = accumulator >> PRECISION_BITS;
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

/**
 * Pillow's ImagingResampleInner: a horizontal pass, then a vertical one, each skipped when
 * that dimension keeps its size. The horizontal pass only computes the source rows that the
 * vertical pass will read, as Pillow does.
 */
function resizeConvolution(image: RgbImage, width: number, height: number, filter: ConvolutionFilter): RgbImage {
  const needHorizontal = width !== image.width;
  const needVertical = height !== image.height;
  const vertical = computeAxisCoefficients(image.height, height, filter);

  let current = image;
  let rowOffset = 0; // source row held in row 0 of `current`
  if (needHorizontal) {
    const firstRow = vertical.first[0];
    const lastRow = vertical.first[height - 1] + vertical.count[height - 1];
    const horizontal = computeAxisCoefficients(image.width, width, filter);
    current = resampleHorizontal(image, firstRow, lastRow - firstRow, horizontal);
    rowOffset = firstRow;
  }
  if (needVertical) {
    current = resampleVertical(current, rowOffset, vertical);
  }
  return current === image ? { pixels: image.pixels.slice(), width: image.width, height: image.height } : current;
}

/** ImagingResampleHorizontal_8bpc for `rowCount` source rows starting at `firstRow`. */
function resampleHorizontal(image: RgbImage, firstRow: number, rowCount: number, axis: AxisCoefficients): RgbImage {
  const outWidth = axis.first.length;
  const out = new Uint8Array(outWidth * rowCount * 3);
  const src = image.pixels;
  const { kernelSize, first, count, weights } = axis;
  for (let y = 0; y < rowCount; y++) {
    const rowStart = (y + firstRow) * image.width * 3;
    const outRow = y * outWidth * 3;
    for (let x = 0; x < outWidth; x++) {
      const base = x * kernelSize;
      const taps = count[x];
      let pixel = rowStart + first[x] * 3;
      let r = FIXED_HALF;
      let g = FIXED_HALF;
      let b = FIXED_HALF;
      for (let tap = 0; tap < taps; tap++, pixel += 3) {
        const w = weights[base + tap];
        r += src[pixel] * w;
        g += src[pixel + 1] * w;
        b += src[pixel + 2] * w;
      }
      const o = outRow + x * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return { pixels: out, width: outWidth, height: rowCount };
}

/**
 * ImagingResampleVertical_8bpc. `rowOffset` is the source row that `image`'s row 0 holds
 * (Pillow shifts the vertical bounds by the same amount after its horizontal pass).
 */
function resampleVertical(image: RgbImage, rowOffset: number, axis: AxisCoefficients): RgbImage {
  const outHeight = axis.first.length;
  const rowBytes = image.width * 3;
  const out = new Uint8Array(outHeight * rowBytes);
  const src = image.pixels;
  const { kernelSize, first, count, weights } = axis;
  for (let y = 0; y < outHeight; y++) {
    const base = y * kernelSize;
    const taps = count[y];
    const firstRowStart = (first[y] - rowOffset) * rowBytes;
    const outRow = y * rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      let sum = FIXED_HALF;
      let pixel = firstRowStart + i;
      for (let tap = 0; tap < taps; tap++, pixel += rowBytes) {
        sum += src[pixel] * weights[base + tap];
      }
      out[outRow + i] = clip8(sum);
    }
  }
  return { pixels: out, width: image.width, height: outHeight };
}

/**
 * NEAREST goes through Pillow's affine ImagingScaleAffine: source positions start at
 * scale / 2 and advance by adding `scale` each step (the accumulated sum, not i * scale, is
 * what Pillow truncates). A position that lands outside the source stays black.
 */
function resizeNearest(image: RgbImage, width: number, height: number): RgbImage {
  const xScale = image.width / width;
  const yScale = image.height / height;
  const sourceColumn = new Int32Array(width).fill(-1);
  let xPosition = xScale * 0.5;
  for (let x = 0; x < width; x++) {
    const column = xPosition < 0.0 ? -1 : Math.trunc(xPosition);
    if (column >= 0 && column < image.width) sourceColumn[x] = column;
    xPosition += xScale;
  }
  const out = new Uint8Array(width * height * 3);
  let yPosition = yScale * 0.5;
  for (let y = 0; y < height; y++) {
    const row = yPosition < 0.0 ? -1 : Math.trunc(yPosition);
    if (row >= 0 && row < image.height) {
      for (let x = 0; x < width; x++) {
        const column = sourceColumn[x];
        if (column < 0) continue;
        const from = (row * image.width + column) * 3;
        const to = (y * width + x) * 3;
        out[to] = image.pixels[from];
        out[to + 1] = image.pixels[from + 1];
        out[to + 2] = image.pixels[from + 2];
      }
    }
    yPosition += yScale;
  }
  return { pixels: out, width, height };
}
