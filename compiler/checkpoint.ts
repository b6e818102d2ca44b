/**
 * Stage 2: binds a checkpoint's tensors to the roles the spec says it must have,
 * checking names and shapes exactly as transformers writes them. Every missing,
 * unexpected or misshapen tensor is reported at once.
 */
import { DWCONV_KERNEL, MLP_RATIO, featureChannels, type ModelSpec } from './config.js';
import { CxcError } from './errors.js';
import { collectGarbage } from './memory.js';
import type { TensorEntry } from './safetensors.js';

export interface NormWeights { weight: Float32Array; bias: Float32Array }
export interface BlockWeights {
  dwconvWeight: Float32Array; // [C, 1, 7, 7]
  dwconvBias: Float32Array;
  norm: NormWeights;
  pwconv1Weight: Float32Array; // [4C, C]
  pwconv1Bias: Float32Array;
  grn?: { weight: Float32Array; bias: Float32Array }; // [4C] each
  pwconv2Weight: Float32Array; // [C, 4C]
  pwconv2Bias: Float32Array;
  layerScale?: Float32Array; // [C]
}
export interface StageWeights {
  downsample?: { norm: NormWeights; convWeight: Float32Array /* [Co, Ci, 2, 2] */; convBias: Float32Array };
  blocks: BlockWeights[];
}
export interface CheckpointWeights {
  stem: { convWeight: Float32Array /* [C0, cin, p, p] */; convBias: Float32Array; norm: NormWeights };
  stages: StageWeights[];
  poolerNorm?: NormWeights;
  classifier?: { weight: Float32Array /* [labels, C] */; bias: Float32Array };
  /** Backbone: stage name -> the LayerNorm applied to that stage's output. */
  featureNorms: Record<string, NormWeights>;
}

/** One tensor the spec requires: its name in the checkpoint and its shape. */
export interface ExpectedTensor { name: string; shape: number[] }

/** The trunk's name prefix, as transformers' save_pretrained writes it for each head. */
function trunkPrefix(spec: ModelSpec): string {
  if (spec.head !== 'classification') return '';
  return spec.modelType === 'convnextv2' ? 'convnextv2.' : 'convnext.';
}

/**
 * The tensors a checkpoint for this spec holds, in transformers' order. The
 * visitor receives each with a setter that stores it into CheckpointWeights.
 */
function describe(spec: ModelSpec, prefix: string, visit: (tensor: ExpectedTensor, store: (data: Float32Array) => void) => void): CheckpointWeights {
  const weights = { stages: [], featureNorms: {} } as unknown as CheckpointWeights;
  const norm = (name: string, channels: number): NormWeights => {
    const n = {} as NormWeights;
    visit({ name: `${name}.weight`, shape: [channels] }, (d) => (n.weight = d));
    visit({ name: `${name}.bias`, shape: [channels] }, (d) => (n.bias = d));
    return n;
  };
  const c0 = spec.hiddenSizes[0];
  const p = spec.patchSize;
  const stem = {} as CheckpointWeights['stem'];
  visit({ name: `${prefix}embeddings.patch_embeddings.weight`, shape: [c0, spec.numChannels, p, p] }, (d) => (stem.convWeight = d));
  visit({ name: `${prefix}embeddings.patch_embeddings.bias`, shape: [c0] }, (d) => (stem.convBias = d));
  stem.norm = norm(`${prefix}embeddings.layernorm`, c0);
  weights.stem = stem;

  spec.hiddenSizes.forEach((channels, s) => {
    const stage: StageWeights = { blocks: [] };
    const base = `${prefix}encoder.stages.${s}`;
    if (s > 0) {
      const previous = spec.hiddenSizes[s - 1];
      const downsample = { norm: norm(`${base}.downsampling_layer.0`, previous) } as NonNullable<StageWeights['downsample']>;
      visit({ name: `${base}.downsampling_layer.1.weight`, shape: [channels, previous, 2, 2] }, (d) => (downsample.convWeight = d));
      visit({ name: `${base}.downsampling_layer.1.bias`, shape: [channels] }, (d) => (downsample.convBias = d));
      stage.downsample = downsample;
    }
    const hidden = MLP_RATIO * channels;
    for (let j = 0; j < spec.depths[s]; j++) {
      const layer = `${base}.layers.${j}`;
      const block = {} as BlockWeights;
      visit({ name: `${layer}.dwconv.weight`, shape: [channels, 1, DWCONV_KERNEL, DWCONV_KERNEL] }, (d) => (block.dwconvWeight = d));
      visit({ name: `${layer}.dwconv.bias`, shape: [channels] }, (d) => (block.dwconvBias = d));
      block.norm = norm(`${layer}.layernorm`, channels);
      visit({ name: `${layer}.pwconv1.weight`, shape: [hidden, channels] }, (d) => (block.pwconv1Weight = d));
      visit({ name: `${layer}.pwconv1.bias`, shape: [hidden] }, (d) => (block.pwconv1Bias = d));
      if (spec.grn) {
        const grn = {} as NonNullable<BlockWeights['grn']>;
        visit({ name: `${layer}.grn.weight`, shape: [1, 1, 1, hidden] }, (d) => (grn.weight = d));
        visit({ name: `${layer}.grn.bias`, shape: [1, 1, 1, hidden] }, (d) => (grn.bias = d));
        block.grn = grn;
      }
      visit({ name: `${layer}.pwconv2.weight`, shape: [channels, hidden] }, (d) => (block.pwconv2Weight = d));
      visit({ name: `${layer}.pwconv2.bias`, shape: [channels] }, (d) => (block.pwconv2Bias = d));
      if (spec.layerScale) {
        visit({ name: `${layer}.layer_scale_parameter`, shape: [channels] }, (d) => (block.layerScale = d));
      }
      stage.blocks.push(block);
    }
    weights.stages.push(stage);
  });

  const last = spec.hiddenSizes[spec.numStages - 1];
  if (spec.head === 'backbone') {
    for (const feature of spec.outFeatures) {
      weights.featureNorms[feature] = norm(`hidden_states_norms.${feature}`, featureChannels(spec.hiddenSizes, feature));
    }
  } else {
    weights.poolerNorm = norm(`${prefix}layernorm`, last);
  }
  if (spec.head === 'classification' && spec.numLabels > 0) {
    const classifier = {} as NonNullable<CheckpointWeights['classifier']>;
    visit({ name: 'classifier.weight', shape: [spec.numLabels, last] }, (d) => (classifier.weight = d));
    visit({ name: 'classifier.bias', shape: [spec.numLabels] }, (d) => (classifier.bias = d));
    weights.classifier = classifier;
  }
  return weights;
}

/** Every tensor name and shape a checkpoint of this spec must hold. */
export function expectedTensors(spec: ModelSpec): ExpectedTensor[] {
  const list: ExpectedTensor[] = [];
  describe(spec, trunkPrefix(spec), (tensor) => list.push(tensor));
  return list;
}

/** Checks the checkpoint against the spec and returns its tensors by role. */
export function bindCheckpoint(spec: ModelSpec, tensors: Map<string, TensorEntry>, source: string): CheckpointWeights {
  // A base-model spec may be given a checkpoint saved from the classification class, and vice
  // versa for the trunk: accept the trunk under either naming, decided once for the whole file.
  let prefix = trunkPrefix(spec);
  const stemName = 'embeddings.patch_embeddings.weight';
  if (!tensors.has(prefix + stemName)) {
    const alternative = ['', 'convnext.', 'convnextv2.'].find((p) => tensors.has(p + stemName));
    if (alternative !== undefined) prefix = alternative;
  }
  const missing: string[] = [];
  const misshapen: string[] = [];
  const seen = new Set<string>();
  const weights = describe(spec, prefix, (expected, store) => {
    const tensor = tensors.get(expected.name);
    if (!tensor) {
      missing.push(`${expected.name} ${JSON.stringify(expected.shape)}`);
      return;
    }
    seen.add(expected.name);
    const same = tensor.shape.length === expected.shape.length && tensor.shape.every((d, i) => d === expected.shape[i]);
    if (!same) {
      misshapen.push(`${expected.name} is ${JSON.stringify(tensor.shape)}, expected ${JSON.stringify(expected.shape)}`);
      return;
    }
    if (!(tensor.data instanceof Float32Array)) {
      misshapen.push(`${expected.name} has dtype ${tensor.dtype}, expected F32, F16 or BF16`);
      return;
    }
    store(tensor.data);
  });
  // Tensors transformers keeps but computes nothing from are not "unexpected".
  const unexpected = [...tensors.keys()].filter((name) => !seen.has(name) && !name.endsWith('num_batches_tracked'));
  const problems = [
    ...missing.map((m) => `missing tensor ${m}`),
    ...misshapen.map((m) => `wrong shape: ${m}`),
    ...unexpected.map((u) => `unexpected tensor ${u}`),
  ];
  if (problems.length > 0) {
    const shown = problems.slice(0, 40).map((p) => `  - ${p}`).join('\n');
    const more = problems.length > 40 ? `\n  ... and ${problems.length - 40} more` : '';
    throw new CxcError(`checkpoint does not match ${spec.architecture} with this config (${problems.length} problems):\n${shown}${more}`, {
      file: source,
      hint: 'check that config.json belongs to this model.safetensors',
    });
  }
  for (const [name, tensor] of tensors) {
    if (seen.has(name) && tensor.data instanceof Float32Array) {
      const bad = tensor.data.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) throw new CxcError(`tensor ${name} holds a non-finite value (${tensor.data[bad]}) at index ${bad}`, { file: source });
    }
  }
  return weights;
}

/**
 * For packWeights' onGroup: once packing moves past a stage's downsample or a block, that part of
 * the checkpoint is released (replaced by a guard that throws if it is read again), so the packed
 * copy replaces the checkpoint as it grows and peak memory stays near the checkpoint's size.
 */
export function releaseWhenPacked(weights: CheckpointWeights): (key: string) => void {
  let previous: string | undefined;
  let releasedBytes = 0;
  return (key) => {
    const match = previous === undefined ? null : /^stages\.(\d+)\.(?:downsample|blocks\.(\d+))$/.exec(previous);
    previous = key;
    if (!match) return;
    const stage = weights.stages[Number(match[1])];
    if (match[2] === undefined) {
      releasedBytes += arrayBytes(stage.downsample);
      stage.downsample = released<NonNullable<StageWeights['downsample']>>(`stages.${match[1]}.downsample`);
    } else {
      const j = Number(match[2]);
      releasedBytes += arrayBytes(stage.blocks[j]);
      stage.blocks[j] = released<BlockWeights>(`stages.${match[1]}.blocks.${j}`);
    }
    if (releasedBytes >= RELEASE_COLLECT_BYTES) {
      collectGarbage();
      releasedBytes = 0;
    }
  };
}

/** Released tensors are collected every this many bytes (a full GC of cxc's small heap takes milliseconds). */
const RELEASE_COLLECT_BYTES = 256 * 2 ** 20;

/** Bytes of the typed arrays an object holds, one level of nesting deep (norm weights, GRN). */
function arrayBytes(value: object | undefined): number {
  let bytes = 0;
  for (const field of Object.values(value ?? {})) {
    if (ArrayBuffer.isView(field)) bytes += field.byteLength;
    else if (field && typeof field === 'object') for (const inner of Object.values(field)) if (ArrayBuffer.isView(inner)) bytes += inner.byteLength;
  }
  return bytes;
}

function released<T extends object>(what: string): T {
  return new Proxy({} as T, {
    get: () => {
      throw new Error(`internal: checkpoint weights of ${what} read after they were packed and released`);
    },
  });
}
