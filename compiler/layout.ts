/**
 * Stage 3: the weight layout. Decides where every weight the kernels read lives
 * in the packed weights file, in the order and shape the kernels stream them,
 * with compile-time folds applied:
 *   - each block's LayerNorm affine is folded into pwconv1 (W1' = W1 diag(g), b1' = b1 + W1 beta),
 *   - the downsampling LayerNorm affine into the 2x2 conv the same way,
 *   - V2's GRN bias into pwconv2's bias (W2 (x + beta) = W2 x + W2 beta),
 *   - the layer scale into pwconv2 (diag(ls) W2, ls * b2).
 * Folds are computed in float64 and rounded once.
 *
 * The layout depends only on the spec and the target's packing, so a module built
 * from a bare config can load any weights file packed for the same spec.
 */
import { DWCONV_KERNEL, MLP_RATIO, featureChannels, type ModelSpec } from './config.js';
import type { BlockWeights, CheckpointWeights, NormWeights } from './checkpoint.js';
import type {
  BlockGroup, DownsampleGroup, LinearGroup, NormGroup, QuantizedStorage, StemGroup, WeightDtype, WeightField, WeightGroup,
} from '../runtime/types.js';
import { quantizeMatrix, quantizedSizes, type QuantizationError } from './quantize.js';

export type { BlockGroup, DownsampleGroup, LinearGroup, NormGroup, StemGroup, WeightField, WeightGroup } from '../runtime/types.js';

export interface Packing {
  /** Channel counts of activations are padded to a multiple of this (padding lanes stay zero). */
  channelAlign: number;
  /**
   * Matrices are stored K-major in column panels of this many output columns:
   * panel p holds W[k][p*w .. p*w+w) for k = 0..K-1, contiguous. 0 = one panel (plain [K][N]).
   */
  panelWidth: number;
  /** Quantized matrices: consecutive k of one column stored side by side (compiler/quantize.ts). */
  kGroup: number;
  /**
   * f32 (default), or q8/q4: the big matrices (pwconv1, pwconv2, the downsampling convs and the
   * classifier) as integers + scales. The stem and depthwise taps stay float32: together 1.2% of
   * ConvNeXt-T's weights, and int8 depthwise taps alone cost 3.2e-3 of max|logits| (bench:quant).
   */
  dtype?: WeightDtype;
}

/** Every weight group, typed by the op that streams it; plan steps carry these references. */
export interface WeightGroups {
  stem: StemGroup;
  stages: Array<{ downsample?: DownsampleGroup; blocks: BlockGroup[] }>;
  /** Backbone: the LayerNorm of each feature map, by stage name. */
  featureNorms: Record<string, NormGroup>;
  pooler?: NormGroup;
  classifier?: LinearGroup;
}

export interface WeightLayout extends WeightGroups {
  packing: Packing;
  /** Every group, in file order. */
  groups: WeightGroup[];
  /** Total 4-byte words of the weights file (float32 count when nothing is quantized). */
  floats: number;
}

export interface PackedWeights {
  layout: WeightLayout;
  data: Float32Array;
  /** q8/q4: the rounding error of the quantized matrices, over all their weights. */
  quantization?: QuantizationError;
}

/** Fields start on 64-byte boundaries so every vector load is aligned. */
const FIELD_ALIGN = 16;

export function alignUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** A matrix as the packer sees it: element (k, n) of a logical K x N matrix in float64. */
type MatrixSource = (k: number, n: number) => number;

class LayoutWriter {
  readonly groups: WeightGroup[] = [];
  floats = 0;
  readonly quantization: QuantizationError = { squaredError: 0, squaredWeights: 0, count: 0 };
  private current?: WeightGroup;

  constructor(readonly packing: Packing, readonly data?: Float32Array, private readonly onGroup?: (key: string) => void) {}

  /** Starts a group; its fields are the ones written until the next group starts. */
  group<G extends WeightGroup<string, string>>(key: string): G {
    this.onGroup?.(key);
    this.floats = alignUp(this.floats, FIELD_ALIGN);
    this.current = { key, offset: this.floats, floats: 0, dtype: 'f32', fields: {} };
    this.groups.push(this.current);
    return this.current as unknown as G;
  }

  private field(name: string, length: number, layout: WeightField['layout']): WeightField {
    const field = { offset: this.reserve(length), length, layout };
    this.current!.fields[name] = field;
    return field;
  }

  /** Words [offset, offset + length) of the current group, aligned. */
  private reserve(length: number): number {
    this.floats = alignUp(this.floats, FIELD_ALIGN);
    const offset = this.floats;
    this.floats += length;
    this.current!.floats = this.floats - this.current!.offset;
    return offset;
  }

  /** A vector of `padded` floats whose first values come from `source` (the rest are zero). */
  vector(name: string, padded: number, source?: (i: number) => number, count = padded): void {
    const field = this.field(name, padded, { kind: 'vector' });
    if (this.data && source) for (let i = 0; i < count; i++) this.data[field.offset + i] = source(i);
  }

  /**
   * A K x N matrix (real size kReal x nReal, padded kPad x nPad) in column panels; `quantizable`
   * ones are stored as integers + scales when the packing's dtype is q8 or q4.
   */
  matrix(name: string, kPad: number, nPad: number, kReal: number, nReal: number, source?: MatrixSource, quantizable = false): void {
    const dtype = this.packing.dtype ?? 'f32';
    if (quantizable && dtype !== 'f32') {
      this.quantizedMatrix(name, dtype, { rows: kPad, columns: nPad, panelWidth: this.packing.panelWidth, kGroup: this.packing.kGroup }, kReal, nReal, source);
      return;
    }
    const width = this.packing.panelWidth || nPad;
    const field = this.field(name, kPad * nPad, { kind: 'matrix', rows: kPad, columns: nPad, panelWidth: this.packing.panelWidth });
    if (!this.data || !source) return;
    for (let n = 0; n < nReal; n++) {
      const panel = Math.floor(n / width);
      const lane = n % width;
      const panelBase = field.offset + panel * kPad * width;
      for (let k = 0; k < kReal; k++) this.data[panelBase + k * width + lane] = source(k, n);
    }
  }

  private quantizedMatrix(name: string, dtype: 'q8' | 'q4', shape: { rows: number; columns: number; panelWidth: number; kGroup: number }, kReal: number, nReal: number, source?: MatrixSource): void {
    const { valueWords, scaleWords, blockRows } = quantizedSizes(dtype, shape);
    const quantized: QuantizedStorage = { bits: dtype === 'q8' ? 8 : 4, blockRows, kGroup: shape.kGroup, scales: { offset: 0, words: scaleWords, dtype: dtype === 'q8' ? 'f32' : 'f16' } };
    const field = this.field(name, valueWords, { kind: 'matrix', rows: shape.rows, columns: shape.columns, panelWidth: shape.panelWidth, quantized });
    quantized.scales.offset = this.reserve(scaleWords);
    this.current!.dtype = dtype;
    if (!this.data || !source) return;
    const bytes = new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength);
    quantizeMatrix(dtype, shape, kReal, nReal, source,
      bytes.subarray(field.offset * 4, (field.offset + valueWords) * 4), bytes.subarray(quantized.scales.offset * 4, (quantized.scales.offset + scaleWords) * 4),
      this.quantization);
  }
}

/** Channel counts as the kernels see them. */
export function paddedChannels(channels: number, packing: Packing): number {
  return alignUp(channels, Math.max(packing.channelAlign, packing.panelWidth || 1));
}

/**
 * Lays out (and, given a checkpoint, packs) every weight the kernels read.
 * The same function produces both, so offsets and data cannot disagree. `onGroup` is told each
 * group's key as packing reaches it (the groups before it are then packed).
 */
export function layoutWeights(spec: ModelSpec, packing: Packing, checkpoint?: CheckpointWeights, onGroup?: (key: string) => void): WeightLayout & { data?: Float32Array; quantization?: QuantizationError } {
  const sizing = new LayoutWriter(packing);
  const sized = writeAll(spec, sizing);
  if (!checkpoint) return { packing, ...sized, groups: sizing.groups, floats: alignUp(sizing.floats, FIELD_ALIGN) };
  const data = new Float32Array(alignUp(sizing.floats, FIELD_ALIGN));
  const writer = new LayoutWriter(packing, data, onGroup);
  const written = writeAll(spec, writer, checkpoint);
  const quantization = writer.quantization.count > 0 ? writer.quantization : undefined;
  return { packing, ...written, groups: writer.groups, floats: data.length, data, quantization };
}

export function packWeights(spec: ModelSpec, packing: Packing, checkpoint: CheckpointWeights, onGroup?: (key: string) => void): PackedWeights {
  const { data, quantization, ...layout } = layoutWeights(spec, packing, checkpoint, onGroup);
  // The checksum belongs to the weights file (float32 or float16 bytes), so build.ts computes it.
  return { layout, data: data!, quantization };
}

function writeAll(spec: ModelSpec, w: LayoutWriter, ckpt?: CheckpointWeights): WeightGroups {
  const pad = (c: number) => paddedChannels(c, w.packing);
  const c0 = spec.hiddenSizes[0];
  const p = spec.patchSize;
  const cin = spec.numChannels;

  const stem = w.group<StemGroup>('stem');
  const stemK = cin * p * p;
  // K runs over (ci, ky, kx): the order the stem kernel walks its NCHW input patch.
  w.matrix('weight', stemK, pad(c0), stemK, c0, ckpt && ((k, n) => ckpt.stem.convWeight[n * stemK + k]));
  w.vector('bias', pad(c0), ckpt && ((i) => ckpt.stem.convBias[i]), c0);
  w.vector('normWeight', pad(c0), ckpt && ((i) => ckpt.stem.norm.weight[i]), c0);
  w.vector('normBias', pad(c0), ckpt && ((i) => ckpt.stem.norm.bias[i]), c0);

  const stages = spec.hiddenSizes.map((channels, s) => {
    const stage = ckpt?.stages[s];
    let downsample: DownsampleGroup | undefined;
    if (s > 0) {
      const previous = spec.hiddenSizes[s - 1];
      const ciPad = pad(previous);
      const down = stage?.downsample;
      downsample = w.group<DownsampleGroup>(`stages.${s}.downsample`);
      // K runs over (ky, kx, ci) with ci padded: the kernel reads four NHWC input pixels in a row.
      const sourceIndex = (k: number) => ({ tap: Math.floor(k / ciPad), ci: k % ciPad });
      w.matrix('weight', 4 * ciPad, pad(channels), 4 * ciPad, channels, down && ((k, n) => {
        const { tap, ci } = sourceIndex(k);
        if (ci >= previous) return 0;
        return down.convWeight[((n * previous + ci) * 2 + (tap >> 1)) * 2 + (tap & 1)] * down.norm.weight[ci];
      }), true);
      w.vector('bias', pad(channels), down && ((n) => {
        let sum = down.convBias[n];
        for (let ci = 0; ci < previous; ci++) {
          for (let tap = 0; tap < 4; tap++) sum += down.convWeight[(n * previous + ci) * 4 + tap] * down.norm.bias[ci];
        }
        return sum;
      }), channels);
    }
    const blocks = Array.from({ length: spec.depths[s] }, (_, j) => writeBlock(spec, w, `stages.${s}.blocks.${j}`, channels, stage?.blocks[j]));
    return { downsample, blocks };
  });

  const last = spec.hiddenSizes[spec.numStages - 1];
  const featureNorms: Record<string, NormGroup> = {};
  let pooler: NormGroup | undefined;
  if (spec.head === 'backbone') {
    for (const feature of spec.outFeatures) {
      const channels = featureChannels(spec.hiddenSizes, feature);
      featureNorms[feature] = writeNorm(w, `featureNorms.${feature}`, channels, pad(channels), ckpt?.featureNorms[feature]);
    }
  } else {
    pooler = writeNorm(w, 'pooler', last, pad(last), ckpt?.poolerNorm);
  }
  let classifierGroup: LinearGroup | undefined;
  if (spec.head === 'classification' && spec.numLabels > 0) {
    const classifier = ckpt?.classifier;
    classifierGroup = w.group<LinearGroup>('classifier');
    w.matrix('weight', pad(last), pad(spec.numLabels), last, spec.numLabels, classifier && ((k, n) => classifier.weight[n * last + k]), true);
    w.vector('bias', pad(spec.numLabels), classifier && ((i) => classifier.bias[i]), spec.numLabels);
  }
  return { stem, stages, featureNorms, pooler, classifier: classifierGroup };
}

function writeNorm(w: LayoutWriter, key: string, channels: number, padded: number, norm?: NormWeights): NormGroup {
  const group = w.group<NormGroup>(key);
  w.vector('weight', padded, norm && ((i) => norm.weight[i]), channels);
  w.vector('bias', padded, norm && ((i) => norm.bias[i]), channels);
  return group;
}

function writeBlock(spec: ModelSpec, w: LayoutWriter, key: string, channels: number, block?: BlockWeights): BlockGroup {
  const group = w.group<BlockGroup>(key);
  const cPad = paddedChannels(channels, w.packing);
  const hidden = MLP_RATIO * channels;
  const hPad = paddedChannels(hidden, w.packing);
  const taps = DWCONV_KERNEL * DWCONV_KERNEL;

  // Depthwise taps are tap-major so one tap's weights for consecutive channels form vectors.
  w.matrix('dwWeight', taps, cPad, taps, channels, block && ((tap, c) => block.dwconvWeight[c * taps + tap]));
  w.vector('dwBias', cPad, block && ((c) => block.dwconvBias[c]), channels);

  const g = block?.norm.weight;
  const beta = block?.norm.bias;
  w.matrix('pw1Weight', cPad, hPad, channels, hidden, block && ((k, n) => block.pwconv1Weight[n * channels + k] * g![k]), true);
  w.vector('pw1Bias', hPad, block && ((n) => {
    let sum = block.pwconv1Bias[n];
    for (let k = 0; k < channels; k++) sum += block.pwconv1Weight[n * channels + k] * beta![k];
    return sum;
  }), hidden);
  if (spec.grn) w.vector('grnGamma', hPad, block && ((i) => block.grn!.weight[i]), hidden);

  const scale = (n: number) => (block?.layerScale ? block.layerScale[n] : 1);
  w.matrix('pw2Weight', hPad, cPad, hidden, channels, block && ((k, n) => scale(n) * block.pwconv2Weight[n * hidden + k]), true);
  w.vector('pw2Bias', cPad, block && ((n) => {
    let sum = block.pwconv2Bias[n];
    if (block.grn) for (let k = 0; k < hidden; k++) sum += block.pwconv2Weight[n * hidden + k] * block.grn.bias[k];
    return scale(n) * sum;
  }), channels);
  return group;
}
