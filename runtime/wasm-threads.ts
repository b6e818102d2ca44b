/**
 * WASM threads: workers that share the module's memory and run slices of a kernel call's pixel
 * range. The calling thread posts a call into a shared control block (layout below, sent to each
 * worker with its start message, so the two sides share one definition) and takes slice 0 itself.
 */

/** Int32 slots of the control block shared with workers. */
export const CONTROL = {
  generation: 0, done: 1,
  /** 0, or the tid of a worker that failed (its module would not instantiate, or a kernel trapped). */
  failed: 2,
  command: 3, kernel: 4, argCount: 5, rangeArg: 6, threads: 7,
  /** Arguments that point at per-thread buffers: count, then (argument index, byte stride) pairs. */
  perThreadCount: 8, perThread: 9,
  args: 17,
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
 * done. If it cannot go on (the module does not instantiate, a kernel traps), it says so in the
 * control block and counts itself done, so the calling thread wakes and reports it instead of
 * waiting forever; then it posts the error's text and stops. It must not reference anything
 * outside its own body.
 */
function workerMain(port: { on?: (event: string, handler: (data: unknown) => void) => void; onmessage?: unknown; postMessage(message: unknown): void }) {
  const start = (data: StartMessage) => {
    const control = new Int32Array(data.control);
    const slot = data.layout;
    try {
      work(data, control, slot);
    } catch (error) {
      // The flag first, so the caller wakes at once; the text follows through the event loop.
      Atomics.store(control, slot.failed, data.tid);
      Atomics.add(control, slot.done, 1);
      Atomics.notify(control, slot.done);
      port.postMessage({ failed: data.tid, message: error instanceof Error ? `${error.name}: ${error.message}` : String(error) });
    }
  };
  const work = (data: StartMessage, control: Int32Array, slot: typeof CONTROL) => {
    const instance = new WebAssembly.Instance(data.module, { env: { memory: data.memory } });
    const kernels = data.exports.map((name) => instance.exports[name] as (...args: number[]) => void);
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
  Worker?: new (url: string) => {
    postMessage(message: unknown): void; terminate(): void;
    onmessage: ((event: { data: unknown }) => void) | null; onerror: ((event: { message: string }) => void) | null;
  };
  Blob?: typeof Blob;
  URL: typeof URL;
};
const isNode = typeof globals.process?.versions?.node === 'string';
/** Atomics.waitAsync (ES2024; Chrome has it, older engines do not). */
const waitAsync = (Atomics as unknown as { waitAsync?: (a: Int32Array, i: number, v: number, t: number) => { value: Promise<unknown> | string } }).waitAsync;

/**
 * A worker running workerMain. `onFailure` hears of a failure the worker posts, and of a crash or
 * an exit the pool did not ask for (its text; the event loop delivers these).
 */
async function spawnWorker(onFailure: (text: string) => void): Promise<WorkerHandle> {
  if (isNode) {
    const { Worker } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as {
      Worker: new (source: string, options: { eval: boolean }) => {
        postMessage(m: unknown): void; terminate(): Promise<number>; unref(): void; on(event: string, handler: (value: unknown) => void): void;
      };
    };
    const worker = new Worker(`(${workerMain.toString()})(require('node:worker_threads').parentPort)`, { eval: true });
    worker.unref(); // a forgotten dispose() must not keep the process alive
    worker.on('message', (m) => onFailure((m as { message: string }).message));
    worker.on('error', (error) => onFailure(`${(error as Error).name}: ${(error as Error).message}`));
    worker.on('exit', (code) => onFailure(`the thread exited with code ${String(code)}`));
    return { post: (m) => worker.postMessage(m), terminate: () => void worker.terminate() };
  }
  const url = globals.URL.createObjectURL(new globals.Blob!([`(${workerMain.toString()})(self)`], { type: 'text/javascript' }));
  const worker = new globals.Worker!(url);
  worker.onmessage = (event) => onFailure((event.data as { message: string }).message);
  worker.onerror = (event) => onFailure(event.message);
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
  const failures = new Map<number, string>();
  let stopped = false;
  for (let tid = 1; tid < threads; tid++) {
    const worker = await spawnWorker((text) => {
      if (stopped || failures.has(tid)) return;
      failures.set(tid, text);
      // A crash the worker could not report itself: mark it here, as it would have.
      if (Atomics.compareExchange(control, CONTROL.failed, 0, tid) === 0) {
        Atomics.add(control, CONTROL.done, 1);
        Atomics.notify(control, CONTROL.done);
      }
    });
    const message: StartMessage = { module, memory, control: control.buffer as SharedArrayBuffer, exports, tid, layout: CONTROL, commands: COMMANDS };
    worker.post(message);
    workers.push(worker);
  }
  const canBlock = isNode; // browsers forbid Atomics.wait on the main thread

  /** A failed worker leaves the pool unusable: its part of every later call would be missing. */
  async function failure(): Promise<Error> {
    const tid = Atomics.load(control, CONTROL.failed);
    // Its message comes through the event loop, which the wait loop below did not let run.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const detail = failures.get(tid) ?? 'no message';
    return new Error(`cxc: WASM worker thread ${tid} of ${threads} failed (${detail}); the model cannot run on threads any more: dispose() it and load it again, with threads: 1 to run without workers`);
  }

  async function run(call: ThreadedCall, kernel: (...args: number[]) => void): Promise<void> {
    if (Atomics.load(control, CONTROL.failed) !== 0) throw await failure();
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
      if (Atomics.load(control, CONTROL.failed) !== 0) throw await failure();
      if (done === threads - 1) break;
      // Blocking keeps the event loop from delivering a worker's crash: after a second of
      // waiting, let it run once.
      if (canBlock) {
        if (Atomics.wait(control, CONTROL.done, done, 1000) === 'timed-out') await new Promise((resolve) => setTimeout(resolve, 0));
      }
      else if (typeof waitAsync === 'function') await waitAsync(control, CONTROL.done, done, 1000).value;
      else await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  return {
    run,
    stop() {
      stopped = true;
      control[CONTROL.command] = COMMANDS.stop;
      Atomics.add(control, CONTROL.generation, 1);
      Atomics.notify(control, CONTROL.generation);
      for (const worker of workers) worker.terminate();
    },
  };
}
