/**
 * The model object every generated module returns from load(): input checks,
 * outputs named as transformers names them, preprocessing, classification and
 * the loss. Backends only compute; everything a user can get wrong is caught here,
 * before any kernel runs.
 */
import { preprocess as preprocessImage } from './preprocess.js';
import { decodeImage, pixelsOf, type EncodedImage, type ImageSource, type PixelSource } from './images.js';
import type { ProgressCallback, ByteSource } from './assets.js';
import type { Backend, Classification, ModelManifest, ModelOutputs, ProblemType, RunOptions } from './types.js';

export interface LoadOptions {
  /** The weights file: a path (Node), a URL, or its bytes. Default: weights.bin next to the module. */
  weights?: ByteSource;
  /** Worker threads for the WASM target (default 1). With `worker: true` they start from that worker. */
  threads?: number;
  /** Called as the weights arrive. */
  onProgress?: ProgressCallback;
  /** WASM: use relaxed-SIMD FMA kernels where the engine has them (default true). */
  relaxedSimd?: boolean;
  /**
   * Browsers: keep weights.bin in Cache Storage (default true), keyed by package name, version and
   * weights checksum; a cached copy is checksummed on every load like a download, and a corrupt
   * or stale one is deleted and downloaded again. Node reads files and ignores this.
   */
  cache?: boolean;
  /**
   * Run the model in a module Web Worker (browsers) or a worker thread (Node): the same API, with
   * decoding, preprocessing and inference off the calling thread. dispose() ends the worker.
   */
  worker?: boolean;
  // WebGPU packages add `device` and `gpu` (runtime/webgpu.ts, WebGpuBackendOptions): kept out of
  // here so WASM packages type-check without the WebGPU type declarations.
}

/** The model's configuration, with the labels as transformers names them. */
export type ModelConfig = Omit<ModelManifest, 'steps' | 'label2id'> & {
  /** config.id2label: class index (as a string key, as in config.json) -> label. */
  id2label: Record<string, string>;
  /** config.label2id: label -> class index. */
  label2id: Record<string, number>;
};

/** Where load() found the weights: Cache Storage, a download, a file (Node), or bytes it was given. */
export type WeightsOrigin = 'cache' | 'network' | 'file' | 'bytes';

export interface Preprocessed { pixelValues: Float32Array; height: number; width: number }
export interface ClassifyOptions { topK?: number }

export interface ConvNextModel {
  /** The model's configuration, as compiled. */
  readonly config: ModelConfig;
  /** What runs it, e.g. "WASM SIMD128, 1 thread". */
  readonly backend: string;
  /** Where this load found the weights (browsers: 'cache' when Cache Storage had them). */
  readonly weightsFrom: WeightsOrigin;
  run(pixelValues: Float32Array, options: RunOptions): Promise<ModelOutputs>;
  /** Pixels in memory are preprocessed at once; images to decode (Blob, URL, <img>, ...) give a Promise. */
  preprocess(image: PixelSource): Preprocessed;
  preprocess(image: EncodedImage): Promise<Preprocessed>;
  preprocess(image: ImageSource): Preprocessed | Promise<Preprocessed>;
  /** Top-k labels of one image; with a list of images, one top-k list per image (run as batches). */
  classify(image: ImageSource, options?: ClassifyOptions): Promise<Classification[]>;
  classify(images: ImageSource[], options?: ClassifyOptions): Promise<Classification[][]>;
  /**
   * The loss transformers computes for these logits, by config.problem_type: regression (MSE),
   * single_label_classification (cross-entropy over class indices, -100 ignored) or
   * multi_label_classification (binary cross-entropy with logits over float targets, one per
   * logit). Unset, as transformers infers it: one label is regression; otherwise integer labels
   * (an integer typed array, or a plain array with one label per image) are single-label and
   * float targets (Float32Array/Float64Array, or a plain array with one target per logit) multi-label.
   */
  loss(logits: Float32Array, labels: ArrayLike<number>): number;
  dispose(): void;
}

export function createModel(manifest: ModelManifest, backend: Backend, weightsFrom: WeightsOrigin = 'bytes'): ConvNextModel {
  let disposed = false;
  const alive = () => {
    if (disposed) throw new Error('cxc: this model was disposed; call load() again');
  };

  async function run(pixelValues: Float32Array, options: RunOptions): Promise<ModelOutputs> {
    alive();
    checkRunInput(manifest, pixelValues, options);
    const withHidden = options.outputHiddenStates === true;
    const raw = await backend.run(pixelValues, options.batch, options.height, options.width, withHidden);
    const shapes: Record<string, number[]> = {};
    for (const [name, tensor] of raw) shapes[name] = tensor.shape;
    const series = (prefix: string) => {
      const list: Float32Array[] = [];
      for (let k = 0; raw.has(`${prefix}.${k}`); k++) list.push(raw.get(`${prefix}.${k}`)!.data);
      return list;
    };
    const outputs: ModelOutputs = { lastHiddenState: raw.get('last_hidden_state')!.data, shapes };
    if (raw.has('pooler_output')) outputs.poolerOutput = raw.get('pooler_output')!.data;
    if (raw.has('logits')) outputs.logits = raw.get('logits')!.data;
    if (withHidden) outputs.hiddenStates = series('hidden_states');
    if (manifest.head === 'backbone') outputs.featureMaps = series('feature_maps');
    return outputs;
  }

  const preprocess = ((image: ImageSource) => {
    alive();
    return preprocessSource(manifest, image);
  }) as ConvNextModel['preprocess'];

  async function classify(images: ImageSource | ImageSource[], options: ClassifyOptions = {}): Promise<Classification[] | Classification[][]> {
    alive();
    const topK = checkClassify(manifest, options);
    const list = Array.isArray(images) ? images : [images];
    const inputs = await Promise.all(list.map((image) => preprocessSource(manifest, image)));
    const tops: Classification[][] = [];
    for (const group of sameSizeGroups(inputs)) {
      const { pixelValues, height, width, batch } = stack(group.map((i) => inputs[i]));
      const { logits } = await run(pixelValues, { batch, height, width });
      group.forEach((imageIndex, b) => (tops[imageIndex] = topLabels(manifest, logits!.subarray(b * manifest.numLabels, (b + 1) * manifest.numLabels), topK)));
    }
    return Array.isArray(images) ? tops : tops[0];
  }

  return {
    config: modelConfig(manifest),
    backend: backend.description,
    weightsFrom,
    run,
    preprocess,
    classify: classify as ConvNextModel['classify'],
    loss: (logits, labels) => computeLoss(manifest, logits, labels),
    dispose() {
      if (disposed) return;
      disposed = true;
      backend.dispose();
    },
  };
}

/** The manifest as users see it: no dispatch list, labels also as id2label / label2id objects. */
export function modelConfig(manifest: ModelManifest): ModelConfig {
  const { steps: _steps, label2id: pairs, ...rest } = manifest;
  // Object.fromEntries defines own properties: a label such as "__proto__" stays an ordinary key.
  const id2label = Object.fromEntries(manifest.labels.map((label, index) => [String(index), label]));
  const label2id = Object.fromEntries(pairs);
  return { ...rest, id2label, label2id };
}

/** Everything a user can get wrong about run()'s input, caught before any kernel runs. */
export function checkRunInput(manifest: ModelManifest, pixelValues: Float32Array, options: RunOptions): void {
  if (!(pixelValues instanceof Float32Array)) throw new TypeError('cxc: pixelValues must be a Float32Array in NCHW order');
  if (typeof options !== 'object' || options === null) throw new TypeError('cxc: run() needs { batch, height, width }');
  const { batch, height, width } = options;
  for (const [name, value] of Object.entries({ batch, height, width })) {
    if (!Number.isInteger(value) || (value as number) < 1) throw new RangeError(`cxc: ${name} must be a positive integer, got ${String(value)}`);
  }
  if (height < manifest.minInputSize || width < manifest.minInputSize) {
    throw new RangeError(
      `cxc: input ${height}x${width} is too small: ${manifest.name} needs at least ${manifest.minInputSize}x${manifest.minInputSize} ` +
        `(patch ${manifest.patchSize}, then ${manifest.hiddenSizes.length - 1} halvings)`,
    );
  }
  const expected = batch * manifest.numChannels * height * width;
  if (pixelValues.length !== expected) {
    throw new RangeError(
      `cxc: pixelValues has ${pixelValues.length} values but batch ${batch} x ${manifest.numChannels} channels x ${height} x ${width} needs ${expected}`,
    );
  }
  for (let i = 0; i < pixelValues.length; i++) {
    if (!Number.isFinite(pixelValues[i])) throw new RangeError(`cxc: pixelValues[${i}] is ${pixelValues[i]}; inputs must be finite`);
  }
}

/** classify()'s preconditions: a classifier, a sensible topK (returned). */
export function checkClassify(manifest: ModelManifest, options: ClassifyOptions): number {
  if (manifest.head !== 'classification' || manifest.numLabels === 0) {
    throw new Error(`cxc: ${manifest.name} is a ${manifest.architecture} without a classifier; use run() for its features`);
  }
  const topK = options.topK ?? 5;
  if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`cxc: topK must be a positive integer, got ${String(topK)}`);
  return topK;
}

/** Pixels in memory: synchronously; anything to decode first: a Promise. */
export function preprocessSource(manifest: ModelManifest, image: ImageSource): Preprocessed | Promise<Preprocessed> {
  const pixels = pixelsOf(image);
  if (pixels) return preprocessImage(pixels, manifest.preprocess);
  return decodeImage(image).then((decoded) => preprocessImage(decoded, manifest.preprocess));
}

/** Indices of inputs grouped by size, in order: each group runs as one batch. */
export function sameSizeGroups(inputs: Preprocessed[]): number[][] {
  const groups = new Map<string, number[]>();
  inputs.forEach(({ height, width }, index) => {
    const key = `${height}x${width}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(index);
  });
  return [...groups.values()];
}

/** Images of one size as one NCHW batch. */
export function stack(inputs: Preprocessed[]): Preprocessed & { batch: number } {
  const { height, width } = inputs[0];
  if (inputs.length === 1) return { ...inputs[0], batch: 1 };
  const size = inputs[0].pixelValues.length;
  const pixelValues = new Float32Array(size * inputs.length);
  inputs.forEach((input, b) => pixelValues.set(input.pixelValues, b * size));
  return { pixelValues, height, width, batch: inputs.length };
}

/** The top k of one image's logits by softmax score (ties: the lower index first). */
export function topLabels(manifest: ModelManifest, logits: Float32Array, topK: number): Classification[] {
  const scores = softmax(logits);
  const order = Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, Math.min(topK, order.length)).map((index) => ({ label: manifest.labels[index], score: scores[index], index }));
}

/** The problem transformers would solve for these labels (ConvNextForImageClassification.forward). */
export function inferProblemType(manifest: ModelManifest, labels: ArrayLike<number>, batch: number): ProblemType {
  if (manifest.problemType) return manifest.problemType;
  if (manifest.numLabels === 1) return 'regression';
  // torch decides by dtype: integer tensors are class indices, float tensors multi-label targets.
  if (labels instanceof Float32Array || labels instanceof Float64Array) return 'multi_label_classification';
  if (ArrayBuffer.isView(labels)) return 'single_label_classification';
  // A plain array has no dtype: one label per image means indices, one per logit means targets.
  return labels.length === batch * manifest.numLabels && labels.length !== batch ? 'multi_label_classification' : 'single_label_classification';
}

/** transformers' CrossEntropyLoss ignore_index. */
const IGNORE_INDEX = -100;

export function computeLoss(manifest: ModelManifest, logits: Float32Array, labels: ArrayLike<number>): number {
  const classes = manifest.numLabels;
  if (classes === 0) throw new Error(`cxc: ${manifest.name} has no classifier, so no loss`);
  if (!(logits instanceof Float32Array)) throw new TypeError('cxc: loss() takes the logits as a Float32Array [batch, num_labels]');
  if (logits.length === 0 || logits.length % classes !== 0) throw new RangeError(`cxc: logits length ${logits.length} is not a positive multiple of ${classes} labels`);
  if (typeof labels !== 'object' || labels === null || typeof labels.length !== 'number') throw new TypeError('cxc: loss() takes the labels as an array of numbers');
  const batch = logits.length / classes;
  const problem = inferProblemType(manifest, labels, batch);
  if (problem === 'single_label_classification') return crossEntropy(logits, labels, batch, classes);
  const perLogit = problem === 'regression' ? 'one target per logit (regression)' : 'one float target per logit (multi_label_classification)';
  if (labels.length !== logits.length) throw new RangeError(`cxc: ${labels.length} labels for ${batch} x ${classes} logits: ${problem} needs ${perLogit}`);
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    const target = Number(labels[i]);
    if (!Number.isFinite(target)) throw new RangeError(`cxc: label ${i} is ${String(labels[i])}; targets must be finite numbers`);
    const x = logits[i];
    // BCE with logits in its stable form: max(x, 0) - x*y + log(1 + exp(-|x|)).
    total += problem === 'regression' ? (x - target) ** 2 : Math.max(x, 0) - x * target + Math.log1p(Math.exp(-Math.abs(x)));
  }
  return total / logits.length;
}

/** Mean cross-entropy over the images whose label is not -100 (NaN when all are ignored, as torch gives). */
function crossEntropy(logits: Float32Array, labels: ArrayLike<number>, batch: number, classes: number): number {
  if (labels.length !== batch) throw new RangeError(`cxc: ${labels.length} labels for a batch of ${batch}: single_label_classification needs one class index per image`);
  let total = 0;
  let counted = 0;
  for (let b = 0; b < batch; b++) {
    const label = Number(labels[b]);
    if (label === IGNORE_INDEX) continue;
    if (!Number.isInteger(label) || label < 0 || label >= classes) throw new RangeError(`cxc: label ${labels[b]} of item ${b} is not a class index 0..${classes - 1} (or -100, ignored)`);
    const row = logits.subarray(b * classes, (b + 1) * classes);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    total += Math.log(sum) + max - row[label];
    counted++;
  }
  return total / counted;
}

export function softmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += out[i] = Math.exp(logits[i] - max);
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}
