import { readFileSync } from 'node:fs';
import { test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { bindCheckpoint } from '../compiler/checkpoint.js';
import { packWeights } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWasm, WASM_PACKING } from '../compiler/wasm.js';
import { createWasmBackend } from '../runtime/wasm.js';
import { goldenPath, readGolden, floats, compare } from './helpers/golden.js';

for (const name of ['micro', 'micro/backbone', 'small-bf16', 'v2-micro', 'convnext-tiny-224']) test(name, async () => {
  const dir = goldenPath('models', name);
  const weightsBytes = new Uint8Array(readFileSync(`${dir}/model.safetensors`));
  const tensors = readSafetensors(weightsBytes, 'w');
  const spec = parseModelConfig(JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')), 'c', { tensorNames: tensors.keys() });
  const ckpt = bindCheckpoint(spec, tensors, 'w');
  const packed = packWeights(spec, WASM_PACKING, ckpt);
  const plan = planModel(spec, packed.layout);
  const { program, sources } = await renderWasm(plan, packed.layout);
  const manifest: any = { ...spec, levels: plan.levels, steps: plan.steps, minInputSize: plan.minInputSize };
  const backend = await createWasmBackend(manifest, program, program, packed.data);
  const golden = readGolden('models', name.split('/')[0], 'golden.safetensors');
  const input = floats(golden.get('pixel_values'));
  const [n, , h, w] = golden.get('pixel_values')!.shape;
  const t0 = performance.now();
  const out = await backend.run(input, n, h, w, true);
  console.log(name, 'run ms', (performance.now() - t0).toFixed(0));
  for (const [key, value] of out) {
    const g = golden.get(name.endsWith('backbone') ? 'backbone.' + key : key);
    if (!g) { console.log(name, key, 'no golden'); continue; }
    const r = compare(value.data, floats(g));
    console.log(name, key, r.maxError.toExponential(2), r.tolerance.toExponential(2), r.maxError <= r.tolerance ? 'OK' : 'FAIL');
  }
});
