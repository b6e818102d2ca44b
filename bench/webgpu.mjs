#!/usr/bin/env node
// The WebGPU benchmark: ConvNeXt-T 224 from ../shared/golden, cxc's WebGPU module vs
// onnxruntime-web's WebGPU backend (in Node on Dawn) and onnxruntime-node's native `webgpu`
// execution provider, on the same adapter, same weights (../shared/bench's ONNX export),
// logits checked against the golden file before timing. On a machine without a GPU the
// adapter is SwiftShader (a CPU Vulkan driver): slow, but the same for every engine.
//   node bench/webgpu.mjs [--runs 3] [--batches 1,2]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, batches: { type: 'string', default: '1,2' }, engines: { type: 'string', default: 'cxc,ort-web,ort-node' } } });
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const modelDir = here('../../shared/golden/models/convnext-tiny-224');
const onnx = here('../../shared/bench/convnext-tiny-224.onnx');
const golden = `${modelDir}/golden.safetensors`;
const moduleDir = here('../out/bench-convnext-tiny-224-webgpu');
const { buildModule } = await import('../dist/compiler/build.js');
await buildModule({ input: modelDir, target: 'webgpu', outDir: moduleDir, force: true });

// One process per engine: a crash in one engine's native code (onnxruntime-web's WebGPU backend
// has segfaulted under Dawn in Node here) must not take the others' numbers with it.
const rows = [];
for (const batch of values.batches.split(',').map(Number)) {
  const row = { batch, adapter: 'unknown adapter', results: [] };
  for (const engine of values.engines.split(',')) {
    process.stderr.write(`batch ${batch}: timing ${engine} (each run can take tens of seconds on SwiftShader)...\n`);
    try {
      const out = execFileSync(process.execPath, [here('./webgpu-engines.mjs'), '--module', moduleDir, '--onnx', onnx, '--golden', golden,
        '--batch', String(batch), '--runs', values.runs, '--engines', engine], { encoding: 'utf8', maxBuffer: 1 << 24, stdio: ['ignore', 'pipe', 'inherit'] });
      const result = JSON.parse(out.trim().split('\n').pop());
      row.adapter = result.adapter;
      row.results.push(...result.results);
    } catch (error) {
      row.results.push({ engine, detail: `crashed: ${error.signal ?? `exit ${error.status}`}`, failed: true });
    }
  }
  rows.push(row);
}
const fmt = (ms) => (Number.isFinite(ms) ? (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`) : 'n/a');
console.log(`adapter: ${rows[0].adapter}`);
const table = [['batch', 'engine', 'median run', 'load', 'first run', 'vs cxc', 'logits err']];
for (const row of rows) {
  const cxc = row.results.find((r) => r.engine === 'cxc');
  for (const r of row.results) {
    table.push([String(row.batch), r.failed ? `${r.engine} (${r.detail})` : `${r.engine}: ${r.detail}`, fmt(r.medianMs), fmt(r.loadMs), fmt(r.firstRunMs),
      r.failed || !cxc || cxc.failed ? 'n/a' : `${(r.medianMs / cxc.medianMs).toFixed(2)}x`, r.failed ? 'n/a' : r.maxError.toExponential(1)]);
  }
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => (i === 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
console.log(line(table[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of table.slice(1)) console.log(line(r));
console.log(`(${values.runs} timed runs per engine after one warm-up, one process per engine; "vs cxc" = engine time / cxc time, higher is slower than cxc)`);
