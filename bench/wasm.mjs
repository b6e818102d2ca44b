#!/usr/bin/env node
// The CPU benchmark (issue "WASM speed"): ConvNeXt-T 224 from ../shared/golden, cxc's WASM
// module vs onnxruntime-web (WASM) and onnxruntime-node on ../shared/bench's ONNX export of
// the same weights. Every engine's logits are checked against the golden file before it is
// timed. Each row runs in its own Node process with the row's flags for every engine, and the
// engines alternate run by run. Prints one table of medians and the goal ratios.
//   node bench/wasm.mjs [--runs 10] [--quick]
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' }, quick: { type: 'boolean', default: false } } });
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const shared = here('../../shared/');
const modelDir = `${shared}golden/models/convnext-tiny-224`;
const onnx = `${shared}bench/convnext-tiny-224.onnx`;
const golden = `${modelDir}/golden.safetensors`;
for (const path of [modelDir, onnx]) if (!existsSync(path)) throw new Error(`missing ${path}: the benchmark needs ../shared beside the project`);
const moduleDir = here('../out/bench-convnext-tiny-224-wasm');

const { buildModule } = await import('../dist/compiler/build.js');
await buildModule({ input: modelDir, target: 'wasm', outDir: moduleDir, force: true });

const RELAXED = '--experimental-wasm-relaxed-simd';
const runs = values.quick ? '3' : values.runs;
const rows = [
  { simd: 'plain', threads: 1, batch: 1 },
  { simd: 'relaxed', threads: 1, batch: 1 },
  { simd: 'plain', threads: 2, batch: 1 },
  { simd: 'relaxed', threads: 2, batch: 1 },
  { simd: 'plain', threads: 1, batch: 8 },
  { simd: 'relaxed', threads: 2, batch: 8 },
];
function engineRun(row, engines, extra = []) {
  const flags = ['--expose-gc', ...(row.simd === 'relaxed' ? [RELAXED] : [])];
  const out = execFileSync(process.execPath, [...flags, here('./engines.mjs'), '--module', moduleDir, '--onnx', onnx, '--golden', golden,
    '--threads', String(row.threads), '--batch', String(row.batch), '--runs', runs, '--engines', engines, ...extra], { encoding: 'utf8', maxBuffer: 1 << 24 });
  return JSON.parse(out.trim().split('\n').pop());
}
const results = [];
for (const row of rows) {
  process.stderr.write(`running ${row.simd} SIMD, ${row.threads} thread(s), batch ${row.batch}...\n`);
  const r = engineRun(row, 'cxc,ort-web,ort-node');
  results.push({ row, weightReadMs: r.weightReadMs, byEngine: Object.fromEntries(r.results.map((x) => [x.engine, x])) });
}
// The threads speedup: cxc alone in its process, a 2-thread and a 1-thread model alternating
// (other engines' threads and garbage would weigh on the 2-thread runs only).
process.stderr.write('running cxc on 2 threads against itself on 1...\n');
const selfSpeedup = engineRun({ simd: 'plain', threads: 2, batch: 1 }, 'cxc', ['--with-one-thread']).results;
// Peak memory of a batch-1 run, one engine per process.
const memory = {};
for (const engine of ['cxc', 'ort-web', 'ort-node']) memory[engine] = engineRun({ simd: 'plain', threads: 1, batch: 1 }, engine, ['--warmup', '0']).maxRssMiB;

// This CPU's ceiling for one thread (bench/peak.mjs), timed alone so nothing else competes.
const peak = JSON.parse(execFileSync(process.execPath, [RELAXED, here('./peak.mjs')], { encoding: 'utf8' }).trim());

const GFLOP_PER_IMAGE = 8.91;
const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
const table = [['SIMD', 'threads', 'batch', 'cxc', 'ort-web', 'ort-node', 'cxc/ort-web', 'cxc/ort-node', 'cxc GFLOP/s']];
for (const { row, byEngine } of results) {
  const c = byEngine.cxc.medianMs;
  table.push([row.simd, String(row.threads), String(row.batch), fmt(c), fmt(byEngine['ort-web'].medianMs), fmt(byEngine['ort-node'].medianMs),
    (c / byEngine['ort-web'].medianMs).toFixed(2), (c / byEngine['ort-node'].medianMs).toFixed(2), ((GFLOP_PER_IMAGE * row.batch) / (c / 1000)).toFixed(1)]);
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => c.padStart(widths[i])).join(' | ')} |`;
console.log(line(table[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of table.slice(1)) console.log(line(r));

const find = (simd, threads, batch) => results.find((x) => x.row.simd === simd && x.row.threads === threads && x.row.batch === batch).byEngine;
const check = (label, value, goal, ok) => console.log(`${ok ? 'met ' : 'MISS'}  ${label}: ${value} (goal ${goal})`);
const r1 = find('relaxed', 1, 1); const p1 = find('plain', 1, 1); const r2 = find('relaxed', 2, 1);
console.log('');
check('1 thread, relaxed SIMD, cxc / ort-web', (r1.cxc.medianMs / r1['ort-web'].medianMs).toFixed(2), '<= 0.45', r1.cxc.medianMs / r1['ort-web'].medianMs <= 0.45);
check('1 thread, plain SIMD, cxc / ort-web', (p1.cxc.medianMs / p1['ort-web'].medianMs).toFixed(2), '<= 0.70', p1.cxc.medianMs / p1['ort-web'].medianMs <= 0.7);
const selfMedian = (engine) => selfSpeedup.find((x) => x.engine === engine).medianMs;
const speedup = selfMedian('cxc-1thread') / selfMedian('cxc');
check('2 threads speedup over cxc 1 thread (plain, the two alternating in one process)', `${speedup.toFixed(2)} (${fmt(selfMedian('cxc-1thread'))} -> ${fmt(selfMedian('cxc'))})`, '>= 1.85', speedup >= 1.85);
check('2 threads (relaxed), cxc / ort-node', (r2.cxc.medianMs / r2['ort-node'].medianMs).toFixed(2), '<= 2.6', r2.cxc.medianMs / r2['ort-node'].medianMs <= 2.6);
const b8Row = find('plain', 1, 8);
const b8 = b8Row.cxc.medianMs / 8;
const b1 = b8Row['cxc-batch1'].medianMs; // same model and process, alternating with batch 8
check('batch 8 per image vs batch 1 (plain, 1 thread, same process)', `${b8.toFixed(0)} ms vs ${b1.toFixed(0)} ms`, 'batch 8 <= batch 1', b8 <= b1);
const gflops = (ms) => (GFLOP_PER_IMAGE / (ms / 1000));
console.log(`one-thread WASM peak here (bench/peak.mjs): mul+add ${peak.plain.toFixed(1)} GFLOP/s, FMA ${peak.fma ? peak.fma.toFixed(1) : 'n/a'} GFLOP/s; ` +
  `cxc 1 thread runs at ${(100 * gflops(p1.cxc.medianMs) / peak.plain).toFixed(0)}% of the mul+add peak (plain), ${peak.fma ? (100 * gflops(r1.cxc.medianMs) / peak.fma).toFixed(0) : '?'}% of the FMA peak (relaxed; issue goal 85%)`);
// Load: module import to first result, less what no engine can skip (reading the weights file
// into fresh memory, timed in the same process) and less one steady run: what loading costs on top.
const p1Read = results.find((x) => x.byEngine === p1).weightReadMs;
const loadOverhead = p1.cxc.loadMs + p1.cxc.firstRunMs - p1Read.cxc - p1.cxc.medianMs;
check('load to first result, beyond the weight read and one steady run (plain, 1 thread)', `${fmt(loadOverhead)}`, '< 100 ms', loadOverhead < 100);
console.log('');
console.log(`load to first result: cxc ${fmt(p1.cxc.loadMs + p1.cxc.firstRunMs)} (load ${fmt(p1.cxc.loadMs)} incl. weights, first run ${fmt(p1.cxc.firstRunMs)}; reading weights.bin alone ${fmt(p1Read.cxc)}), ` +
  `ort-web ${fmt(p1['ort-web'].loadMs + p1['ort-web'].firstRunMs)}, ort-node ${fmt(p1['ort-node'].loadMs + p1['ort-node'].firstRunMs)} (reading the .onnx alone ${fmt(p1Read.onnx)})`);
console.log(`peak RSS, batch 1, one engine per process: cxc ${memory.cxc.toFixed(0)} MiB, ort-web ${memory['ort-web'].toFixed(0)} MiB, ort-node ${memory['ort-node'].toFixed(0)} MiB`);
console.log(`logits max |error| vs golden: ${Object.entries(p1).map(([e, x]) => `${e} ${x.maxError.toExponential(1)}`).join(', ')}`);
console.log(`(${values.quick ? 3 : runs} timed runs per engine and row after warm-up; Node ${process.version}; ${(await import('node:os')).cpus()[0].model}, ${(await import('node:os')).cpus().length} cores)`);
