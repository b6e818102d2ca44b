#!/usr/bin/env node
// What quantizing the weights alone costs in accuracy, before any integer kernel exists (issue 10):
// ConvNeXt-T's packed weights are rounded to a quantization grid and back ("fake quantization"),
// run by the float32 WASM module, and the logits compared with the golden ones. One row per scheme
// and set of matrices: max |logits - golden| / max |golden|, and whether both inputs keep their top-5.
//   npm run build && node bench/quantization-error.mjs
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { buildModule, loadModelSource } from '../dist/compiler/build.js';
import { bindCheckpoint } from '../dist/compiler/checkpoint.js';
import { packWeights } from '../dist/compiler/layout.js';
import { WASM_PACKING } from '../dist/compiler/wasm.js';
import { readSafetensors } from '../dist/compiler/safetensors.js';

const dir = fileURLToPath(new URL('../../shared/golden/models/convnext-tiny-224', import.meta.url));
const loaded = loadModelSource({ input: dir });
const packed = packWeights(loaded.spec, WASM_PACKING, bindCheckpoint(loaded.spec, loaded.tensors, dir));
const golden = readSafetensors(new Uint8Array(readFileSync(join(dir, 'golden.safetensors'))), 'golden');
const pixels = golden.get('pixel_values');
const goldenLogits = golden.get('logits').data;

// A module from the bare config takes any weights of the right size (no checksum to match).
const out = mkdtempSync(join(tmpdir(), 'cxc-quant-'));
await buildModule({ input: join(dir, 'config.json'), target: 'wasm', outDir: out, force: true });
const { load } = await import(pathToFileURL(join(out, 'index.js')).href);

/** Symmetric round-to-nearest of values[at(k)] for k in [k0, k1) on a grid of 2^(bits-1) - 1 steps. */
function quantizeRun(data, at, k0, k1, bits) {
  const levels = 2 ** (bits - 1) - 1;
  let max = 0;
  for (let k = k0; k < k1; k++) max = Math.max(max, Math.abs(data[at(k)]));
  const step = max / levels || 1;
  for (let k = k0; k < k1; k++) data[at(k)] = Math.max(-levels - 1, Math.min(levels, Math.round(data[at(k)] / step))) * step;
}

/** A copy of the packed weights with the chosen matrices quantized per output column (in blocks of `block` along K). */
function fakeQuantized(bits, block, pick) {
  const data = packed.data.slice();
  for (const group of packed.layout.groups) {
    for (const [name, field] of Object.entries(group.fields)) {
      if (field.layout.kind !== 'matrix' || !pick(group.key, name)) continue;
      const { rows: K, columns: N, panelWidth: P } = field.layout;
      for (let n = 0; n < N; n++) {
        const at = (k) => field.offset + Math.floor(n / P) * K * P + k * P + (n % P);
        for (let k0 = 0; k0 < K; k0 += block) quantizeRun(data, at, k0, Math.min(K, k0 + block), bits);
      }
    }
  }
  return data;
}

const top5 = (logits, b) => Array.from(logits.subarray(b * 1000, (b + 1) * 1000)).map((v, i) => [v, i]).sort((x, y) => y[0] - x[0]).slice(0, 5).map(([, i]) => i).join();
const pointwise = (key, name) => name.startsWith('pw');
const ROWS = [
  ['int8 per column', 8, Infinity, 'every matrix', () => true],
  ['int8 per column', 8, Infinity, 'pwconv1/2 only', pointwise],
  ['int8 per column', 8, Infinity, 'all but the classifier', (key) => key !== 'classifier'],
  ['int8 per column', 8, Infinity, 'classifier only', (key) => key === 'classifier'],
  ...[0, 1, 2, 3].map((s) => ['int8 per column', 8, Infinity, `stage ${s} pwconv only`, (key, name) => key.startsWith(`stages.${s}.blocks.`) && pointwise(key, name)]),
  ['int8 blocks of 32 along K', 8, 32, 'every matrix', () => true],
  ['int4 blocks of 32 along K', 4, 32, 'every matrix', () => true],
  ['int4 blocks of 32 along K', 4, 32, 'all but the classifier', (key) => key !== 'classifier'],
];

console.log('| scheme | matrices | max err / max abs logit | top-5 kept |');
console.log('|---|---|---|---|');
for (const [scheme, bits, block, which, pick] of ROWS) {
  const model = await load({ weights: new Uint8Array(fakeQuantized(bits, block, pick).buffer) });
  const { logits } = await model.run(pixels.data, { batch: pixels.shape[0], height: pixels.shape[2], width: pixels.shape[3] });
  model.dispose();
  let error = 0;
  let scale = 0;
  for (let i = 0; i < goldenLogits.length; i++) {
    error = Math.max(error, Math.abs(logits[i] - goldenLogits[i]));
    scale = Math.max(scale, Math.abs(goldenLogits[i]));
  }
  const kept = Array.from({ length: pixels.shape[0] }, (_, b) => top5(logits, b) === top5(goldenLogits, b)).filter(Boolean).length;
  console.log(`| ${scheme} | ${which} | ${(error / scale).toExponential(2)} | ${kept}/${pixels.shape[0]} |`);
}
rmSync(out, { recursive: true, force: true });
