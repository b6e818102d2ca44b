/**
 * Types shared by the compiler and every generated module. This file is copied
 * into generated packages: no imports beyond other runtime files.
 */
import type { PreprocessSpec } from './preprocess.js';

/** The ACT2FN names of transformers that need no learned parameters. */
export const ACTIVATIONS = [
  'gelu', 'gelu_10', 'gelu_fast', 'gelu_new', 'gelu_python', 'gelu_pytorch_tanh', 'gelu_accurate',
  'laplace', 'leaky_relu', 'linear', 'mish', 'quick_gelu', 'relu', 'relu2', 'relu6', 'sigmoid',
  'silu', 'swish', 'tanh',
] as const;
export type Activation = (typeof ACTIVATIONS)[number];

/** config.problem_type values transformers accepts: they choose the loss. */
export const PROBLEM_TYPES = ['regression', 'single_label_classification', 'multi_label_classification'] as const;
export type ProblemType = (typeof PROBLEM_TYPES)[number];

/**
 * Buffers the plan reads and writes: the NCHW input, NHWC activation buffers `act0`, `act1`, ...
 * (as many as the plan keeps alive at once, allocated by liveness in plan.ts), and the per-image
 * head vectors.
 */
export type ActivationBufferName = `act${number}`;
export type BufferName = 'input' | ActivationBufferName | 'pooled' | 'logits';

/** Real and padded (storage) channel counts of an NHWC activation. Padding lanes hold zeros. */
export interface Channels { real: number; padded: number }

/**
 * One tensor of a weight group: `length` floats from float `offset` of the weights (absolute),
 * a vector, or a K x N matrix (padded sizes) stored K-major in column panels of `panelWidth`
 * columns (0: one panel, plain row-major [K][N]).
 */
export interface WeightField {
  offset: number;
  length: number;
  layout: { kind: 'vector' } | { kind: 'matrix'; rows: number; columns: number; panelWidth: number; quantized?: QuantizedStorage };
}
/**
 * A matrix stored as integers and scales (weights dtype q8 or q4): `offset`/`length` of its field
 * then count 4-byte words of packed integers. The byte order is compiler/quantize.ts's.
 */
export interface QuantizedStorage {
  bits: 8 | 4;
  /** Rows of K sharing one scale per column: all K (q8, per column) or 32 (q4). */
  blockRows: number;
  /** Consecutive k of one column stored side by side. */
  kGroup: number;
  /** ceil(K / blockRows) x N scales in the matrix's panel order: float32 for q8, float16 for q4. */
  scales: { offset: number; words: number; dtype: 'f32' | 'f16' };
}
/**
 * How the kernels read a group's weights in memory: all float32 (an f16 file is widened at load),
 * or with its big matrices quantized (q8/q4 files are used as they are).
 */
export type WeightDtype = 'f32' | 'q8' | 'q4';
/** How a weights file stores its weights. */
export type WeightsFileDtype = 'f32' | 'f16' | 'q8' | 'q4';
export const WEIGHTS_FILE_DTYPES: readonly WeightsFileDtype[] = ['f32', 'f16', 'q8', 'q4'];
/** Bytes of a weights file of `floats` 4-byte words (f16: halves of them). */
export function weightsFileBytes(weights: { floats: number; dtype: WeightsFileDtype }): number {
  return weights.floats * (weights.dtype === 'f16' ? 2 : 4);
}
/**
 * The weights one fused op streams, laid out by compiler/layout.ts. Plan steps carry their group,
 * so a kernel's field offsets come from the group it reads, never from another block's.
 */
export interface WeightGroup<Field extends string = string, OptionalField extends string = never> {
  /** Where it came from, for messages: "stem", "stages.1.blocks.2", "classifier", ... */
  key: string;
  /** Float offset of the group's start (its first field) in the weights. */
  offset: number;
  /** Floats from `offset` to the end of its last field. */
  floats: number;
  dtype: WeightDtype;
  fields: Record<Field, WeightField> & Partial<Record<OptionalField, WeightField>>;
}
export type StemGroup = WeightGroup<'weight' | 'bias' | 'normWeight' | 'normBias'>;
/** The downsampling LayerNorm's affine is folded into the conv: weight and bias only. */
export type DownsampleGroup = WeightGroup<'weight' | 'bias'>;
/** The block LayerNorm's affine is folded into pwconv1, layer scale (and V2's GRN bias) into pwconv2. */
export type BlockGroup = WeightGroup<'dwWeight' | 'dwBias' | 'pw1Weight' | 'pw1Bias' | 'pw2Weight' | 'pw2Bias', 'grnGamma'>;
export type NormGroup = WeightGroup<'weight' | 'bias'>;
export type LinearGroup = WeightGroup<'weight' | 'bias'>;

/**
 * One fused operation of the plan. `weights` is the op's weight group; `level` is the resolution
 * it runs at (0 = stem output, s = stage s). The same list is the dispatch list of every target.
 */
export type PlanStep =
  | { op: 'stem'; level: 0; src: 'input'; dst: ActivationBufferName; inChannels: number; out: Channels; patch: number; weights: StemGroup; eps: number }
  | { op: 'downsample'; level: number; src: ActivationBufferName; dst: ActivationBufferName; in: Channels; out: Channels; weights: DownsampleGroup; eps: number }
  | {
    op: 'block'; level: number; stage: number; index: number; src: ActivationBufferName; dst: ActivationBufferName;
    channels: Channels; hidden: Channels; activation: Activation; grn: boolean; weights: BlockGroup; eps: number;
  }
  /** Copy an NHWC activation out as an NCHW output tensor (real channels only). */
  | { op: 'output'; name: string; level: number; src: ActivationBufferName; channels: Channels; onlyWithHiddenStates: boolean }
  /** Backbone: LayerNorm (with affine) of a stage output, as an NCHW output tensor. */
  | { op: 'featureMap'; name: string; level: number; src: ActivationBufferName; channels: Channels; weights: NormGroup; eps: number }
  /** Mean over H x W, then the pooler LayerNorm with the config's eps: pooler_output. */
  | { op: 'pool'; level: number; src: ActivationBufferName; dst: 'pooled'; channels: Channels; weights: NormGroup; eps: number }
  | { op: 'classifier'; src: 'pooled'; dst: 'logits'; in: Channels; labels: Channels; weights: LinearGroup };

/** Everything a generated module knows about its model, baked in as data. */
export interface ModelManifest {
  /** Package-style name of the variant, e.g. "convnext-tiny-224-wasm". */
  name: string;
  target: 'wasm' | 'webgpu';
  architecture: string;
  /** Parameters of the checkpoint (before folds), as transformers counts them. */
  parameters: number;
  modelType: 'convnext' | 'convnextv2';
  head: 'classification' | 'base' | 'backbone';
  numChannels: number;
  patchSize: number;
  hiddenSizes: number[];
  depths: number[];
  hiddenAct: Activation;
  layerNormEps: number;
  imageSize: number;
  numLabels: number;
  labels: string[];
  /** config.label2id as [label, index] pairs (data, whatever the labels say); the model's config has it as an object. */
  label2id: Array<[string, number]>;
  /** config.problem_type; null: loss() decides from the labels, as transformers does. */
  problemType: ProblemType | null;
  outFeatures: string[];
  preprocess: PreprocessSpec;
  /** Smallest input height and width: every level keeps at least one pixel. */
  minInputSize: number;
  /** Channels of each level's activations (level s = stage s). */
  levels: Channels[];
  steps: PlanStep[];
  weights: {
    /** File name next to the module. */
    file: string;
    /**
     * How the file stores them: float32; float16 (half the size; widened to float32 at load); or
     * q8/q4 (the big matrices as integers + scales, used in place; see WeightField).
     */
    dtype: WeightsFileDtype;
    /** Length in 4-byte words (f16: in floats, two bytes each in the file). */
    floats: number;
    /** Checksum of the packed weights; null when built from a bare config (weights come at load). */
    checksum: number | null;
  };
}

/** Raw outputs of a backend: NCHW (or [N, C]) float32 tensors by transformers' names. */
export type RawOutputs = Map<string, { data: Float32Array; shape: number[] }>;

/** A compiled target's executor. The model wrapper validates inputs before calling it. */
export interface Backend {
  readonly name: 'wasm' | 'webgpu';
  /** A short human description of what runs (e.g. "WASM SIMD, relaxed FMA, 1 thread"). */
  readonly description: string;
  run(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs>;
  dispose(): void;
}

export interface RunOptions {
  batch: number;
  height: number;
  width: number;
  outputHiddenStates?: boolean;
}

export interface ModelOutputs {
  logits?: Float32Array;
  poolerOutput?: Float32Array;
  lastHiddenState: Float32Array;
  hiddenStates?: Float32Array[];
  featureMaps?: Float32Array[];
  /** Shape of every output above, by transformers' names (logits, pooler_output, hidden_states.K, ...). */
  shapes: Record<string, number[]>;
}

export interface Classification { label: string; score: number; index: number }
