/**
 * The WASM backend: one linear memory holds the weights (at the offsets baked into the kernels
 * and the dispatch list) and an arena of buffers laid out per run. It walks the dispatch list
 * the compiler wrote (wasm-program.ts): every call's arguments are resolved from their roles, so
 * this file knows no kernel's argument order. With threads, a call's pixel range is split
 * between the calling thread and workers that share the memory (wasm-threads.ts).
 */
import { loadWeights, type ByteSource, type ProgressCallback } from './assets.js';
import { finishChecksum, laneSeeds } from './checksum.js';
import { levelSizes, type Size } from './shapes.js';
import { kernelNames, type WasmArg, type WasmBufferSpec, type WasmKernelInfo, type WasmLevel, type WasmOp, type WasmStep } from './wasm-program.js';
import { startThreadPool, threadsUnavailable, type ThreadPool } from './wasm-threads.js';
import type { Backend, ModelManifest, RawOutputs } from './types.js';

export type { WasmKernelInfo } from './wasm-program.js';

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

/** Where one run's buffers live: byte address of each, the stride between per-thread copies, and the end. */
export interface Arena {
  threads: number;
  batch: number;
  input: Size;
  levels: Size[];
  at: Map<string, number>;
  threadStride: Map<string, number>;
  end: number;
}

/** Lays out every buffer of the dispatch list from `base` up, for a run of this shape. Exported for the kernel tests. */
export function planArena(buffers: WasmBufferSpec[], manifest: Pick<ModelManifest, 'patchSize' | 'hiddenSizes'>, base: number, batch: number, input: Size, threads: number): Arena {
  const levels = levelSizes(manifest, input.height, input.width);
  const pixels = (level: WasmLevel) => (level === 'input' ? input : levels[level]);
  const arena: Arena = { threads, batch, input, levels, at: new Map(), threadStride: new Map(), end: base };
  for (const buffer of buffers) {
    const perImage = Math.max(0, ...buffer.perPixel.map(({ level, floats }) => pixels(level).height * pixels(level).width * floats)) + buffer.perImage;
    const bytes = align(perImage * 4 * (buffer.images === 'batch' ? batch : 1));
    arena.at.set(buffer.name, arena.end);
    if (buffer.perThread) arena.threadStride.set(buffer.name, bytes);
    arena.end += buffer.perThread ? bytes * threads : bytes;
  }
  return arena;
}

/** Picks the relaxed-SIMD build where the engine validates it (and it is wanted), else plain SIMD128. */
async function compileKernels(loadBinary: WasmBinaryLoader, shared: boolean, wantRelaxed: boolean) {
  // Typed arrays over ArrayBufferLike are what file reads return; WebAssembly's typings want ArrayBuffer.
  let bytes = (await loadBinary(shared ? 'relaxed-shared' : 'relaxed')) as Uint8Array<ArrayBuffer>;
  const relaxed = wantRelaxed && WebAssembly.validate(bytes);
  if (!relaxed) {
    bytes = (await loadBinary(shared ? 'simd-shared' : 'simd')) as Uint8Array<ArrayBuffer>;
    if (!WebAssembly.validate(bytes)) {
      throw new Error('cxc: this JavaScript engine has no WebAssembly SIMD128 support (Node >= 16.4, Chrome >= 91, Firefox >= 89, Safari >= 16.4 have it)');
    }
  }
  return { module: await WebAssembly.compile(bytes), relaxed };
}

function requestedThreads(options: WasmBackendOptions): { threads: number; requested: number; noThreads?: string } {
  const requested = options.threads ?? 1;
  if (!Number.isInteger(requested) || requested < 1 || requested > 256) throw new RangeError(`cxc: threads must be an integer from 1 to 256, got ${String(requested)}`);
  const noThreads = requested > 1 ? threadsUnavailable() : undefined;
  if (noThreads) console.warn(`cxc: running on 1 thread instead of ${requested}: ${noThreads}`);
  return { threads: noThreads ? 1 : requested, requested, noThreads };
}

/** The run state the executor resolves arguments against. */
export interface RunContext {
  memory: WebAssembly.Memory;
  kernels: Record<string, Kernel>;
  kernelIndex: Map<string, number>;
  pool?: ThreadPool;
  arena: Arena;
  /** Address of a weight group (its float offset in the weights). */
  weightsAt: (offset: number) => number;
  outputs: RawOutputs;
}

/** An argument's value for the current image (null: the step's whole-batch ops). */
function resolveArg(arg: WasmArg, ctx: RunContext, image: number | null): number {
  const { arena } = ctx;
  const size = (level: WasmLevel) => (level === 'input' ? arena.input : arena.levels[level]);
  switch (arg.kind) {
    case 'buffer': {
      const at = arena.at.get(arg.buffer);
      if (at === undefined) throw new Error(`cxc: internal: the dispatch list names buffer ${arg.buffer}, which the arena lacks (corrupt module)`);
      if (image === null || !arg.imageStride) return at;
      const { level, floats } = arg.imageStride;
      const pixels = level === null ? 1 : size(level).height * size(level).width;
      return at + image * pixels * floats * 4;
    }
    case 'weights': return ctx.weightsAt(arg.offset);
    case 'height': return size(arg.level).height;
    case 'width': return size(arg.level).width;
    case 'pixels': return size(arg.level).height * size(arg.level).width * (arg.wholeBatch ? arena.batch : 1);
    case 'rangeStart': return 0;
  }
}

async function execute(op: WasmOp, ctx: RunContext, image: number | null): Promise<void> {
  const { arena, memory } = ctx;
  switch (op.op) {
    case 'call': {
      const args = op.args.map((arg) => resolveArg(arg, ctx, image));
      const kernel = ctx.kernels[op.kernel];
      if (!op.split || arena.threads === 1 || !ctx.pool) return kernel(...args);
      const perThread = op.args.flatMap((arg, i): Array<[number, number]> =>
        (arg.kind === 'buffer' && arena.threadStride.has(arg.buffer) ? [[i, arena.threadStride.get(arg.buffer)!]] : []));
      return ctx.pool.run({ kernel: ctx.kernelIndex.get(op.kernel)!, args, rangeArg: op.args.findIndex((a) => a.kind === 'rangeStart'), perThread }, kernel);
    }
    case 'clear': {
      const stride = arena.threadStride.get(op.buffer);
      const bytes = stride === undefined ? 0 : stride * arena.threads;
      new Uint8Array(memory.buffer, arena.at.get(op.buffer)!, bytes).fill(0);
      return;
    }
    case 'sumThreads': {
      const stride = arena.threadStride.get(op.buffer)! / 4;
      const sums = new Float32Array(memory.buffer, arena.at.get(op.buffer)!, stride * arena.threads);
      for (let t = 1; t < arena.threads; t++) for (let i = 0; i < op.floats; i++) sums[i] += sums[t * stride + i];
      return;
    }
    case 'readNchw': return readNchw(op, ctx, image);
    case 'readRows': {
      const { real, padded } = op.channels;
      const source = new Float32Array(memory.buffer, arena.at.get(op.buffer)!, arena.batch * padded);
      const data = new Float32Array(arena.batch * real);
      for (let b = 0; b < arena.batch; b++) data.set(source.subarray(b * padded, b * padded + real), b * real);
      ctx.outputs.set(op.output, { data, shape: [arena.batch, real] });
    }
  }
}

/** NHWC (padded channels) -> NCHW (real channels): every image, or the current one into its slot. */
function readNchw(op: Extract<WasmOp, { op: 'readNchw' }>, ctx: RunContext, image: number | null): void {
  const { height: h, width: w } = ctx.arena.levels[op.level];
  const { real, padded } = op.channels;
  const pixels = h * w;
  const images = image === null ? ctx.arena.batch : 1;
  const source = new Float32Array(ctx.memory.buffer, ctx.arena.at.get(op.buffer)!, images * pixels * padded);
  let output = ctx.outputs.get(op.output);
  if (!output) ctx.outputs.set(op.output, (output = { data: new Float32Array(ctx.arena.batch * real * pixels), shape: [ctx.arena.batch, real, h, w] }));
  for (let i = 0; i < images; i++) {
    const b = image ?? i;
    for (let p = 0; p < pixels; p++) {
      const from = (i * pixels + p) * padded;
      const to = b * real * pixels + p;
      for (let c = 0; c < real; c++) output.data[to + c * pixels] = source[from + c];
    }
  }
}

/** Runs the dispatch list; warming up, steps whose kernels all ran already are skipped. */
export async function runSteps(steps: WasmStep[], ctx: RunContext, withHiddenStates: boolean, warmingUp: boolean): Promise<RawOutputs> {
  const ran = new Set<string>();
  for (const step of steps) {
    if (step.onlyWithHiddenStates && !withHiddenStates) continue;
    const calls = [...step.eachImage, ...step.wholeBatch].flatMap((op) => (op.op === 'call' ? [op.kernel] : []));
    if (warmingUp && calls.length > 0 && calls.every((name) => ran.has(name))) continue;
    for (let b = 0; b < ctx.arena.batch && step.eachImage.length > 0; b++) {
      for (const op of step.eachImage) await execute(op, ctx, b);
    }
    for (const op of step.wholeBatch) await execute(op, ctx, null);
    for (const name of calls) ran.add(name);
  }
  return ctx.outputs;
}

export async function createWasmBackend(
  manifest: ModelManifest,
  info: WasmKernelInfo,
  loadBinary: WasmBinaryLoader,
  weightsSource: ByteSource,
  options: WasmBackendOptions = {},
): Promise<Backend> {
  const { threads, requested, noThreads } = requestedThreads(options);
  const shared = threads > 1;
  const { module, relaxed } = await compileKernels(loadBinary, shared, options.relaxedSimd !== false);
  const weightBytes = manifest.weights.floats * 4;
  const arenaBase = align(info.weightsBase + weightBytes);
  const exportNames = ['checksum_lanes', 'f16_to_f32', ...kernelNames(info)];
  const { memory, kernels } = await loadWeightsInto(manifest, info, module, shared, exportNames, weightsSource, options.onProgress);
  const pool = shared ? await startThreadPool(threads, module, memory, exportNames) : undefined;
  const kernelIndex = new Map(exportNames.map((name, i) => [name, i]));
  let disposed = false;
  let busy = false;

  async function runLocked(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    const arena = planArena(info.buffers, manifest, arenaBase, batch, { height, width }, threads);
    const needed = Math.ceil(arena.end / PAGE);
    if (needed > MAX_PAGES) {
      throw new Error(`cxc: batch ${batch} at ${height}x${width} needs ${(arena.end / 2 ** 30).toFixed(1)} GiB, over WebAssembly's 4 GiB; use a smaller batch or input size`);
    }
    const have = memory.buffer.byteLength / PAGE;
    if (needed > have) memory.grow(needed - have);
    new Float32Array(memory.buffer, arena.at.get('input')!, input.length).set(input);
    const ctx: RunContext = { memory, kernels, kernelIndex, pool, arena, weightsAt: (offset) => info.weightsBase + offset * 4, outputs: new Map() };
    return runSteps(info.steps, ctx, withHiddenStates, false);
  }

  return {
    name: 'wasm',
    description: `WASM ${relaxed ? 'relaxed SIMD (FMA)' : 'SIMD128'}, ${threads} thread${threads > 1 ? 's' : ''}${noThreads ? ` (${requested} requested: ${noThreads})` : ''}`,
    async run(input, batch, height, width, withHiddenStates) {
      if (disposed) throw new Error('cxc: this model was disposed; call load() again');
      // One run at a time: the arena is shared by every step.
      while (busy) await new Promise((resolve) => setTimeout(resolve, 0));
      busy = true;
      try {
        return await runLocked(input, batch, height, width, withHiddenStates);
      } finally {
        busy = false;
      }
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      pool?.stop();
    },
  };
}

/**
 * Instantiates the kernels on a new memory and reads the weights file straight into it,
 * checksummed there four lanes at a time, chunk by chunk as the reads complete (the lanes live
 * at address 0: the first page holds no tensor). While the rest of the weights streams in,
 * every kernel runs once on a smallest-size image: the engine's optimizing tier then compiles
 * them in the background, and the first real run is not paid at baseline-tier speed.
 */
async function loadWeightsInto(
  manifest: ModelManifest, info: WasmKernelInfo, module: WebAssembly.Module, shared: boolean, exportNames: string[],
  weightsSource: ByteSource, onProgress?: ProgressCallback,
) {
  const weightBytes = manifest.weights.floats * 4;
  const arenaBase = align(info.weightsBase + weightBytes);
  // A float16 weights file is staged in the (not yet used) arena, then widened into place.
  const halves = manifest.weights.dtype === 'f16';
  const fileBytes = halves ? manifest.weights.floats * 2 : weightBytes;
  const fileAt = halves ? arenaBase : info.weightsBase;
  // The warm-up gets its own small arena past the file, so it never writes the bytes being read,
  // and the memory is big enough for it from the start: growing it would detach the view the
  // reads are filling. It reads its weights from the start of the file, once enough of the file
  // is in for the largest weight group (any bytes will do: its results are discarded).
  const warmUpSize = { height: manifest.minInputSize, width: manifest.minInputSize };
  const warmUpArena = planArena(info.buffers, manifest, align(Math.max(arenaBase, fileAt + fileBytes)), 1, warmUpSize, 1);
  const largestGroupBytes = Math.max(0, ...manifest.steps.map((step) => ('weights' in step ? step.weights.floats * 4 : 0)));
  const initialPages = Math.max(Math.ceil((fileAt + Math.max(fileBytes, largestGroupBytes)) / PAGE) + 1, Math.ceil(warmUpArena.end / PAGE));
  if (initialPages > MAX_PAGES) {
    throw new Error(`cxc: this model's weights (${(fileBytes / 2 ** 30).toFixed(2)} GiB) and its smallest run need ${(initialPages * PAGE / 2 ** 30).toFixed(2)} GiB, over WebAssembly's 4 GiB memory; use --target webgpu`);
  }
  const memory = new WebAssembly.Memory({ initial: initialPages, maximum: MAX_PAGES, shared });
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  const kernels = instance.exports as Record<string, Kernel>;
  // Before the read: the warm-up during it calls these.
  for (const name of exportNames) {
    if (typeof kernels[name] !== 'function') throw new Error(`cxc: WASM module lacks kernel ${name} (corrupt module)`);
  }
  const fileView = new Uint8Array(memory.buffer, fileAt, fileBytes);
  new Int32Array(memory.buffer, 0, 4).set(laneSeeds());
  let checksummed = 0;
  const checksumUpTo = (upTo: number) => {
    const whole = Math.min(upTo, fileBytes);
    const end = whole - (whole % 16); // not `& ~15`, which wraps offsets past 2 GiB
    if (end > checksummed) kernels.checksum_lanes(fileAt + checksummed, (end - checksummed) >>> 4, 0);
    checksummed = Math.max(checksummed, end);
  };
  let warmedUp = false;
  const warmUp = async () => {
    warmedUp = true;
    const input = new Float32Array(manifest.numChannels * warmUpSize.height * warmUpSize.width);
    new Float32Array(memory.buffer, warmUpArena.at.get('input')!, input.length).set(input);
    const ctx: RunContext = { memory, kernels, kernelIndex: new Map(), arena: warmUpArena, weightsAt: () => fileAt, outputs: new Map() };
    await runSteps(info.steps, ctx, false, true);
  };
  await loadWeights(weightsSource, manifest, onProgress, {
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
  if (halves) kernels.f16_to_f32(fileAt, info.weightsBase, manifest.weights.floats);
  return { memory, kernels };
}
