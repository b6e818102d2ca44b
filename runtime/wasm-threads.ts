/**
 * WASM threads: workers that share the module's memory and run slices of a kernel call's pixel
 * range. The calling thread posts a call into a shared control block (layout below, sent to each
 * worker with its start message, so the two sides share one definition) and takes slice 0 itself.
 */

/** Int32 slots of the control block shared with workers. */
export const CONTROL = {
  generation: 0, done: 1, command: 2, kernel: 3, argCount: 4, rangeArg: 5, threads: 6,
  /** Arguments that point at per-thread buffers: count, then (argument index, byte stride) pairs. */
  perThreadCount: 7, perThread: 8,
  args: 16,
} as const;
const MAX_PER_THREAD_ARGS = (CONTROL.args - CONTROL.perThread) / 2;
const MAX_ARGS = 16;
const CONTROL_INTS = CONTROL.args + MAX_ARGS;
const COMMANDS = { run: 1, stop: 2 } as const;

/** A call as the threads see it: a kernel (by index), its arguments, and what each thread shifts. */
export interface ThreadedCall {
  kernel: number;
  args: number[];
  /** Index of the range's start; its end is the next argument. */
  rangeArg: number;
  /** Arguments that each thread moves to its own copy: index and byte stride per thread. */
  perThread: Array<[number, number]>;
}

interface StartMessage {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  control: SharedArrayBuffer;
  exports: string[];
  tid: number;
  layout: typeof CONTROL;
  commands: typeof COMMANDS;
}

/**
 * The worker's whole program, sent as source text: it instantiates the shared module, then
 * waits on the control block for a call, runs its slice of the pixel range, and counts itself
 * done. It must not reference anything outside its own body.
 */
function workerMain(port: { on?: (event: string, handler: (data: unknown) => void) => void; onmessage?: unknown }) {
  const start = (data: StartMessage) => {
    const instance = new WebAssembly.Instance(data.module, { env: { memory: data.memory } });
    const kernels = data.exports.map((name) => instance.exports[name] as (...args: number[]) => void);
    const control = new Int32Array(data.control);
    const slot = data.layout;
    let generation = 0;
    for (;;) {
      // Spin up to 0.2 ms before sleeping: the next kernel usually follows within microseconds,
      // and waking a sleeping thread costs far more (notably on virtual machines).
      const spinUntil = performance.now() + 0.2;
      while (Atomics.load(control, slot.generation) === generation && performance.now() < spinUntil);
      Atomics.wait(control, slot.generation, generation);
      generation = Atomics.load(control, slot.generation);
      if (control[slot.command] === data.commands.stop) return;
      const args: number[] = [];
      for (let i = 0; i < control[slot.argCount]; i++) args.push(control[slot.args + i]);
      const threads = control[slot.threads];
      const rangeArg = control[slot.rangeArg];
      const first = args[rangeArg];
      const count = args[rangeArg + 1] - first;
      args[rangeArg] = first + Math.floor((count * data.tid) / threads);
      args[rangeArg + 1] = first + Math.floor((count * (data.tid + 1)) / threads);
      for (let i = 0; i < control[slot.perThreadCount]; i++) {
        args[control[slot.perThread + 2 * i]] += data.tid * control[slot.perThread + 2 * i + 1];
      }
      if (args[rangeArg + 1] > args[rangeArg]) kernels[control[slot.kernel]](...args);
      if (Atomics.add(control, slot.done, 1) + 1 === threads - 1) Atomics.notify(control, slot.done);
    }
  };
  if (typeof port.on === 'function') port.on('message', (data) => start(data as StartMessage));
  else port.onmessage = (event: { data: unknown }) => start(event.data as StartMessage);
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
export function threadsUnavailable(): string | undefined {
  if (typeof SharedArrayBuffer === 'undefined') return 'SharedArrayBuffer is unavailable (serve the page cross-origin isolated: COOP same-origin + COEP require-corp)';
  if (!isNode && globals.crossOriginIsolated === false) return 'the page is not cross-origin isolated (COOP same-origin + COEP require-corp)';
  if (!isNode && typeof globals.Worker !== 'function') return 'Web Workers are unavailable';
  return undefined;
}

export interface ThreadPool {
  /** Runs the call with its range split across every thread; this thread takes slice 0. */
  run(call: ThreadedCall, kernel: (...args: number[]) => void): Promise<void>;
  stop(): void;
}

/** Starts `threads - 1` workers on the shared module and memory (tids 1..threads-1). */
export async function startThreadPool(threads: number, module: WebAssembly.Module, memory: WebAssembly.Memory, exports: string[]): Promise<ThreadPool> {
  const control = new Int32Array(new SharedArrayBuffer(CONTROL_INTS * 4));
  const workers: WorkerHandle[] = [];
  for (let tid = 1; tid < threads; tid++) {
    const worker = await spawnWorker();
    const message: StartMessage = { module, memory, control: control.buffer as SharedArrayBuffer, exports, tid, layout: CONTROL, commands: COMMANDS };
    worker.post(message);
    workers.push(worker);
  }
  const canBlock = isNode; // browsers forbid Atomics.wait on the main thread

  async function run(call: ThreadedCall, kernel: (...args: number[]) => void): Promise<void> {
    const { args, rangeArg, perThread } = call;
    if (args.length > MAX_ARGS || perThread.length > MAX_PER_THREAD_ARGS) throw new Error(`cxc: internal: a kernel call has too many arguments for the thread control block`);
    control[CONTROL.command] = COMMANDS.run;
    control[CONTROL.kernel] = call.kernel;
    control[CONTROL.argCount] = args.length;
    control[CONTROL.rangeArg] = rangeArg;
    control[CONTROL.threads] = threads;
    control[CONTROL.perThreadCount] = perThread.length;
    perThread.forEach(([index, stride], i) => {
      control[CONTROL.perThread + 2 * i] = index;
      control[CONTROL.perThread + 2 * i + 1] = stride;
    });
    args.forEach((value, i) => (control[CONTROL.args + i] = value));
    Atomics.store(control, CONTROL.done, 0);
    Atomics.add(control, CONTROL.generation, 1);
    Atomics.notify(control, CONTROL.generation);
    // The calling thread takes slice 0 (per-thread buffers: its own are the first copies).
    const first = args[rangeArg];
    const own = [...args];
    own[rangeArg + 1] = first + Math.floor((args[rangeArg + 1] - first) / threads);
    if (own[rangeArg + 1] > own[rangeArg]) kernel(...own);
    // The workers' slices end about when this one does: spin a little before sleeping (as they do).
    const spinUntil = performance.now() + 1;
    while (Atomics.load(control, CONTROL.done) !== threads - 1 && performance.now() < spinUntil);
    for (;;) {
      const done = Atomics.load(control, CONTROL.done);
      if (done === threads - 1) break;
      if (canBlock) Atomics.wait(control, CONTROL.done, done, 1000);
      else if (typeof waitAsync === 'function') await waitAsync(control, CONTROL.done, done, 1000).value;
      else await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  return {
    run,
    stop() {
      control[CONTROL.command] = COMMANDS.stop;
      Atomics.add(control, CONTROL.generation, 1);
      Atomics.notify(control, CONTROL.generation);
      for (const worker of workers) worker.terminate();
    },
  };
}
