#!/usr/bin/env node
// The q8/q4 benchmark (issue 10): ConvNeXt-T 224 batch 1 from ../shared/golden as cxc WASM
// packages in f32, q8 and q4, against onnxruntime-web on transformers.js's q8 file (tjs_v3.onnx,
// what browsers run by default) and onnxruntime-node on the careful int8 file (q8_pc.onnx, the
// native reference line), all on the same weights and input, in one process per thread count,
// alternating run by run (bench/engines.mjs). Prints a table of medians, the goal ratios, sizes,
// load-to-first-result and peak RSS per engine.
//   node bench/quantized.mjs [--runs 10]
// The quantized ONNX files come from ../shared/bench/quantize_like_transformersjs.py (needs
// Debian's python3-onnx and python3-numpy); they are built into bench/models once.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const shared = here('../../shared/');
const modelDir = `${shared}golden/models/convnext-tiny-224`;
const golden = `${modelDir}/golden.safetensors`;
const onnxDir = here('./models/');
const onnx = { tjs: `${onnxDir}tjs_v3.onnx`, pc: `${onnxDir}q8_pc.onnx` };
if (!existsSync(onnx.tjs) || !existsSync(onnx.pc)) {
  process.stderr.write('building the quantized ONNX files (python3-onnx)...\n');
  execFileSync('/usr/bin/python3', [`${shared}bench/quantize_like_transformersjs.py`, `${shared}bench/convnext-tiny-224.onnx`, onnxDir], { stdio: 'inherit' });
}

const { buildModule } = await import('../dist/compiler/build.js');
const packages = {};
for (const dtype of ['f32', 'q8', 'q4']) {
  packages[dtype] = here(`../out/bench-convnext-tiny-224-wasm-${dtype}`);
  await buildModule({ input: modelDir, target: 'wasm', weightsDtype: dtype, outDir: packages[dtype], force: true });
}
// Logit bars before timing (x max(1, max|golden|)): the measured errors have room under them.
const engines = [
  `cxc f32=cxc:${packages.f32}`, `cxc q8=cxc:${packages.q8}:0.03`, `cxc q4=cxc:${packages.q4}:0.35`,
  `ort-web q8=ort-web:${onnx.tjs}:0.05`, `ort-node q8=ort-node:${onnx.pc}:0.03`,
];
const RELAXED = '--experimental-wasm-relaxed-simd';
function engineRun(threads, list, extra = []) {
  const out = execFileSync(process.execPath, ['--expose-gc', RELAXED, here('./engines.mjs'), '--golden', golden, '--onnx', onnx.tjs,
    '--threads', String(threads), '--batch', '1', '--runs', values.runs, '--engines', list.join(','), ...extra], { encoding: 'utf8', maxBuffer: 1 << 24 });
  return JSON.parse(out.trim().split('\n').pop());
}
const byThreads = {};
for (const threads of [1, 2]) {
  process.stderr.write(`running ${threads} thread(s)...\n`);
  byThreads[threads] = Object.fromEntries(engineRun(threads, engines).results.map((r) => [r.engine, r]));
}
// Peak memory, one engine per process, 1 thread.
const memory = {};
for (const engine of engines) memory[engine.split('=')[0]] = engineRun(1, [engine], ['--warmup', '0', '--runs', '1']).maxRssMiB;

const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
// The file each engine downloads: a cxc package's weights.bin, or the .onnx itself.
const size = Object.fromEntries(engines.map((spec) => {
  const [name, kindAndPath] = spec.split('=');
  const [kind, path] = kindAndPath.split(':');
  return [name, kind === 'cxc' ? `${path}/weights.bin` : path];
}));
const table = [['engine', 'file MB', '1 thread', '2 threads', 'load + first run', 'peak RSS', 'logits err / max|golden|']];
const { readSafetensors } = await import('../dist/compiler/safetensors.js');
const { readFileSync } = await import('node:fs');
const maxGolden = Math.max(1, ...readSafetensors(new Uint8Array(readFileSync(golden)), golden).get('logits').data.map(Math.abs));
for (const name of Object.keys(byThreads[1])) {
  const one = byThreads[1][name];
  table.push([name, (statSync(size[name]).size / 1e6).toFixed(1), fmt(one.medianMs), fmt(byThreads[2][name].medianMs), fmt(one.loadMs + one.firstRunMs),
    `${memory[name].toFixed(0)} MiB`, (one.maxError / maxGolden).toExponential(2)]);
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
console.log(line(table[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of table.slice(1)) console.log(line(r));
console.log('');
const check = (label, value, goal, ok) => console.log(`${ok ? 'met ' : 'MISS'}  ${label}: ${value} (goal ${goal})`);
for (const threads of [1, 2]) {
  const r = byThreads[threads];
  const ratio = (a, b) => r[a].medianMs / r[b].medianMs;
  check(`${threads} thread(s): cxc q8 / ort-web q8 (tjs_v3)`, ratio('cxc q8', 'ort-web q8').toFixed(2), '<= 0.45', ratio('cxc q8', 'ort-web q8') <= 0.45);
  check(`${threads} thread(s): cxc q8 / cxc f32`, ratio('cxc q8', 'cxc f32').toFixed(2), '<= 0.55', ratio('cxc q8', 'cxc f32') <= 0.55);
  check(`${threads} thread(s): cxc q4 / cxc q8`, ratio('cxc q4', 'cxc q8').toFixed(2), '<= 1.00', ratio('cxc q4', 'cxc q8') <= 1);
  console.log(`      ${threads} thread(s): ort-node on q8_pc.onnx (native int8, the reference line): ${fmt(r['ort-node q8'].medianMs)}`);
}
console.log(`(logits error: max |logits - golden| / max(1, max|golden|) on the golden input; ${values.runs} timed runs per engine after warm-up, relaxed SIMD on; Node ${process.version}; ${(await import('node:os')).cpus()[0].model}, ${(await import('node:os')).cpus().length} cores)`);
