/**
 * Weight quantization for `--weights-dtype q8` and `q4` (part of stage 3, the weight layout):
 * how a K x N matrix (already folded, in float64) becomes integers and scales, and where each
 * integer lies in the weights file. The kernels of every target read these bytes as they are.
 *
 * Values: symmetric round-to-nearest (ties away from zero) on a grid of one scale per
 *   - q8: output column (all of K): q = round(w / s) in [-127, 127], s = max|w| / 127, float32;
 *   - q4: block of QUANT_BLOCK_ROWS rows of K per column: q in [-8, 7], s = max|w| / 7, float16.
 * The value the kernels use is q * s, with s exactly as stored.
 *
 * Order (one rule for every target; the packing chooses the panel width and the k-group G):
 * the matrix is cut into panels of W output columns (W = packing.panelWidth, or N for 0),
 * stored one after another; inside a panel, for each group of G consecutive rows of K, the G
 * values of column 0, then the G values of column 1, ... So element (k, n) is element number
 *     e = p*K*W + (j*W + c)*G + i,   p = floor(n / W), c = n mod W, j = floor(k / G), i = k mod G.
 * q8: byte e holds q as int8. q4: byte floor(e / 2) holds q + 8 in its low nibble when e is even,
 * in its high nibble when e is odd. (G = 2 gives WASM's int16 pair dot product its operand pairs;
 * G = 4 or 8 gives a WGSL shader one column's consecutive k in one u32.)
 * Scales: a ceil(K / blockRows) x N matrix in the same panel order without k-groups: element
 * (b, n) is number p*B*W + b*W + c (B = number of blocks), float32 (q8) or float16 (q4).
 */
import { floatsToHalves, halvesToFloats } from '../runtime/half.js';
import type { QuantizedStorage, WeightField } from '../runtime/types.js';

export type QuantizedDtype = 'q8' | 'q4';

/** How a weight field is quantized: undefined for vectors and float matrices. */
export function quantizedStorage(field: WeightField): QuantizedStorage | undefined {
  return field.layout.kind === 'matrix' ? field.layout.quantized : undefined;
}
/** Rows of K that share one q4 scale (ggml's Q4_0 and transformers.js's q4f16 use 32). */
export const QUANT_BLOCK_ROWS = 32;
/** Smallest normal float16: a q4 scale is never below it (a block of tiny weights rounds to zero). */
const MIN_HALF_SCALE = 2 ** -14;

export interface QuantizationShape {
  rows: number;
  columns: number;
  /** 0: one panel of all N columns. */
  panelWidth: number;
  kGroup: number;
}

/** What one quantized matrix occupies, in 4-byte words, values then scales. */
export function quantizedSizes(dtype: QuantizedDtype, shape: QuantizationShape): { valueWords: number; scaleWords: number; blockRows: number } {
  const { rows: K, columns: N, panelWidth, kGroup } = shape;
  if (K % kGroup !== 0) throw new Error(`internal: quantized matrix has K = ${K}, not a multiple of its k-group ${kGroup}`);
  if (panelWidth && N % panelWidth !== 0) throw new Error(`internal: quantized matrix has N = ${N}, not a multiple of its panel width ${panelWidth}`);
  const blockRows = dtype === 'q8' ? K : QUANT_BLOCK_ROWS;
  const blocks = Math.ceil(K / blockRows);
  const valueBytes = dtype === 'q8' ? K * N : Math.ceil((K * N) / 2);
  const scaleBytes = blocks * N * (dtype === 'q8' ? 4 : 2);
  return { valueWords: Math.ceil(valueBytes / 4), scaleWords: Math.ceil(scaleBytes / 4), blockRows };
}

/** Element number of (k, n) in the value order above. */
export function quantizedIndex(k: number, n: number, shape: QuantizationShape): number {
  const width = shape.panelWidth || shape.columns;
  const p = Math.floor(n / width);
  const c = n % width;
  const j = Math.floor(k / shape.kGroup);
  const i = k % shape.kGroup;
  return p * shape.rows * width + (j * width + c) * shape.kGroup + i;
}

/** Element number of scale (block b, column n). */
export function scaleIndex(b: number, n: number, blocks: number, shape: QuantizationShape): number {
  const width = shape.panelWidth || shape.columns;
  return Math.floor(n / width) * blocks * width + b * width + (n % width);
}

const roundAway = (x: number) => Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
// One scale at a time through runtime/half.ts's encoder and decoder (a q4 ConvNeXt-T has ~0.9M
// scales: these reuse their one-element arrays rather than allocate per scale).
const oneFloat = new Float32Array(1);
const oneHalf = new Uint16Array(1);
const halfBits = (value: number): number => {
  oneFloat[0] = value;
  floatsToHalves(oneFloat, oneHalf);
  return oneHalf[0];
};
const halfValue = (bits: number): number => {
  oneHalf[0] = bits;
  return halvesToFloats(oneHalf, oneFloat)[0];
};

/** Sums over quantized weights, for the error a package reports: sum (q*s - w)^2 and sum w^2. */
export interface QuantizationError { squaredError: number; squaredWeights: number; count: number }

/**
 * Quantizes `source(k, n)` (k < kReal, n < nReal; the padding is zero) into `values` and `scales`,
 * byte views of the two regions of the weights file the layout set aside; adds its rounding error
 * to `error`.
 */
export function quantizeMatrix(
  dtype: QuantizedDtype, shape: QuantizationShape, kReal: number, nReal: number,
  source: (k: number, n: number) => number, values: Uint8Array, scales: Uint8Array,
  error: QuantizationError = { squaredError: 0, squaredWeights: 0, count: 0 },
): QuantizationError {
  const { blockRows } = quantizedSizes(dtype, shape);
  const blocks = Math.ceil(shape.rows / blockRows);
  const scaleView = new DataView(scales.buffer, scales.byteOffset, scales.byteLength);
  const column = new Float64Array(shape.rows);
  const levels = dtype === 'q8' ? 127 : 7;
  for (let n = 0; n < shape.columns; n++) {
    column.fill(0);
    if (n < nReal) for (let k = 0; k < kReal; k++) column[k] = source(k, n);
    for (let b = 0; b < blocks; b++) {
      const k0 = b * blockRows;
      const k1 = Math.min(shape.rows, k0 + blockRows);
      let max = 0;
      for (let k = k0; k < k1; k++) max = Math.max(max, Math.abs(column[k]));
      const at = scaleIndex(b, n, blocks, shape);
      let scale: number;
      if (dtype === 'q8') {
        scale = Math.fround(max / levels) || 1;
        scaleView.setFloat32(at * 4, scale, true);
      } else {
        const half = halfBits(Math.max(max / levels, MIN_HALF_SCALE));
        scale = halfValue(half);
        scaleView.setUint16(at * 2, half, true);
      }
      for (let k = k0; k < k1; k++) {
        const q = dtype === 'q8'
          ? Math.max(-127, Math.min(127, roundAway(column[k] / scale)))
          : Math.max(-8, Math.min(7, roundAway(column[k] / scale)));
        const e = quantizedIndex(k, n, shape);
        if (dtype === 'q8') values[e] = q & 0xff;
        else values[e >> 1] |= (e & 1) ? (q + 8) << 4 : q + 8;
        if (n < nReal && k < kReal) {
          error.squaredError += (q * scale - column[k]) ** 2;
          error.squaredWeights += column[k] ** 2;
          error.count++;
        }
      }
    }
  }
  return error;
}

/** The value the kernels compute with at (k, n): q * scale, read back from the stored bytes. */
export function dequantizedValue(storage: Pick<QuantizedStorage, 'bits' | 'blockRows' | 'kGroup'>, shape: QuantizationShape, values: Uint8Array, scales: Uint8Array, k: number, n: number): number {
  const blocks = Math.ceil(shape.rows / storage.blockRows);
  const e = quantizedIndex(k, n, shape);
  const s = scaleIndex(Math.floor(k / storage.blockRows), n, blocks, shape);
  const view = new DataView(scales.buffer, scales.byteOffset, scales.byteLength);
  if (storage.bits === 8) return ((values[e] << 24) >> 24) * view.getFloat32(s * 4, true);
  const nibble = (values[e >> 1] >> ((e & 1) * 4)) & 15;
  return (nibble - 8) * halfValue(view.getUint16(s * 2, true));
}
