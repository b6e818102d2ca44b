#!/usr/bin/env node
// The WebGPU benchmark: ConvNeXt-T 224 from ../shared/golden, cxc's WebGPU module vs
// onnxruntime-web's WebGPU backend (in Node on Dawn) and onnxruntime-node's native `webgpu`
// execution provider, on the same adapter, same weights (../shared/bench's ONNX export),
// logits checked against the golden file before timing. On a machine without a GPU the
// adapter is a CPU Vulkan driver, SwiftShader or Mesa's lavapipe (one set of rows each): slow, but
// the same for every engine of a row. cxc is what load() picks (on these CPU adapters: subgroup
// kernels), cxc-tiles the tiled kernels every adapter can run; cxc-f16 (f16 kernels) runs where the
// adapter has shader-f16. MESA_SHADER_CACHE_DISABLE=true gives lavapipe cold-compile numbers.
//   node bench/webgpu.mjs [--runs 3] [--batches 1,2] [--drivers swiftshader,lavapipe]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' }, batches: { type: 'string', default: '1,2' },
    drivers: { type: 'string', default: 'swiftshader,lavapipe' },
    // Per driver: onnxruntime-web's WebGPU backend is only run on SwiftShader (it has crashed under Dawn in Node);
    // lavapipe has shader-f16, SwiftShader does not.
    'swiftshader-engines': { type: 'string', default: 'cxc,cxc-tiles,ort-web,ort-node' },
    'lavapipe-engines': { type: 'string', default: 'cxc,cxc-tiles,cxc-f16,ort-node' },
  },
});
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const modelDir = here('../../shared/golden/models/convnext-tiny-224');
const onnx = here('../../shared/bench/convnext-tiny-224.onnx');
const golden = `${modelDir}/golden.safetensors`;
const moduleDir = here('../out/bench-convnext-tiny-224-webgpu');
const { buildModule } = await import('../dist/compiler/build.js');
// Built with the f16 kernels too: the cxc engine loads it with { precision: 'f32' }, cxc-f16 with 'f16'.
await buildModule({ input: modelDir, target: 'webgpu', outDir: moduleDir, force: true, precision: 'f16' });

// One process per engine: a crash in one engine's native code (onnxruntime-web's WebGPU backend
// has segfaulted under Dawn in Node here) must not take the others' numbers with it.
const rows = [];
for (const driver of values.drivers.split(',')) {
  for (const batch of values.batches.split(',').map(Number)) {
    const row = { driver, batch, adapter: 'unknown adapter', results: [] };
    for (const engine of values[`${driver}-engines`].split(',')) {
      process.stderr.write(`${driver}, batch ${batch}: timing ${engine} (each run can take seconds on a CPU adapter)...\n`);
      try {
        const out = execFileSync(process.execPath, [here('./webgpu-engines.mjs'), '--module', moduleDir, '--onnx', onnx, '--golden', golden,
          '--batch', String(batch), '--runs', values.runs, '--engines', engine, '--driver', driver], { encoding: 'utf8', maxBuffer: 1 << 24, stdio: ['ignore', 'pipe', 'inherit'] });
        const result = JSON.parse(out.trim().split('\n').pop());
        row.adapter = result.adapter;
        row.results.push(...result.results);
      } catch (error) {
        row.results.push({ engine, detail: `crashed: ${error.signal ?? `exit ${error.status}`}`, failed: true });
      }
    }
    rows.push(row);
  }
}
const fmt = (ms) => (Number.isFinite(ms) ? (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`) : 'n/a');
for (const driver of new Set(rows.map((r) => r.driver))) console.log(`${driver}: ${rows.find((r) => r.driver === driver).adapter}`);
const table = [['driver', 'batch', 'engine', 'median run', 'load', 'first run', 'vs cxc', 'logits err']];
for (const row of rows) {
  const cxc = row.results.find((r) => r.engine === 'cxc');
  for (const r of row.results) {
    table.push([row.driver, String(row.batch), r.failed ? `${r.engine} (${r.detail})` : `${r.engine}: ${r.detail}`, fmt(r.medianMs), fmt(r.loadMs), fmt(r.firstRunMs),
      r.failed || !cxc || cxc.failed ? 'n/a' : `${(r.medianMs / cxc.medianMs).toFixed(2)}x`, r.failed ? 'n/a' : r.maxError.toExponential(1)]);
  }
}
const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => (i <= 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
console.log(line(table[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of table.slice(1)) console.log(line(r));
console.log(`(${values.runs} timed runs per engine after one warm-up, one process per engine; "vs cxc" = engine time / cxc time, higher is slower than cxc)`);
