/**
 * The WASM backend: one linear memory holds the weights (at the offsets baked into
 * the kernels and the dispatch list) and an activation arena laid out per run.
 * The dispatch list is the plan's steps; each step calls the exports the compiler
 * named for it, once per image. With threads, the pixel range of each spatial step
 * is split between the calling thread and workers that share the memory.
 */
import { loadWeights, type ByteSource, type ProgressCallback } from './assets.js';
import { finishChecksum, laneSeeds } from './checksum.js';
import { levelSizes } from './shapes.js';
import type { Backend, ModelManifest, PlanStep, RawOutputs } from './types.js';

export interface WasmStepKernels {
  kind: 'stem' | 'downsample' | 'block' | 'blockGrn' | 'featureMap' | 'pool' | 'classifier' | 'output';
  /** Export names, in call order. */
  exports: string[];
}

/** What the compiler decided for the WASM target, baked into the module as data. */
export interface WasmKernelInfo {
  /** Byte address of the weights file in linear memory. */
  weightsBase: number;
  /** Per-thread tile scratch. */
  scratchBytes: number;
  /** V2: widest hidden row of the GRN intermediate (floats), 0 without GRN. */
  midFloats: number;
  /** Widest padded hidden width (floats): GRN statistics and scales. */
  hiddenFloats: number;
  /** Kernels of each plan step, index-aligned with manifest.steps. */
  steps: WasmStepKernels[];
}

/** The four builds of the kernels: plain SIMD128 or relaxed-SIMD FMA, private or shared memory. */
export type WasmVariant = 'simd' | 'relaxed' | 'simd-shared' | 'relaxed-shared';
export type WasmBinaryLoader = (variant: WasmVariant) => Promise<Uint8Array>;

export interface WasmBackendOptions {
  /** Use relaxed-SIMD FMA kernels when the engine supports them (default true). */
  relaxedSimd?: boolean;
  /** Threads, the calling one included (default 1). Needs SharedArrayBuffer (cross-origin isolation in browsers). */
  threads?: number;
  onProgress?: ProgressCallback;
}

type Kernel = (...args: number[]) => void;

const PAGE = 65536;
const MAX_PAGES = 65536;
const align = (bytes: number) => Math.ceil(bytes / 64) * 64;

/** Control block shared with workers (Int32 slots). */
const CONTROL = { generation: 0, done: 1, command: 2, kernel: 3, argCount: 4, rangeArg: 5, scratchArg: 6, scratchStride: 7, sumsqArg: 8, sumsqStride: 9, threads: 10, args: 16 } as const;
const COMMAND_RUN = 1;
const COMMAND_STOP = 2;
const CONTROL_INTS = 32;

/**
 * The worker's whole program, sent as source text: it instantiates the shared module,
 * then waits on the control block for a task, runs its slice of the pixel range, and
 * counts itself done. It must not reference anything outside its own body.
 */
function workerMain(port: { on?: (event: string, handler: (data: unknown) => void) => void; onmessage?: unknown }) {
  const start = (data: { module: WebAssembly.Module; memory: WebAssembly.Memory; control: SharedArrayBuffer; exports: string[]; tid: number }) => {
    const instance = new WebAssembly.Instance(data.module, { env: { memory: data.memory } });
    const kernels = data.exports.map((name) => instance.exports[name] as (...args: number[]) => void);
    const control = new Int32Array(data.control);
    let generation = 0;
    for (;;) {
      // Spin up to 0.2 ms before sleeping: the next kernel usually follows within microseconds,
      // and waking a sleeping thread costs far more (notably on virtual machines).
      const spinUntil = performance.now() + 0.2;
      while (Atomics.load(control, 0) === generation && performance.now() < spinUntil);
      Atomics.wait(control, 0, generation);
      generation = Atomics.load(control, 0);
      if (control[2] === 2) return;
      const args: number[] = [];
      for (let i = 0; i < control[4]; i++) args.push(control[16 + i]);
      const threads = control[10];
      const rangeArg = control[5];
      const first = args[rangeArg];
      const count = args[rangeArg + 1] - first;
      args[rangeArg] = first + Math.floor((count * data.tid) / threads);
      args[rangeArg + 1] = first + Math.floor((count * (data.tid + 1)) / threads);
      if (control[6] >= 0) args[control[6]] += data.tid * control[7];
      if (control[8] >= 0) args[control[8]] += data.tid * control[9];
      if (args[rangeArg + 1] > args[rangeArg]) kernels[control[3]](...args);
      if (Atomics.add(control, 1, 1) + 1 === threads - 1) Atomics.notify(control, 1);
    }
  };
  if (typeof port.on === 'function') port.on('message', (data) => start(data as Parameters<typeof start>[0]));
  else port.onmessage = (event: { data: unknown }) => start(event.data as Parameters<typeof start>[0]);
}

interface WorkerHandle { post(message: unknown): void; terminate(): void }

const globals = globalThis as unknown as {
  process?: { versions?: { node?: string } };
  crossOriginIsolated?: boolean;
  Worker?: new (url: string) => { postMessage(message: unknown): void; terminate(): void };
  Blob?: typeof Blob;
  URL: typeof URL;
};
const isNode = typeof globals.process?.versions?.node === 'string';
/** Atomics.waitAsync (ES2024; Chrome has it, older engines do not). */
const waitAsync = (Atomics as unknown as { waitAsync?: (a: Int32Array, i: number, v: number, t: number) => { value: Promise<unknown> | string } }).waitAsync;

async function spawnWorker(): Promise<WorkerHandle> {
  if (isNode) {
    const { Worker } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as {
      Worker: new (source: string, options: { eval: boolean }) => { postMessage(m: unknown): void; terminate(): Promise<number>; unref(): void };
    };
    const worker = new Worker(`(${workerMain.toString()})(require('node:worker_threads').parentPort)`, { eval: true });
    worker.unref(); // a forgotten dispose() must not keep the process alive
    return { post: (m) => worker.postMessage(m), terminate: () => void worker.terminate() };
  }
  const url = globals.URL.createObjectURL(new globals.Blob!([`(${workerMain.toString()})(self)`], { type: 'text/javascript' }));
  const worker = new globals.Worker!(url);
  return { post: (m) => worker.postMessage(m), terminate: () => worker.terminate() };
}

/** Why threads cannot be used here, or undefined when they can. */
function threadsUnavailable(): string | undefined {
  if (typeof SharedArrayBuffer === 'undefined') return 'SharedArrayBuffer is unavailable (serve the page cross-origin isolated: COOP same-origin + COEP require-corp)';
  if (!isNode && globals.crossOriginIsolated === false) return 'the page is not cross-origin isolated (COOP same-origin + COEP require-corp)';
  if (!isNode && typeof globals.Worker !== 'function') return 'Web Workers are unavailable';
  return undefined;
}

export async function createWasmBackend(
  manifest: ModelManifest,
  info: WasmKernelInfo,
  loadBinary: WasmBinaryLoader,
  weightsSource: ByteSource,
  options: WasmBackendOptions = {},
): Promise<Backend> {
  if (info.steps.length !== manifest.steps.length) {
    throw new Error(`cxc: WASM dispatch list has ${info.steps.length} entries for ${manifest.steps.length} plan steps (corrupt module)`);
  }
  const requested = options.threads ?? 1;
  if (!Number.isInteger(requested) || requested < 1 || requested > 256) throw new RangeError(`cxc: threads must be an integer from 1 to 256, got ${String(requested)}`);
  const noThreads = requested > 1 ? threadsUnavailable() : undefined;
  if (noThreads) console.warn(`cxc: running on 1 thread instead of ${requested}: ${noThreads}`);
  const threads = noThreads ? 1 : requested;
  const shared = threads > 1;

  // Typed arrays over ArrayBufferLike are what file reads return; WebAssembly's typings want ArrayBuffer.
  let bytes = (await loadBinary(shared ? 'relaxed-shared' : 'relaxed')) as Uint8Array<ArrayBuffer>;
  const useRelaxed = options.relaxedSimd !== false && WebAssembly.validate(bytes);
  if (!useRelaxed) {
    bytes = (await loadBinary(shared ? 'simd-shared' : 'simd')) as Uint8Array<ArrayBuffer>;
    if (!WebAssembly.validate(bytes)) {
      throw new Error('cxc: this JavaScript engine has no WebAssembly SIMD128 support (Node >= 16.4, Chrome >= 91, Firefox >= 89, Safari >= 16.4 have it)');
    }
  }
  const module = await WebAssembly.compile(bytes);
  const weightBytes = manifest.weights.floats * 4;
  const arenaBase = align(info.weightsBase + weightBytes);
  // A float16 weights file is staged in the (not yet used) arena, then widened into place.
  const fileBytes = manifest.weights.dtype === 'f16' ? manifest.weights.floats * 2 : weightBytes;
  const fileAt = manifest.weights.dtype === 'f16' ? arenaBase : info.weightsBase;
  // The warm-up run (below) gets its own small arena past the file, so it never writes the bytes
  // being read, and the memory is big enough for it from the start: growing it would detach the
  // view the reads are filling. It reads its weights from the start of the file, once enough of
  // the file is in for the largest weight group (any bytes will do: its results are discarded).
  const warmUpSize = manifest.minInputSize;
  const warmUpBase = align(Math.max(arenaBase, fileAt + fileBytes));
  const warmUpArena = planArena(warmUpBase, 1, warmUpSize, warmUpSize, warmUpSize * warmUpSize * manifest.numChannels * 4, 1);
  const groupOffsets = [...new Set(manifest.steps.flatMap((step) => ('weights' in step ? [step.weights] : [])))].sort((x, y) => x - y);
  const largestGroupBytes = Math.max(0, ...groupOffsets.map((offset, i) => ((groupOffsets[i + 1] ?? manifest.weights.floats) - offset) * 4));
  const initialPages = Math.max(Math.ceil((fileAt + Math.max(fileBytes, largestGroupBytes)) / PAGE) + 1, Math.ceil(warmUpArena.end / PAGE));
  if (initialPages > MAX_PAGES) {
    throw new Error(`cxc: this model's weights (${(fileBytes / 2 ** 30).toFixed(2)} GiB) and its smallest run need ${(initialPages * PAGE / 2 ** 30).toFixed(2)} GiB, over WebAssembly's 4 GiB memory; use --target webgpu`);
  }
  const memory = new WebAssembly.Memory({ initial: initialPages, maximum: MAX_PAGES, shared });
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const kernels = instance.exports as Record<string, Kernel>;
  // Before the read: the warm-up during it calls these.
  const exportNames = [...new Set(info.steps.flatMap((s) => s.exports))];
  for (const name of exportNames) {
    if (typeof kernels[name] !== 'function') throw new Error(`cxc: WASM module lacks kernel ${name} (corrupt module)`);
  }
  // The weights file is read straight into linear memory and checksummed there, four lanes at a
  // time, chunk by chunk as the reads complete. The lanes live at address 0 (the first page holds no tensor).
  const fileView = new Uint8Array(memory.buffer, fileAt, fileBytes);
  new Int32Array(memory.buffer, 0, 4).set(laneSeeds());
  let checksummed = 0;
  const checksumUpTo = (upTo: number) => {
    const whole = Math.min(upTo, fileBytes);
    const end = whole - (whole % 16); // not `& ~15`, which wraps offsets past 2 GiB
    if (end > checksummed) kernels.checksum_lanes(fileAt + checksummed, (end - checksummed) >>> 4, 0);
    checksummed = Math.max(checksummed, end);
  };
  // While the rest of the weights streams in (page faults and copies on other threads), every
  // kernel runs once on a smallest-size image: the engine's optimizing tier then compiles them in
  // the background, and the first real run is not paid at baseline-tier speed.
  let warmedUp = false;
  const warmUp = async () => {
    warmedUp = true;
    await runWith(warmUpArena, () => fileAt, new Float32Array(manifest.numChannels * warmUpSize * warmUpSize), 1, warmUpSize, warmUpSize, false, true);
  };
  await loadWeights(weightsSource, manifest, options.onProgress, {
    into: fileView,
    arrived: (upTo) => {
      checksumUpTo(upTo);
      if (!warmedUp && upTo >= Math.min(fileBytes, largestGroupBytes)) return warmUp();
      return undefined;
    },
    checksum: () => {
      checksumUpTo(fileBytes);
      return finishChecksum(new Int32Array(memory.buffer, 0, 4), fileView.subarray(checksummed), fileBytes);
    },
  });
  if (manifest.weights.dtype === 'f16') kernels.f16_to_f32(fileAt, info.weightsBase, manifest.weights.floats);

  /** Where a run on `threadCount` threads puts its tensors, from `base` up: input, two ping-pong activation buffers, per-thread scratch and GRN sums, head outputs. */
  function planArena(base: number, batch: number, height: number, width: number, inputBytes: number, threadCount: number) {
    const levels = levelSizes(manifest, height, width);
    const levelImageBytes = levels.map((l, i) => l.height * l.width * manifest.levels[i].padded * 4);
    const activationBytes = align(batch * Math.max(...levelImageBytes));
    const maxPixels = Math.max(...levels.map((l) => l.height * l.width));
    const lastChannels = manifest.levels[levels.length - 1].padded;
    const labelsPadded = Math.ceil(manifest.numLabels / 8) * 8;
    let cursor = base;
    const take = (bytes: number) => {
      const at = cursor;
      cursor += align(bytes);
      return at;
    };
    const buffers: Record<string, number> = {
      input: take(inputBytes),
      a: take(activationBytes),
      b: take(activationBytes),
      pooled: take(batch * lastChannels * 4),
      logits: take(batch * labelsPadded * 4),
    };
    const scratchStride = align(info.scratchBytes);
    const scratch = take(scratchStride * threadCount);
    const mid = take(maxPixels * info.midFloats * 4);
    const sumsqStride = align(info.hiddenFloats * 4);
    const sumsq = take(sumsqStride * threadCount);
    const scale = take(info.hiddenFloats * 4);
    const featureTemp = take(Math.max(...levelImageBytes));
    return { threads: threadCount, levels, levelImageBytes, buffers, scratch, scratchStride, mid, sumsq, sumsqStride, scale, featureTemp, end: cursor };
  }
  type Arena = ReturnType<typeof planArena>;

  // Workers: tids 1..threads-1; the calling thread is tid 0.
  const control = shared ? new Int32Array(new SharedArrayBuffer(CONTROL_INTS * 4)) : undefined;
  const workers: WorkerHandle[] = [];
  for (let tid = 1; tid < threads; tid++) {
    const worker = await spawnWorker();
    worker.post({ module, memory, control: control!.buffer, exports: exportNames, tid });
    workers.push(worker);
  }
  const canBlock = isNode; // browsers forbid Atomics.wait on the main thread
  let disposed = false;
  let busy = false;

  /** Runs kernel(args) with args[rangeArg..rangeArg+1] = [p0, p1) split across every thread (or on this one alone). */
  async function parallel(threadCount: number, name: string, args: number[], rangeArg: number, scratchArg = -1, scratchStride = 0, sumsqArg = -1, sumsqStride = 0): Promise<void> {
    const kernel = kernels[name];
    if (threadCount === 1) {
      kernel(...args);
      return;
    }
    const c = control!;
    c[CONTROL.command] = COMMAND_RUN;
    c[CONTROL.kernel] = exportNames.indexOf(name);
    c[CONTROL.argCount] = args.length;
    c[CONTROL.rangeArg] = rangeArg;
    c[CONTROL.scratchArg] = scratchArg;
    c[CONTROL.scratchStride] = scratchStride;
    c[CONTROL.sumsqArg] = sumsqArg;
    c[CONTROL.sumsqStride] = sumsqStride;
    c[CONTROL.threads] = threads;
    args.forEach((value, i) => (c[CONTROL.args + i] = value));
    Atomics.store(c, CONTROL.done, 0);
    Atomics.add(c, CONTROL.generation, 1);
    Atomics.notify(c, CONTROL.generation);
    // The calling thread takes slice 0.
    const first = args[rangeArg];
    const count = args[rangeArg + 1] - first;
    const own = [...args];
    own[rangeArg + 1] = first + Math.floor(count / threads);
    if (own[rangeArg + 1] > own[rangeArg]) kernel(...own);
    // The workers' slices end about when this one does: spin a little before sleeping (as they do).
    const spinUntil = performance.now() + 1;
    while (Atomics.load(c, CONTROL.done) !== threads - 1 && performance.now() < spinUntil);
    for (;;) {
      const done = Atomics.load(c, CONTROL.done);
      if (done === threads - 1) break;
      if (canBlock) Atomics.wait(c, CONTROL.done, done, 1000);
      else if (typeof waitAsync === 'function') await waitAsync(c, CONTROL.done, done, 1000).value;
      else await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  async function run(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    if (disposed) throw new Error('cxc: this model was disposed; call load() again');
    // One run at a time: the arena is shared by every step.
    while (busy) await new Promise((resolve) => setTimeout(resolve, 0));
    busy = true;
    try {
      return await runLocked(input, batch, height, width, withHiddenStates);
    } finally {
      busy = false;
    }
  }

  async function runLocked(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    const arena = planArena(arenaBase, batch, height, width, input.byteLength, threads);
    const needed = Math.ceil(arena.end / PAGE);
    if (needed > MAX_PAGES) {
      throw new Error(`cxc: batch ${batch} at ${height}x${width} needs ${(arena.end / 2 ** 30).toFixed(1)} GiB, over WebAssembly's 4 GiB; use a smaller batch or input size`);
    }
    const have = memory.buffer.byteLength / PAGE;
    if (needed > have) memory.grow(needed - have);
    return runWith(arena, (offset) => info.weightsBase + offset * 4, input, batch, height, width, withHiddenStates);
  }

  /** Runs the dispatch list with the arena laid out at `arena` (the memory already holds it), weight group `offset` at weightsAt(offset). */
  async function runWith(arena: Arena, weightsAt: (offset: number) => number, input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean, warmingUp = false): Promise<RawOutputs> {
    const { threads: threadCount, buffers, levels, levelImageBytes, scratch, scratchStride, mid, sumsq, sumsqStride, scale, featureTemp } = arena;
    new Float32Array(memory.buffer, buffers.input, input.length).set(input);

    const outputs: RawOutputs = new Map();
    const ran = new Set<string>();
    for (let index = 0; index < manifest.steps.length; index++) {
      const names = info.steps[index].exports;
      // Warming up, a step whose kernels all ran already (the later blocks of a stage) adds nothing.
      if (warmingUp && names.length > 0 && names.every((name) => ran.has(name))) continue;
      await runStep(manifest.steps[index], names);
      for (const name of names) ran.add(name);
    }
    return outputs;

    async function runStep(step: PlanStep, names: string[]): Promise<void> {
      switch (step.op) {
        case 'stem': {
          const { height: h, width: w } = levels[0];
          const imageIn = manifest.numChannels * height * width * 4;
          for (let b = 0; b < batch; b++) {
            await parallel(threadCount, names[0], [buffers.input + b * imageIn, buffers[step.dst] + b * levelImageBytes[0], height, width, 0, h * w, weightsAt(step.weights)], 4);
          }
          break;
        }
        case 'downsample': {
          const from = levels[step.level - 1];
          const to = levels[step.level];
          for (let b = 0; b < batch; b++) {
            await parallel(threadCount, names[0], [buffers[step.src] + b * levelImageBytes[step.level - 1], buffers[step.dst] + b * levelImageBytes[step.level],
              from.height, from.width, 0, to.height * to.width, weightsAt(step.weights), scratch], 4, 7, scratchStride);
          }
          break;
        }
        case 'block': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          const weightsBase = weightsAt(step.weights);
          if (!step.grn) {
            // Images lie one after another, and the kernel numbers pixels across them: one call
            // (one split between threads) covers the whole batch.
            await parallel(threadCount, names[0], [buffers[step.src], buffers[step.dst], h, w, 0, batch * h * w, weightsBase, scratch], 4, 7, scratchStride);
            break;
          }
          for (let b = 0; b < batch; b++) {
            const src = buffers[step.src] + b * stride;
            const dst = buffers[step.dst] + b * stride;
            // GRN needs the whole image's statistics between the two halves of the block.
            new Float32Array(memory.buffer, sumsq, (sumsqStride / 4) * threadCount).fill(0);
            await parallel(threadCount, names[0], [src, mid, h, w, 0, h * w, weightsBase, scratch, sumsq], 4, 7, scratchStride, 8, sumsqStride);
            if (threadCount > 1) {
              const sums = new Float32Array(memory.buffer, sumsq, (sumsqStride / 4) * threadCount);
              for (let t = 1; t < threadCount; t++) {
                for (let i = 0; i < info.hiddenFloats; i++) sums[i] += sums[t * (sumsqStride / 4) + i];
              }
            }
            kernels[names[1]](sumsq, scale, weightsBase);
            await parallel(threadCount, names[2], [src, dst, mid, 0, h * w, weightsBase, scratch, scale], 3, 6, scratchStride);
          }
          break;
        }
        case 'output': {
          if (step.onlyWithHiddenStates && !withHiddenStates) break;
          outputs.set(step.name, toNchw(buffers[step.src], step.level, step.channels.real, step.channels.padded));
          break;
        }
        case 'featureMap': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          const data = new Float32Array(batch * step.channels.real * h * w);
          for (let b = 0; b < batch; b++) {
            kernels[names[0]](buffers[step.src] + b * stride, featureTemp, h * w, weightsAt(step.weights));
            const image = toNchw(featureTemp, step.level, step.channels.real, step.channels.padded, 1);
            data.set(image.data, b * image.data.length);
          }
          outputs.set(step.name, { data, shape: [batch, step.channels.real, h, w] });
          break;
        }
        case 'pool': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          for (let b = 0; b < batch; b++) {
            kernels[names[0]](buffers[step.src] + b * stride, buffers.pooled + b * step.channels.padded * 4, h * w, weightsAt(step.weights));
          }
          outputs.set('pooler_output', rows(buffers.pooled, step.channels.real, step.channels.padded));
          break;
        }
        case 'classifier': {
          for (let b = 0; b < batch; b++) {
            kernels[names[0]](buffers.pooled + b * step.in.padded * 4, buffers.logits + b * step.labels.padded * 4, weightsAt(step.weights));
          }
          outputs.set('logits', rows(buffers.logits, step.labels.real, step.labels.padded));
          break;
        }
      }
    }

    /** [batch][real] from rows of `stride` floats. */
    function rows(address: number, real: number, stride: number) {
      const source = new Float32Array(memory.buffer, address, batch * stride);
      const data = new Float32Array(batch * real);
      for (let b = 0; b < batch; b++) data.set(source.subarray(b * stride, b * stride + real), b * real);
      return { data, shape: [batch, real] };
    }

    /** NHWC (padded channels) -> NCHW (real channels). */
    function toNchw(address: number, level: number, real: number, stride: number, images = batch) {
      const { height: h, width: w } = levels[level];
      const pixels = h * w;
      const source = new Float32Array(memory.buffer, address, images * pixels * stride);
      const data = new Float32Array(images * real * pixels);
      for (let b = 0; b < images; b++) {
        for (let p = 0; p < pixels; p++) {
          const from = (b * pixels + p) * stride;
          const to = b * real * pixels + p;
          for (let c = 0; c < real; c++) data[to + c * pixels] = source[from + c];
        }
      }
      return { data, shape: [images, real, h, w] };
    }
  }

  return {
    name: 'wasm',
    description: `WASM ${useRelaxed ? 'relaxed SIMD (FMA)' : 'SIMD128'}, ${threads} thread${threads > 1 ? 's' : ''}${noThreads ? ` (${requested} requested: ${noThreads})` : ''}`,
    run,
    dispose() {
      if (disposed) return;
      disposed = true;
      if (control) {
        control[CONTROL.command] = COMMAND_STOP;
        Atomics.add(control, CONTROL.generation, 1);
        Atomics.notify(control, CONTROL.generation);
      }
      for (const worker of workers) worker.terminate();
    },
  };
}
