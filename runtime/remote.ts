/**
 * load({ worker: true }): the model in a module Web Worker (browsers) or a worker thread (Node),
 * behind the same ConvNextModel API.
 *
 * The worker's entry (the package's worker.js) imports the package's own index.js and calls its
 * load(), so it runs the very same backend (WASM threads start from the worker). What stays on the calling thread is
 * cheap: input checks (errors keep their stack and class), the loss, and preprocess() (which
 * returns synchronously for pixels in memory). classify() sends the images themselves: the
 * worker decodes, preprocesses and runs them, so a page's main thread only posts messages.
 *
 * Transfers: run()'s input is copied once into a buffer of its own that is transferred (the
 * caller's array stays usable); outputs come back transferred, not copied. Images go as the
 * cheapest transferable form: pixels copied once and transferred, an ImageBitmap made from
 * <img>, canvases and VideoFrames and transferred, a Blob as a handle, a URL as text.
 */
import { checkClassify, checkRunInput, computeLoss, modelConfig, preprocessSource, type ConvNextModel, type LoadOptions, type WeightsOrigin } from './model.js';
import { describeSource, isEncodedImage, NODE_NEEDS_PIXELS, pixelsOf, toBitmap, type EncodedImage, type ImageSource } from './images.js';
import { isCachingSource } from './assets.js';
import type { ImageInput } from './preprocess.js';
import type { Classification, ModelManifest, ModelOutputs } from './types.js';

/** An image as it crosses to the worker. */
export type WireImage = ImageInput | ImageBitmap | Blob | { url: string };

export type ToWorker =
  | { type: 'load'; id: number; options: Pick<LoadOptions, 'threads' | 'relaxedSimd' | 'cache'> & { weights?: string | ArrayBuffer } }
  | { type: 'run'; id: number; pixelValues: Float32Array; options: { batch: number; height: number; width: number; outputHiddenStates: boolean } }
  | { type: 'classify'; id: number; images: WireImage[]; topK: number }
  | { type: 'dispose' };

export type FromWorker =
  | { type: 'progress'; loaded: number; total: number; what: string }
  | { type: 'result'; id: number; value: unknown }
  | { type: 'error'; id: number; name: string; message: string };

export interface Loaded { backend: string; weightsFrom: WeightsOrigin }

const globals = globalThis as unknown as {
  process?: { versions?: { node?: string } };
  location?: { href: string };
  Worker?: new (url: URL, options: { type: 'module'; name: string }) => BrowserWorker;
};
const isNode = typeof globals.process?.versions?.node === 'string';

interface BrowserWorker {
  postMessage(message: unknown, transfer: Transferable[]): void;
  terminate(): void;
  onmessage: ((event: { data: FromWorker }) => void) | null;
  onerror: ((event: { message?: string; preventDefault(): void }) => void) | null;
}
interface NodeWorker {
  postMessage(message: unknown, transfer: unknown[]): void;
  terminate(): Promise<number>;
  on(event: 'message' | 'error' | 'exit', handler: (value: never) => void): void;
  ref(): void;
  unref(): void;
}

/** The two kinds of worker behind one small interface. */
interface Channel {
  post(message: ToWorker, transfer?: Transferable[]): void;
  /** Keeps a Node process alive while calls are pending, and only then. */
  busy(pending: boolean): void;
  terminate(): void;
}

async function openChannel(workerUrl: URL, name: string, onMessage: (message: FromWorker) => void, onFailure: (error: Error) => void): Promise<Channel> {
  if (isNode) {
    const { Worker } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as { Worker: new (url: URL, options: { name: string }) => NodeWorker };
    const worker = new Worker(workerUrl, { name });
    worker.on('message', (message: never) => onMessage(message));
    worker.on('error', (error: never) => onFailure(new Error(`cxc: the model's worker thread failed: ${(error as Error).message}`, { cause: error })));
    worker.on('exit', (code: never) => onFailure(new Error(`cxc: the model's worker thread exited (code ${String(code)})`)));
    worker.unref();
    return {
      post: (message, transfer = []) => worker.postMessage(message, transfer),
      busy: (pending) => (pending ? worker.ref() : worker.unref()),
      terminate: () => void worker.terminate(),
    };
  }
  if (typeof globals.Worker !== 'function') throw new Error('cxc: load({ worker: true }) needs Web Workers, which this environment lacks');
  const worker = new globals.Worker(workerUrl, { type: 'module', name });
  worker.onmessage = (event) => onMessage(event.data);
  worker.onerror = (event) => {
    event.preventDefault();
    onFailure(new Error(`cxc: the model's Web Worker ${workerUrl.href} failed to start or crashed${event.message ? `: ${event.message}` : ''}`));
  };
  return { post: (message, transfer = []) => worker.postMessage(message, transfer), busy: () => undefined, terminate: () => worker.terminate() };
}

/** Errors from the worker, as the class they were thrown as. */
function revive(name: string, message: string): Error {
  const Kind = name === 'TypeError' ? TypeError : name === 'RangeError' ? RangeError : Error;
  const error = new Kind(message);
  if (Kind === Error && name !== 'Error') error.name = name;
  return error;
}

/** What load() options the worker can take (functions and GPU objects cannot cross). */
function wireLoadOptions(options: LoadOptions & Record<string, unknown>): { options: Extract<ToWorker, { type: 'load' }>['options']; transfer: Transferable[] } {
  for (const key of ['device', 'gpu']) {
    if (options[key] !== undefined) {
      throw new TypeError(`cxc: load({ worker: true }) cannot take \`${key}\`: GPU objects cannot move to a worker; the worker requests its own adapter (leave \`${key}\` out, or load without worker)`);
    }
  }
  const { threads, relaxedSimd, cache } = options;
  const weights = options.weights;
  if (weights === undefined) return { options: { threads, relaxedSimd, cache }, transfer: [] };
  if (isCachingSource(weights)) throw new TypeError('cxc: load({ worker: true }) takes weights as a URL, a path or bytes');
  if (typeof weights === 'string' || weights instanceof URL) {
    // Relative URLs mean the page's, not the worker script's; Node paths mean the process's working directory, as in the worker.
    const absolute = !isNode && globals.location ? new URL(String(weights), globals.location.href).href : String(weights);
    return { options: { threads, relaxedSimd, cache, weights: absolute }, transfer: [] };
  }
  const view = weights instanceof ArrayBuffer ? new Uint8Array(weights) : new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength);
  const copy = view.slice(); // one copy, transferred: the caller keeps its bytes
  return { options: { threads, relaxedSimd, cache, weights: copy.buffer }, transfer: [copy.buffer] };
}

/** An image in the form that crosses to the worker cheapest, and what to transfer with it. */
async function toWire(source: ImageSource): Promise<{ image: WireImage; transfer: Transferable[] }> {
  const pixels = pixelsOf(source);
  if (pixels) {
    const data = ArrayBuffer.isView(pixels.data) ? new Uint8Array(pixels.data.buffer, pixels.data.byteOffset, pixels.data.byteLength).slice() : pixels.data;
    const image: ImageInput = { data, width: pixels.width, height: pixels.height, channels: pixels.channels };
    return { image, transfer: ArrayBuffer.isView(data) ? [data.buffer as ArrayBuffer] : [] };
  }
  const kind = isEncodedImage(source);
  if (!kind) throw new TypeError(`cxc: cannot read an image from ${describeSource(source)}: pass ImageData, an <img>, a canvas, an ImageBitmap, a VideoFrame, a Blob, a URL or pixels { data, width, height, channels }`);
  if (isNode) throw new TypeError(`cxc: cannot decode ${describeSource(source)} here: ${NODE_NEEDS_PIXELS}`);
  if (kind === 'url') return { image: { url: new URL(String(source), globals.location?.href).href }, transfer: [] };
  if (kind === 'blob') return { image: source as Blob, transfer: [] };
  const bitmap = await toBitmap(source as EncodedImage);
  return { image: bitmap, transfer: [bitmap] };
}

export async function loadInWorker(manifest: ModelManifest, workerUrl: URL, options: LoadOptions & Record<string, unknown>): Promise<ConvNextModel> {
  if (isNode && manifest.target === 'webgpu') {
    throw new TypeError(
      'cxc: load({ worker: true }) runs WebGPU packages in browsers only: a worker thread in Node has no GPU entry point to take. ' +
        'In Node, load({ gpu }) without worker: the GPU computes while the thread waits on a promise',
    );
  }
  const wire = wireLoadOptions(options);
  const pending = new Map<number, { resolve(value: unknown): void; reject(error: Error): void }>();
  let nextId = 1;
  let failure: Error | undefined;
  const settle = (id: number, outcome: (entry: { resolve(value: unknown): void; reject(error: Error): void }) => void) => {
    const entry = pending.get(id);
    if (!entry) return;
    pending.delete(id);
    channel?.busy(pending.size > 0);
    outcome(entry);
  };
  const onMessage = (message: FromWorker) => {
    if (message.type === 'progress') return options.onProgress?.({ loaded: message.loaded, total: message.total, what: message.what });
    if (message.type === 'result') return settle(message.id, (entry) => entry.resolve(message.value));
    settle(message.id, (entry) => entry.reject(revive(message.name, message.message)));
  };
  const onFailure = (error: Error) => {
    failure ??= error;
    for (const id of [...pending.keys()]) settle(id, (entry) => entry.reject(error));
  };
  // Assigned once the worker exists; nothing settles before then.
  let channel: Channel | undefined;
  channel = await openChannel(workerUrl, `cxc ${manifest.name}`, onMessage, onFailure);
  const open = channel;

  type Request = Extract<ToWorker, { id: number }>;
  type WithoutId<M> = M extends Request ? Omit<M, 'id'> : never;
  function call<T>(message: WithoutId<Request>, transfer: Transferable[] = []): Promise<T> {
    if (failure) return Promise.reject(failure);
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      open.busy(true);
      try {
        open.post({ ...message, id } as ToWorker, transfer);
      } catch (error) {
        // Not cloneable (a DataCloneError): nothing was sent, so nothing will answer.
        settle(id, (entry) => entry.reject(new TypeError(`cxc: cannot send this input to the worker: ${(error as Error).message}`, { cause: error })));
      }
    });
  }

  let loaded: Loaded;
  try {
    loaded = await call<Loaded>({ type: 'load', options: wire.options }, wire.transfer);
  } catch (error) {
    open.terminate();
    throw error;
  }
  let disposed = false;
  const alive = () => {
    if (disposed) throw new Error('cxc: this model was disposed; call load() again');
  };
  const preprocess = ((image: ImageSource) => {
    alive();
    return preprocessSource(manifest, image);
  }) as ConvNextModel['preprocess'];

  return {
    config: modelConfig(manifest),
    backend: `${loaded.backend}, in a ${isNode ? 'worker thread' : 'Web Worker'}`,
    weightsFrom: loaded.weightsFrom,
    async run(pixelValues, runOptions) {
      alive();
      checkRunInput(manifest, pixelValues, runOptions);
      const copy = pixelValues.slice(); // one copy, then transferred
      const { batch, height, width } = runOptions;
      return call<ModelOutputs>({ type: 'run', pixelValues: copy, options: { batch, height, width, outputHiddenStates: runOptions.outputHiddenStates === true } }, [copy.buffer]);
    },
    preprocess,
    classify: (async (images: ImageSource | ImageSource[], classifyOptions: { topK?: number } = {}) => {
      alive();
      const topK = checkClassify(manifest, classifyOptions);
      const list = Array.isArray(images) ? images : [images];
      const wired = await Promise.all(list.map(toWire));
      const tops = await call<Classification[][]>({ type: 'classify', images: wired.map((w) => w.image), topK }, wired.flatMap((w) => w.transfer));
      return Array.isArray(images) ? tops : tops[0];
    }) as ConvNextModel['classify'],
    loss: (logits, labels) => computeLoss(manifest, logits, labels),
    dispose() {
      if (disposed) return;
      disposed = true;
      onFailure(new Error('cxc: this model was disposed; call load() again'));
      // The worker disposes its model and closes itself; a worker stuck in a run is ended anyway.
      open.post({ type: 'dispose' });
      const timer = setTimeout(() => open.terminate(), 2000) as unknown as { unref?: () => void };
      timer.unref?.();
    },
  };
}
