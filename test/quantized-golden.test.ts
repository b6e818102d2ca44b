/**
 * q8 and q4 packages (issue 10) against every golden case on both targets (WebGPU on Dawn +
 * SwiftShader): see test/helpers/quantized-golden.ts for what is compared and asserted.
 */
import { beforeAll, expect, test } from 'vitest';
import { WEIGHTS_DTYPE_BARS } from '../compiler/compare.js';
import { nodeGpu } from '../compiler/node-gpu.js';
import { describeQuantizedGoldens } from './helpers/quantized-golden.js';

let gpu: GPU;
beforeAll(async () => {
  gpu = await nodeGpu();
});

for (const target of ['wasm', 'webgpu'] as const) {
  // WebGPU: load() picks the row-sharing MLP on SwiftShader (subgroups of 4).
  for (const dtype of ['q8', 'q4'] as const) {
    describeQuantizedGoldens({
      target, dtype, gpu: () => gpu, label: target === 'webgpu' ? 'webgpu (SwiftShader)' : target,
      ...(target === 'webgpu' ? { backend: /, f32, subgroup kernels \(MLP rows shared by 4\)$/ } : {}),
    });
  }
}

test('the bars are ordered: f32 < f16 < q8 < q4', () => {
  expect(WEIGHTS_DTYPE_BARS.f32).toBeLessThan(WEIGHTS_DTYPE_BARS.f16);
  expect(WEIGHTS_DTYPE_BARS.f16).toBeLessThan(WEIGHTS_DTYPE_BARS.q8);
  expect(WEIGHTS_DTYPE_BARS.q8).toBeLessThan(WEIGHTS_DTYPE_BARS.q4);
});
