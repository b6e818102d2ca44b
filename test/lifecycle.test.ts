/**
 * dispose() frees everything: the golden micro model is built once, then loaded, run and
 * disposed 1,000 times on one thread and 50 times on two (whose worker must be terminated
 * each time), while the process's RSS, heap and ArrayBuffer memory are sampled. Growth over
 * the second half of the cycles must stay within fixed bounds, which a leak of one model
 * per cycle (its WebAssembly memory, kernels and buffers) or of one worker per cycle breaks.
 * Also: run() after dispose() rejects with a clear message, and dispose() twice is harmless.
 */
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ConvNextModel } from '../runtime/model.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { goldenPath, hasGolden } from './helpers/golden.js';

const SINGLE_THREAD_CYCLES = 1000;
const TWO_THREAD_CYCLES = 50;
const MiB = 2 ** 20;

/**
 * A full garbage collection, so that what is measured is what is still referenced. Vitest
 * cannot give one test file its own node flags, so when the process was not started with
 * --expose-gc the flag is set now and gc() fetched from a fresh context (which sees it).
 * Without it, growth is measured anyway, with V8 collecting when it likes.
 */
function findGc(): (() => void) | undefined {
  const existing = (globalThis as { gc?: () => void }).gc;
  if (typeof existing === 'function') return existing;
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : undefined;
  } catch {
    return undefined;
  }
}
const gc = findGc();

interface Sample { cycle: number; rss: number; heapUsed: number; arrayBuffers: number; external: number; threads: number }

/** OS threads of this process (Linux), or -1 where /proc is not there. Each live worker holds several. */
function osThreads(): number {
  try {
    const match = /^Threads:\s+(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return match ? Number(match[1]) : -1;
  } catch {
    return -1;
  }
}

async function settle(): Promise<void> {
  // Let terminated workers finish exiting and finalizers run before sampling.
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 0));
    gc?.();
  }
}

async function sample(cycle: number): Promise<Sample> {
  await settle();
  const usage = process.memoryUsage();
  return { cycle, rss: usage.rss, heapUsed: usage.heapUsed, arrayBuffers: usage.arrayBuffers, external: usage.external, threads: osThreads() };
}

/** Waits (up to `ms`) for the thread count to drop to `target`, since terminate() is asynchronous. */
async function threadsSettleTo(target: number, ms = 5000): Promise<number> {
  const deadline = Date.now() + ms;
  let now = osThreads();
  while (now > target && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    now = osThreads();
  }
  return now;
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

describe.skipIf(!hasGolden())('lifecycle: load -> run -> dispose frees everything (golden micro, WASM)', () => {
  let built: BuiltModule;
  // micro: patch 4 and three halvings, so 32x32 is the smallest input; one image.
  const shape = { batch: 1, height: 32, width: 32 };
  const input = new Float32Array(3 * 32 * 32).map((_, i) => Math.sin(i * 0.37) * 2);
  let reference: Float32Array;
  const report: string[] = [];

  beforeAll(async () => {
    built = await buildToTemp({ input: goldenPath('models', 'micro'), target: 'wasm' });
    const model = await built.load();
    reference = (await model.run(input, shape)).logits!.slice();
    model.dispose();
  });
  afterAll(() => {
    built?.remove();
    if (report.length) console.log(`lifecycle (gc ${gc ? 'forced' : 'not available'}):\n${report.join('\n')}`);
  });

  /** load -> run -> check -> dispose, `cycles` times; samples memory every `every` cycles. */
  async function cycle(cycles: number, threads: number, every: number): Promise<Sample[]> {
    const samples = [await sample(0)];
    for (let i = 1; i <= cycles; i++) {
      const model: ConvNextModel = await built.load({ threads });
      const { logits } = await model.run(input, shape);
      // Every cycle computes the same thing: a disposed model's memory must not leak into the next.
      if (!logits || logits.some((v, k) => v !== reference[k])) throw new Error(`cycle ${i}: logits differ from the first load's`);
      model.dispose();
      if (i % every === 0) samples.push(await sample(i));
    }
    return samples;
  }

  function describeSamples(label: string, samples: Sample[], seconds: number): void {
    const first = samples[0];
    const middle = samples[Math.floor((samples.length - 1) / 2)];
    const last = samples[samples.length - 1];
    report.push(
      `  ${label}: ${last.cycle} cycles in ${seconds.toFixed(1)} s; RSS ${mib(first.rss)} -> ${mib(middle.rss)} (cycle ${middle.cycle}) -> ${mib(last.rss)}; ` +
        `heap ${mib(middle.heapUsed)} -> ${mib(last.heapUsed)}; ArrayBuffers ${mib(middle.arrayBuffers)} -> ${mib(last.arrayBuffers)}; ` +
        `OS threads ${first.threads} -> ${last.threads}`,
    );
  }

  test('run() after dispose() rejects with a clear message; dispose() twice is harmless', async () => {
    for (const threads of [1, 2]) {
      const model = await built.load({ threads });
      expect(Array.from((await model.run(input, shape)).logits!)).toEqual(Array.from(reference));
      model.dispose();
      expect(() => model.dispose()).not.toThrow();
      await expect(model.run(input, shape)).rejects.toThrow('cxc: this model was disposed; call load() again');
      const image = { data: new Uint8Array(8 * 8 * 3), width: 8, height: 8, channels: 3 as const };
      expect(() => model.preprocess(image)).toThrow(/disposed/);
      await expect(model.classify(image)).rejects.toThrow(/disposed/);
      expect(() => model.dispose()).not.toThrow();
    }
    // A later load is unaffected.
    const again = await built.load();
    expect(Array.from((await again.run(input, shape)).logits!)).toEqual(Array.from(reference));
    again.dispose();
  });

  test(`${SINGLE_THREAD_CYCLES} cycles on one thread: memory does not grow`, async () => {
    const start = performance.now();
    const samples = await cycle(SINGLE_THREAD_CYCLES, 1, 50);
    describeSamples('1 thread', samples, (performance.now() - start) / 1000);
    const middle = samples.find((s) => s.cycle === SINGLE_THREAD_CYCLES / 2)!;
    const last = samples[samples.length - 1];
    // The bar: RSS after the last 500 cycles within 100 MiB of RSS after the first 500. A model
    // kept alive per cycle (measured: about 330 KiB of RSS each, mostly its WebAssembly memory
    // and compiled kernels) adds about 160 MiB over 500 cycles and fails it.
    expect(last.rss - middle.rss, `RSS growth over cycles ${middle.cycle}..${last.cycle}`).toBeLessThan(100 * MiB);
    expect(last.heapUsed - middle.heapUsed, 'heap growth').toBeLessThan(16 * MiB);
    expect(last.arrayBuffers - middle.arrayBuffers, 'ArrayBuffer growth').toBeLessThan(16 * MiB);
    expect(last.external - middle.external, 'external memory growth').toBeLessThan(16 * MiB);
  }, 120_000);

  test(`${TWO_THREAD_CYCLES} cycles on two threads: memory does not grow, every worker is terminated`, async () => {
    const before = await sample(0);
    const start = performance.now();
    const samples = await cycle(TWO_THREAD_CYCLES, 2, 5);
    const after = await threadsSettleTo(before.threads);
    describeSamples('2 threads', samples, (performance.now() - start) / 1000);
    const middle = samples.find((s) => s.cycle === TWO_THREAD_CYCLES / 2)!;
    const last = samples[samples.length - 1];
    if (before.threads > 0) {
      // Each worker that outlives dispose() keeps an OS thread: 50 leaked workers show as 50 more.
      expect(after, `OS threads after ${TWO_THREAD_CYCLES} two-thread cycles (before: ${before.threads})`).toBeLessThanOrEqual(before.threads + 2);
    }
    // Measured: a model and worker kept alive per cycle add about 7 MiB of RSS each.
    expect(last.rss - middle.rss, `RSS growth over cycles ${middle.cycle}..${last.cycle}`).toBeLessThan(64 * MiB);
    expect(last.heapUsed - middle.heapUsed, 'heap growth').toBeLessThan(16 * MiB);
  }, 120_000);
});
