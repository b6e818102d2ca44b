// One process, one set of Node flags: loads every engine once, then times them in
// alternation (round-robin), so they share the machine's state. Prints JSON.
// Usage: node [--experimental-wasm-relaxed-simd] bench/engines.mjs --threads T --batch B --runs N --engines a,b,c
// An engine is cxc, ort-web or ort-node (on --module / --onnx), or LABEL=KIND:PATH[:BAR] for a
// named contender on its own package or .onnx file, whose logits must be within BAR x
// max(1, max|golden|) of the golden ones (quantized models round their weights: default 1e-4).
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { goldenInput } from './golden-input.mjs';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    batch: { type: 'string', default: '1' },
    runs: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    engines: { type: 'string', default: 'cxc,ort-web,ort-node' },
    module: { type: 'string' },
    onnx: { type: 'string' },
    golden: { type: 'string' },
    // cxc only: also time the same module on one thread, alternating (the threads speedup's baseline)
    'with-one-thread': { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
const batch = Number(values.batch);
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const engines = values.engines.split(',');

const { input, channels, height, width, checkLogits } = await goldenInput(values.golden, batch);

// onnxruntime's thread pools spin after each run by default; with engines alternating in one
// process on 2 cores, the spinning threads would steal the next engine's cores. Off for fairness.
const NO_SPINNING = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };
// The floor under any engine's load: reading its weights file into fresh memory (page cache warm:
// the module was just built). Timed before any engine loads; the buffer is dropped again.
const { readFile } = await import('node:fs/promises');
const readMs = async (path) => { const t0 = performance.now(); await readFile(path); return performance.now() - t0; };
const weightReadMs = { cxc: engines.includes('cxc') ? await readMs(`${values.module}/weights.bin`) : null, onnx: await readMs(values.onnx) };
const rssBefore = process.memoryUsage().rss;
const contenders = [];
let load;
let model; // cxc's, for the extra contenders added after its load is timed
for (const spec of engines) {
  const [engine, kindAndPath] = spec.includes('=') ? spec.split('=') : [spec, undefined];
  const [kind, path, bar] = kindAndPath ? kindAndPath.split(':') : [engine, engine === 'cxc' ? values.module : values.onnx, undefined];
  const started = performance.now();
  if (kind === 'cxc') {
    const imported = await import(pathToFileURL(`${path}/index.js`).href);
    const own = await imported.load({ threads });
    if (engine === 'cxc') {
      load = imported.load;
      model = own;
    }
    const run = async () => (await own.run(input, { batch, height, width })).logits;
    contenders.push({ engine, detail: own.backend, run });
  } else if (kind === 'ort-web') {
    const ort = await import('onnxruntime-web');
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.wasmPaths = pathToFileURL(fileURLToPath(new URL('../node_modules/onnxruntime-web/dist/', import.meta.url))).href;
    const session = await ort.InferenceSession.create(path, { executionProviders: ['wasm'], graphOptimizationLevel: 'all', extra: NO_SPINNING });
    const tensor = new ort.Tensor('float32', input, [batch, channels, height, width]);
    const run = async () => (await session.run({ pixel_values: tensor })).logits.data;
    contenders.push({ engine, detail: `onnxruntime-web ${ort.env.versions?.web ?? ''} wasm, ${threads} thread(s)`, run });
  } else if (kind === 'ort-node') {
    const ort = await import('onnxruntime-node');
    const session = await ort.InferenceSession.create(path, { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', extra: NO_SPINNING });
    const tensor = new ort.Tensor('float32', input, [batch, channels, height, width]);
    const run = async () => (await session.run({ pixel_values: tensor })).logits.data;
    contenders.push({ engine, detail: `onnxruntime-node cpu, ${threads} thread(s)`, run });
  } else {
    throw new Error(`unknown engine ${spec}`);
  }
  const last = contenders.find((c) => c.engine === engine);
  const firstStarted = performance.now();
  last.maxError = checkLogits(engine, await last.run(), bar === undefined ? undefined : Number(bar));
  last.loadMs = firstStarted - started;
  last.firstRunMs = performance.now() - firstStarted;
  last.times = [];
  if (engine === 'cxc' && threads > 1 && values['with-one-thread']) {
    // The same module on one thread, in the same process and alternating with the rest: the
    // fair baseline for the threads speedup on a machine whose speed drifts.
    const one = await load({ threads: 1 });
    checkLogits('cxc on 1 thread', (await one.run(input, { batch, height, width })).logits);
    const runOne = async () => (await one.run(input, { batch, height, width })).logits;
    contenders.push({ engine: 'cxc-1thread', detail: one.backend, run: runOne, loadMs: 0, firstRunMs: 0, maxError: 0, times: [] });
  }
  if (engine === 'cxc' && batch > 1) {
    // Batch 1 on the same model in the same process, alternating with the rest: the fair
    // baseline for "batch B is at least as efficient per image" on a machine whose speed drifts.
    const single = input.subarray(0, channels * height * width);
    const runSingle = async () => (await model.run(single, { batch: 1, height, width })).logits;
    contenders.push({ engine: 'cxc-batch1', detail: `${model.backend}, batch 1`, run: runSingle, loadMs: 0, firstRunMs: 0, maxError: 0, times: [] });
  }
}
for (let i = 0; i < warmup; i++) for (const c of contenders) await c.run();
// Each timed run starts on a settled machine: a full garbage collection first (run with
// --expose-gc), so V8's concurrent GC threads, busy with the previous engine's garbage, do not
// take a core from the next engine, then a pause for any threads it left spinning.
const SETTLE_MS = 25;
for (let i = 0; i < runs; i++) {
  for (const c of contenders) {
    globalThis.gc?.();
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
    const t0 = performance.now();
    await c.run();
    c.times.push(performance.now() - t0);
  }
}
/**
 * Peak resident memory of this process. Linux's getrusage maxrss survives execve, so a child
 * started by a bench that had built packages in memory would report the bench's peak; /proc's
 * VmHWM belongs to this address space alone.
 */
function peakRssMiB() {
  try {
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (hwm) return Number(hwm[1]) / 1024;
  } catch {
    // not Linux: fall back below
  }
  return process.resourceUsage().maxRSS / 1024;
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
console.log(JSON.stringify({
  threads, batch, runs, weightReadMs,
  relaxedFlag: process.execArgv.includes('--experimental-wasm-relaxed-simd'),
  rssMiB: (process.memoryUsage().rss - rssBefore) / 2 ** 20,
  maxRssMiB: peakRssMiB(),
  results: contenders.map((c) => ({ engine: c.engine, detail: c.detail, medianMs: median(c.times), minMs: Math.min(...c.times), loadMs: c.loadMs, firstRunMs: c.firstRunMs, maxError: c.maxError })),
}));
process.exit(0);
