/**
 * q8 and q4 WebGPU packages on the second Vulkan driver, Mesa's lavapipe (other limits and another
 * compiler than SwiftShader's): the V1, V2 and backbone goldens and ConvNeXt-T, as
 * test/quantized-golden.test.ts runs them on SwiftShader (test/helpers/quantized-golden.ts).
 */
import { beforeAll } from 'vitest';
import { describeQuantizedGoldens, QUANTIZED_CASES } from './helpers/quantized-golden.js';
import { gpuOn } from './helpers/webgpu-golden.js';

let gpu: GPU;
beforeAll(async () => {
  ({ gpu } = await gpuOn('lavapipe'));
});

const cases = QUANTIZED_CASES.filter((c) => c.name !== 'small-bf16');
// load() picks the row-sharing MLP here (subgroups of 8); q8 runs the tiled kernels too.
for (const dtype of ['q8', 'q4'] as const) {
  describeQuantizedGoldens({ target: 'webgpu', dtype, gpu: () => gpu, label: 'webgpu (lavapipe)', cases, backend: /, f32, subgroup kernels \(MLP rows shared by 8\)$/ });
}
describeQuantizedGoldens({ target: 'webgpu', dtype: 'q8', gpu: () => gpu, label: 'webgpu (lavapipe, tiles)', cases, matmul: 'tiles', backend: /, f32$/ });
