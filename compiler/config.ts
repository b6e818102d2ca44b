/**
 * Stage 1 of the compiler: a Hugging Face config.json (ConvNextConfig or
 * ConvNextV2Config) in, a validated, fully defaulted ModelSpec out.
 */
import { CxcError, show } from './errors.js';
import { ACTIVATIONS, PROBLEM_TYPES, type Activation, type ProblemType } from '../runtime/types.js';

export { ACTIVATIONS, type Activation };

export type ModelType = 'convnext' | 'convnextv2';
/** What the checkpoint's head computes: logits, nothing past the pooler, or backbone feature maps. */
export type Head = 'classification' | 'base' | 'backbone';
export { PROBLEM_TYPES, type ProblemType };

export interface ModelSpec {
  modelType: ModelType;
  head: Head;
  numChannels: number;
  patchSize: number;
  numStages: number;
  hiddenSizes: number[];
  depths: number[];
  hiddenAct: Activation;
  /** Only the pooler's LayerNorm uses this; every other LayerNorm uses 1e-6. */
  layerNormEps: number;
  /** False when layer_scale_init_value <= 0 (and always for V2): no layer_scale_parameter tensors. */
  layerScale: boolean;
  /** ConvNeXt V2: global response normalization after the activation. */
  grn: boolean;
  imageSize: number;
  numLabels: number;
  /** Index -> label, dense, length numLabels. */
  labels: string[];
  /** config.label2id as [label, index] pairs (a label such as "__proto__" stays data); by default id2label inverted, as transformers makes it. */
  label2id: Array<[string, number]>;
  /** config.problem_type: what loss() computes; null lets the labels decide, as transformers does. */
  problemType: ProblemType | null;
  /** Backbone only: stage names ("stem", "stage1", ...) whose normed outputs are feature maps. */
  outFeatures: string[];
  /** The class name transformers would instantiate, for messages and the generated README. */
  architecture: string;
}

/** LayerNorm epsilon of every norm inside the network (transformers hard-codes it). */
export const INNER_LAYER_NORM_EPS = 1e-6;
/** The depthwise kernel of every ConvNeXt block. */
export const DWCONV_KERNEL = 7;
/** Zero padding of the depthwise conv on each side ("same" output size). */
export const DWCONV_PADDING = (DWCONV_KERNEL - 1) / 2;
/** Hidden width of a block's MLP relative to its channels. */
export const MLP_RATIO = 4;
/** ConvNeXt V2's GRN: Nx = Gx / (mean(Gx) + GRN_EPS) (transformers hard-codes it). */
export const GRN_EPS = 1e-6;

/**
 * Stage names as transformers' backbones call them: "stem" (the patchify output, hidden_states[0]),
 * then "stage1".."stageN" (hidden_states[1..N]). Index k of the list is hidden_states[k].
 */
export function stageNames(numStages: number): string[] {
  return ['stem', ...Array.from({ length: numStages }, (_, i) => `stage${i + 1}`)];
}

/** Channels of a stage named as in stageNames(): the stem's output has the first stage's width. */
export function featureChannels(hiddenSizes: number[], feature: string): number {
  const index = stageNames(hiddenSizes.length).indexOf(feature);
  if (index < 0) throw new Error(`internal: no stage named ${feature}`);
  return hiddenSizes[Math.max(0, index - 1)];
}

/** Beyond these a config is not a ConvNeXt anyone trained; refuse before allocating anything. */
const LIMITS = { channels: 16384, stages: 16, depth: 256, patch: 64, labels: 1_000_000, numChannels: 64 };

const ARCHITECTURE_HEADS: Record<string, Head> = {
  ConvNextForImageClassification: 'classification',
  ConvNextV2ForImageClassification: 'classification',
  ConvNextModel: 'base',
  ConvNextV2Model: 'base',
  ConvNextBackbone: 'backbone',
  ConvNextV2Backbone: 'backbone',
};

type Json = Record<string, unknown>;

class FieldReader {
  constructor(private readonly json: Json, private readonly source: string) {}

  fail(field: string, value: unknown, problem: string): never {
    throw new CxcError(`field "${field}" is ${show(value)}: ${problem}`, { file: this.source });
  }

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  integer(field: string, fallback: number, min: number, max: number): number {
    const value = this.has(field) ? this.json[field] : fallback;
    if (typeof value !== 'number' || !Number.isInteger(value)) this.fail(field, value, 'expected an integer');
    if (value < min || value > max) this.fail(field, value, `expected an integer from ${min} to ${max}`);
    return value;
  }

  number(field: string, fallback: number): number {
    const value = this.has(field) ? this.json[field] : fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) this.fail(field, value, 'expected a finite number');
    return value;
  }

  integerList(field: string, fallback: number[], min: number, max: number): number[] {
    const value = this.has(field) ? this.json[field] : fallback;
    if (!Array.isArray(value) || value.length === 0) this.fail(field, value, 'expected a non-empty list of integers');
    value.forEach((item, i) => {
      if (typeof item !== 'number' || !Number.isInteger(item) || item < min || item > max) {
        this.fail(`${field}[${i}]`, item, `expected an integer from ${min} to ${max}`);
      }
    });
    return value as number[];
  }

  string(field: string, fallback: string): string {
    const value = this.has(field) ? this.json[field] : fallback;
    if (typeof value !== 'string') this.fail(field, value, 'expected a string');
    return value;
  }
}

export interface ConfigContext {
  /** Tensor names of the checkpoint, when weights come with the config: they decide the head when `architectures` is absent. */
  tensorNames?: Iterable<string>;
}

/** Parses and validates a config.json object. `source` names the file in errors. */
export function parseModelConfig(json: unknown, source: string, context: ConfigContext = {}): ModelSpec {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new CxcError(`expected a JSON object, got ${show(json)}`, { file: source });
  }
  const read = new FieldReader(json as Json, source);

  const rawModelType = read.string('model_type', 'convnext');
  if (rawModelType !== 'convnext' && rawModelType !== 'convnextv2') {
    read.fail('model_type', rawModelType, 'cxc compiles "convnext" and "convnextv2" checkpoints');
  }
  const modelType = rawModelType as ModelType;

  const numStages = read.integer('num_stages', 4, 1, LIMITS.stages);
  const hiddenSizes = read.integerList('hidden_sizes', [96, 192, 384, 768], 1, LIMITS.channels);
  const depths = read.integerList('depths', [3, 3, 9, 3], 1, LIMITS.depth);
  if (hiddenSizes.length !== numStages) {
    read.fail('hidden_sizes', hiddenSizes, `has ${hiddenSizes.length} entries but num_stages is ${numStages}`);
  }
  if (depths.length !== numStages) {
    read.fail('depths', depths, `has ${depths.length} entries but num_stages is ${numStages}`);
  }

  const hiddenAct = read.string('hidden_act', 'gelu');
  if (!(ACTIVATIONS as readonly string[]).includes(hiddenAct)) {
    read.fail('hidden_act', hiddenAct, `unknown activation; cxc supports ${ACTIVATIONS.join(', ')}`);
  }

  const layerNormEps = read.number('layer_norm_eps', 1e-12);
  if (layerNormEps < 0 || layerNormEps > 1) read.fail('layer_norm_eps', layerNormEps, 'expected a number from 0 to 1');
  const layerScaleInit = modelType === 'convnextv2' ? 0 : read.number('layer_scale_init_value', 1e-6);

  const { labels, numLabels } = readLabels(read, json as Json);
  const head = decideHead(read, json as Json, context, numLabels);
  const outFeatures = head === 'backbone' ? readOutFeatures(read, json as Json, stageNames(hiddenSizes.length)) : [];

  const spec: ModelSpec = {
    modelType,
    head,
    numChannels: read.integer('num_channels', 3, 1, LIMITS.numChannels),
    patchSize: read.integer('patch_size', 4, 1, LIMITS.patch),
    numStages,
    hiddenSizes,
    depths,
    hiddenAct: hiddenAct as Activation,
    layerNormEps,
    layerScale: layerScaleInit > 0,
    grn: modelType === 'convnextv2',
    imageSize: read.integer('image_size', 224, 1, 16384),
    numLabels: head === 'classification' ? numLabels : 0,
    labels: head === 'classification' ? labels : [],
    label2id: head === 'classification' ? readLabel2Id(read, json as Json, labels) : [],
    problemType: readProblemType(read, json as Json),
    outFeatures,
    architecture: architectureName(modelType, head),
  };
  read.number('initializer_range', 0.02);
  const dropPath = read.number('drop_path_rate', 0);
  if (dropPath < 0 || dropPath >= 1) read.fail('drop_path_rate', dropPath, 'expected a number in [0, 1)');
  checkSize(read, spec);
  return spec;
}

/**
 * Each field may be within its limits and the model still absurd: 4 stages of 256 blocks of
 * 16384 channels hold about 2e12 parameters. Refuse, before anything is allocated, a model
 * whose float32 weights or whose largest activation (one image) would pass 4 GiB, which
 * is also all that WebAssembly can address. The largest real ConvNeXt (V2-Huge) has 660M parameters.
 */
const MAX_PARAMETERS = 1_000_000_000;
const MAX_ACTIVATION_BYTES = 4 * 2 ** 30;

/** Parameters (float32 values) of the model the spec describes, before any padding. */
export function countParameters(spec: ModelSpec): number {
  const { hiddenSizes: sizes, patchSize: p } = spec;
  const layerNorm = (c: number) => 2 * c;
  let count = spec.numChannels * p * p * sizes[0] + sizes[0] + layerNorm(sizes[0]);
  sizes.forEach((c, s) => {
    if (s > 0) count += layerNorm(sizes[s - 1]) + sizes[s - 1] * 4 * c + c;
    const hidden = MLP_RATIO * c;
    const block = DWCONV_KERNEL * DWCONV_KERNEL * c + c + layerNorm(c) + (c * hidden + hidden) + (hidden * c + c) +
      (spec.layerScale ? c : 0) + (spec.grn ? 2 * hidden : 0);
    count += spec.depths[s] * block;
  });
  const last = sizes[sizes.length - 1];
  if (spec.head === 'backbone') {
    for (const feature of spec.outFeatures) count += layerNorm(featureChannels(sizes, feature));
  } else {
    count += layerNorm(last);
  }
  if (spec.head === 'classification') count += last * spec.numLabels + spec.numLabels;
  return count;
}

function checkSize(read: FieldReader, spec: ModelSpec): void {
  const gib = (bytes: number) => `${(bytes / 2 ** 30).toPrecision(3)} GiB`;
  const parameters = countParameters(spec);
  if (parameters > MAX_PARAMETERS) {
    read.fail(
      'hidden_sizes',
      spec.hiddenSizes,
      `with depths ${show(spec.depths)}, num_channels ${spec.numChannels}, patch_size ${spec.patchSize} and ${spec.numLabels} labels ` +
        `(num_labels / id2label) the model has ${parameters.toPrecision(3)} parameters (${gib(parameters * 4)} of float32 weights); ` +
        `cxc refuses more than ${MAX_PARAMETERS.toPrecision(1)} parameters`,
    );
  }
  // Activations at the configured image size, or at the smallest input the network accepts
  // when that is larger: level s is (size / patch) / 2^s pixels square; a block's MLP holds 4x channels.
  const minInput = spec.patchSize * 2 ** (spec.numStages - 1);
  const size = Math.max(spec.imageSize, minInput);
  let largest = 0;
  let side = Math.floor(size / spec.patchSize);
  spec.hiddenSizes.forEach((c, s) => {
    if (s > 0) side = Math.floor(side / 2);
    largest = Math.max(largest, side * side * MLP_RATIO * c * 4);
  });
  if (largest > MAX_ACTIVATION_BYTES) {
    const [field, value] = spec.imageSize >= minInput ? ['image_size', spec.imageSize] : ['num_stages', spec.numStages];
    read.fail(
      field,
      value,
      `with patch_size ${spec.patchSize}, ${spec.numStages} stages and hidden_sizes ${show(spec.hiddenSizes)}, one ${size}x${size} image ` +
        `needs a ${gib(largest)} activation; cxc refuses more than ${gib(MAX_ACTIVATION_BYTES)}`,
    );
  }
}

function architectureName(modelType: ModelType, head: Head): string {
  const prefix = modelType === 'convnextv2' ? 'ConvNextV2' : 'ConvNext';
  return prefix + { classification: 'ForImageClassification', base: 'Model', backbone: 'Backbone' }[head];
}

/** id2label wins over num_labels; keys are strings of dense indices. */
function readLabels(read: FieldReader, json: Json): { labels: string[]; numLabels: number } {
  if (read.has('id2label')) {
    const id2label = json.id2label;
    if (typeof id2label !== 'object' || id2label === null || Array.isArray(id2label)) {
      read.fail('id2label', id2label, 'expected an object of "index": "label"');
    }
    const entries = Object.entries(id2label as Json);
    if (entries.length > LIMITS.labels) read.fail('id2label', `${entries.length} labels`, `more than ${LIMITS.labels}`);
    const labels: string[] = new Array(entries.length);
    for (const [key, label] of entries) {
      const index = Number(key);
      if (!/^(0|[1-9][0-9]*)$/.test(key) || index >= entries.length) {
        read.fail(`id2label[${JSON.stringify(key)}]`, key, `keys must be the indices 0..${entries.length - 1}`);
      }
      if (typeof label !== 'string') read.fail(`id2label[${JSON.stringify(key)}]`, label, 'expected a string label');
      labels[index] = label;
    }
    if (read.has('num_labels') && json.num_labels !== labels.length) {
      // transformers lets id2label override num_labels; say nothing, but keep the label count.
    }
    return { labels, numLabels: labels.length };
  }
  const numLabels = read.integer('num_labels', 2, 0, LIMITS.labels);
  return { labels: Array.from({ length: numLabels }, (_, i) => `LABEL_${i}`), numLabels };
}

/** label2id: label -> index, every index one of id2label's. Absent: id2label inverted (a repeated label keeps its last index, as dict(zip(...)) does). */
function readLabel2Id(read: FieldReader, json: Json, labels: string[]): Array<[string, number]> {
  if (!read.has('label2id')) {
    const inverse = new Map<string, number>();
    labels.forEach((label, index) => inverse.set(label, index));
    return [...inverse];
  }
  const given = json.label2id;
  if (typeof given !== 'object' || given === null || Array.isArray(given)) read.fail('label2id', given, 'expected an object of "label": index');
  return Object.entries(given as Json).map(([label, index]) => {
    if (!Number.isInteger(index) || (index as number) < 0 || (index as number) >= labels.length) {
      read.fail(`label2id[${JSON.stringify(label)}]`, index, `expected a class index 0..${labels.length - 1}`);
    }
    return [label, index as number];
  });
}

/** problem_type as transformers accepts it: one of three names, or null (decided by the labels at loss time). */
function readProblemType(read: FieldReader, json: Json): ProblemType | null {
  if (!read.has('problem_type') || json.problem_type === null) return null;
  const value = json.problem_type;
  if (typeof value !== 'string' || !(PROBLEM_TYPES as readonly string[]).includes(value)) {
    read.fail('problem_type', value, `expected null or one of ${PROBLEM_TYPES.join(', ')}`);
  }
  return value as ProblemType;
}

function decideHead(read: FieldReader, json: Json, context: ConfigContext, numLabels: number): Head {
  if (read.has('architectures')) {
    const architectures = json.architectures;
    if (!Array.isArray(architectures) || architectures.length === 0 || typeof architectures[0] !== 'string') {
      read.fail('architectures', architectures, 'expected a list of class names');
    }
    // Own keys only: "constructor" or "__proto__" must not find Object.prototype's members.
    const head = Object.hasOwn(ARCHITECTURE_HEADS, architectures[0] as string) ? ARCHITECTURE_HEADS[architectures[0] as string] : undefined;
    if (!head) {
      read.fail('architectures', architectures[0], `unknown class; cxc compiles ${Object.keys(ARCHITECTURE_HEADS).join(', ')}`);
    }
    return head;
  }
  if (context.tensorNames) {
    const names = [...context.tensorNames];
    if (names.some((name) => name.startsWith('hidden_states_norms.'))) return 'backbone';
    if (names.includes('classifier.weight')) return 'classification';
    return 'base';
  }
  if (read.has('out_features') || read.has('out_indices')) return 'backbone';
  return numLabels > 0 ? 'classification' : 'base';
}

/** Backbone outputs, as transformers aligns out_features and out_indices (default: the last stage). */
function readOutFeatures(read: FieldReader, json: Json, stageNames: string[]): string[] {
  if (read.has('out_features')) {
    const features = json.out_features;
    if (!Array.isArray(features) || features.length === 0) read.fail('out_features', features, 'expected a list of stage names');
    for (const name of features) {
      if (typeof name !== 'string' || !stageNames.includes(name)) {
        read.fail('out_features', name, `unknown stage; expected some of ${stageNames.join(', ')}`);
      }
    }
    if (read.has('out_indices')) {
      const indices = read.integerList('out_indices', [], 0, stageNames.length - 1);
      const fromIndices = indices.map((i) => stageNames[i]);
      if (fromIndices.join() !== (features as string[]).join()) {
        read.fail('out_indices', indices, `does not match out_features ${show(features)}`);
      }
    }
    return features as string[];
  }
  if (read.has('out_indices')) {
    return read.integerList('out_indices', [], -stageNames.length, stageNames.length - 1).map(
      (i) => stageNames[i < 0 ? stageNames.length + i : i],
    );
  }
  return [stageNames[stageNames.length - 1]];
}
