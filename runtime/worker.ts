/**
 * The model's worker (load({ worker: true })): a module Web Worker in browsers, a worker thread
 * in Node. Its entry is the package's worker.js, which imports the package's own index.js and
 * hands its load() to serveModel(): the model is loaded here (weights through the cache, WASM
 * threads started from here), and run and classify messages are answered; outputs go back
 * transferred. It imports nothing by a URL it is sent. See remote.ts for the other side.
 */
import { bitmapPixels, decodeImage } from './images.js';
import type { ConvNextModel, LoadOptions } from './model.js';
import type { FromWorker, Loaded, ToWorker, WireImage } from './remote.js';
import type { ImageInput } from './preprocess.js';
import type { ModelOutputs } from './types.js';

interface Port {
  post(message: FromWorker, transfer?: Transferable[]): void;
  listen(handler: (message: ToWorker) => void): void;
  close(): void;
}

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';

async function openPort(): Promise<Port> {
  if (isNode) {
    type NodePort = { postMessage(m: unknown, t?: unknown[]): void; on(e: 'message', h: (m: ToWorker) => void): void; close(): void };
    const { parentPort } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as { parentPort: NodePort | null };
    if (!parentPort) throw new Error('cxc: runtime/worker.js runs as a worker thread only');
    return {
      post: (message, transfer = []) => parentPort.postMessage(message, transfer),
      listen: (handler) => parentPort.on('message', handler),
      // Ends this thread (and any WASM threads it started) once the model is disposed.
      close: () => (globalThis as unknown as { process: { exit(code: number): void } }).process.exit(0),
    };
  }
  const scope = globalThis as unknown as { postMessage(m: unknown, t: Transferable[]): void; onmessage: ((e: { data: ToWorker }) => void) | null; close(): void };
  return {
    post: (message, transfer = []) => scope.postMessage(message, transfer),
    listen: (handler) => (scope.onmessage = (event) => handler(event.data)),
    close: () => scope.close(),
  };
}

/** Every output array's buffer, once each: transferred back, not copied. */
function outputBuffers(outputs: ModelOutputs): Transferable[] {
  const arrays = [outputs.logits, outputs.poolerOutput, outputs.lastHiddenState, ...(outputs.hiddenStates ?? []), ...(outputs.featureMaps ?? [])];
  const buffers = new Set<ArrayBuffer>();
  for (const array of arrays) if (array && array.buffer instanceof ArrayBuffer) buffers.add(array.buffer);
  return [...buffers];
}

/** An image sent over: bitmaps are read (and closed) here, everything else decoded as on a page. */
function decodeWire(image: WireImage): Promise<ImageInput> {
  if (typeof ImageBitmap !== 'undefined' && image instanceof ImageBitmap) return Promise.resolve(bitmapPixels(image, true));
  if ('url' in image && typeof image.url === 'string') return decodeImage(image.url);
  return decodeImage(image as ImageInput | Blob);
}

type Load = (options: LoadOptions) => Promise<ConvNextModel>;

/** Answers the messages of remote.ts with a model from the package's own load(). */
export async function serveModel(load: Load): Promise<void> {
  const port = await openPort();
  let model: ConvNextModel | undefined;
  const handle = async (message: Exclude<ToWorker, { type: 'dispose' }>): Promise<{ value: unknown; transfer?: Transferable[] }> => {
    if (message.type === 'load') {
      model = await load({
        ...message.options,
        worker: false,
        onProgress: ({ loaded, total, what }) => port.post({ type: 'progress', loaded, total, what }),
      });
      const loaded: Loaded = { backend: model.backend, weightsFrom: model.weightsFrom };
      return { value: loaded };
    }
    if (!model) throw new Error('cxc: the worker has no model loaded');
    if (message.type === 'run') {
      const outputs = await model.run(message.pixelValues, message.options);
      return { value: outputs, transfer: outputBuffers(outputs) };
    }
    const images = await Promise.all(message.images.map(decodeWire));
    return { value: await model.classify(images, { topK: message.topK }) };
  };
  port.listen((message) => {
    if (message.type === 'dispose') {
      model?.dispose();
      model = undefined;
      port.close();
      return;
    }
    handle(message).then(
      ({ value, transfer }) => port.post({ type: 'result', id: message.id, value }, transfer),
      (error: unknown) => {
        const { name = 'Error', message: text = String(error) } = (error ?? {}) as { name?: string; message?: string };
        port.post({ type: 'error', id: message.id, name, message: text });
      },
    );
  });
}

