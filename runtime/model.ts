/**
 * The model object every generated module returns from load(): input checks,
 * outputs named as transformers names them, preprocessing, classification and
 * the loss. Backends only compute; everything a user can get wrong is caught here,
 * before any kernel runs.
 */
import { preprocess as preprocessImage, type ImageInput } from './preprocess.js';
import type { ProgressCallback, ByteSource } from './assets.js';
import type { Backend, Classification, ModelManifest, ModelOutputs, RunOptions } from './types.js';

export interface LoadOptions {
  /** The weights file: a path (Node), a URL, or its bytes. Default: weights.bin next to the module. */
  weights?: ByteSource;
  /** Worker threads for the WASM target (default 1). */
  threads?: number;
  /** Called as the weights arrive. */
  onProgress?: ProgressCallback;
  /** WASM: use relaxed-SIMD FMA kernels where the engine has them (default true). */
  relaxedSimd?: boolean;
  // WebGPU packages add `device` and `gpu` (runtime/webgpu.ts, WebGpuBackendOptions): kept out of
  // here so WASM packages type-check without the WebGPU type declarations.
}

export type ModelConfig = Omit<ModelManifest, 'steps'>;

export interface ConvNextModel {
  /** The model's configuration, as compiled. */
  readonly config: ModelConfig;
  /** What runs it, e.g. "WASM SIMD128, 1 thread". */
  readonly backend: string;
  run(pixelValues: Float32Array, options: RunOptions): Promise<ModelOutputs>;
  preprocess(image: ImageInput): { pixelValues: Float32Array; height: number; width: number };
  classify(image: ImageInput, options?: { topK?: number }): Promise<Classification[]>;
  /** Cross-entropy over integer labels, or MSE when the model has a single label (regression). */
  loss(logits: Float32Array, labels: ArrayLike<number>): number;
  dispose(): void;
}

export function createModel(manifest: ModelManifest, backend: Backend): ConvNextModel {
  const { steps: _steps, ...config } = manifest;
  let disposed = false;

  function checkInput(pixelValues: Float32Array, options: RunOptions): void {
    if (disposed) throw new Error('cxc: this model was disposed; call load() again');
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

  async function run(pixelValues: Float32Array, options: RunOptions): Promise<ModelOutputs> {
    checkInput(pixelValues, options);
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

  function preprocess(image: ImageInput) {
    if (disposed) throw new Error('cxc: this model was disposed; call load() again');
    return preprocessImage(image, manifest.preprocess);
  }

  async function classify(image: ImageInput, options: { topK?: number } = {}): Promise<Classification[]> {
    if (manifest.head !== 'classification' || manifest.numLabels === 0) {
      throw new Error(`cxc: ${manifest.name} is a ${manifest.architecture} without a classifier; use run() for its features`);
    }
    const topK = options.topK ?? 5;
    if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`cxc: topK must be a positive integer, got ${String(topK)}`);
    const { pixelValues, height, width } = preprocess(image);
    const { logits } = await run(pixelValues, { batch: 1, height, width });
    const scores = softmax(logits!);
    const order = Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a] || a - b);
    return order.slice(0, Math.min(topK, order.length)).map((index) => ({ label: manifest.labels[index], score: scores[index], index }));
  }

  function loss(logits: Float32Array, labels: ArrayLike<number>): number {
    const classes = manifest.numLabels;
    if (classes === 0) throw new Error(`cxc: ${manifest.name} has no classifier, so no loss`);
    if (logits.length % classes !== 0) throw new RangeError(`cxc: logits length ${logits.length} is not a multiple of ${classes} labels`);
    const batch = logits.length / classes;
    if (labels.length !== batch) throw new RangeError(`cxc: ${labels.length} labels for a batch of ${batch}`);
    let total = 0;
    if (classes === 1) {
      // transformers treats a single label as regression: mean squared error
      for (let b = 0; b < batch; b++) total += (logits[b] - labels[b]) ** 2;
      return total / batch;
    }
    for (let b = 0; b < batch; b++) {
      const label = labels[b];
      if (!Number.isInteger(label) || label < 0 || label >= classes) throw new RangeError(`cxc: label ${label} of item ${b} is not a class index 0..${classes - 1}`);
      const row = logits.subarray(b * classes, (b + 1) * classes);
      let max = -Infinity;
      for (const v of row) max = Math.max(max, v);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - max);
      total += Math.log(sum) + max - row[label];
    }
    return total / batch;
  }

  return {
    config,
    backend: backend.description,
    run,
    preprocess,
    classify,
    loss,
    dispose() {
      if (disposed) return;
      disposed = true;
      backend.dispose();
    },
  };
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
