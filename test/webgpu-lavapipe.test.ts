/**
 * The WebGPU target on the second CPU Vulkan driver CI has: Mesa's lavapipe (mesa-vulkan-drivers
 * from bookworm-backports; other limits than SwiftShader's, e.g. 128 MiB storage bindings, and
 * shader-f16). Every golden case within the float32 bar, as test/webgpu.test.ts does on SwiftShader;
 * with the subgroup matrix kernels load() picks here and with the tiled ones, plus the synthetic
 * configs with the subgroup kernels; then the f16 kernels (`--precision f16`, subgroup and tiled), which only lavapipe can run here:
 *   - ConvNeXt-T logits within 3e-3 x max|golden| (the goal; its bar is 1e-2), top-5 identical
 *     on every golden image and the cat photo; the smaller goldens within the same goal;
 *   - no non-finite value anywhere at 1024x1024 (statistics and accumulations stay f32);
 *   - a package built with f16 picks f16 here, f32 when asked, and says which in model.backend.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createWebGpuBackend } from '../runtime/webgpu.js';
import { topK } from '../compiler/compare.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { buildGoldenProgram, describeGoldenCases, describeSyntheticCases, gpuOn, imageSlice } from './helpers/webgpu-golden.js';
import { readSafetensors, type TensorEntry } from '../compiler/safetensors.js';

let gpu: GPU;

beforeAll(async () => {
  ({ gpu } = await gpuOn('lavapipe'));
});

// load() picks the subgroup matrix kernels here (compiler/webgpu.ts, MatmulStyle); the tiled ones,
// which every other adapter runs, are proven here too, and the synthetic configs cover what the
// goldens cannot for the subgroup kernels (channel counts that are not multiples of 8, padding, batch > 1 with GRN).
describeGoldenCases('lavapipe', () => gpu);
describeGoldenCases('lavapipe', () => gpu, 'tiles');
describeSyntheticCases('lavapipe', () => gpu, 'subgroups');
describeSyntheticCases('lavapipe', () => gpu, 'tiles');

/** The goal for f16 logits, as a fraction of max |golden logit|. */
const F16_GOAL = 3e-3;

function maxAbs(values: Float32Array): number {
  let max = 0;
  for (const v of values) max = Math.max(max, Math.abs(v));
  return max;
}

describe('WebGPU f16 kernels on lavapipe (shader-f16)', () => {
  // 'auto' runs the f16 subgroup matrix kernels here; 'tiles' the f16 tiled MLP.
  for (const [name, matmul] of ['micro', 'small-bf16', 'v2-micro', 'convnext-tiny-224'].flatMap((n) => [[n, 'auto'], [n, 'tiles']] as const)) {
    test(`${name}, ${matmul === 'auto' ? 'subgroup' : 'tiled'} kernels: logits within ${F16_GOAL} x max|golden|, top-5 identical`, { timeout: 900_000 }, async () => {
      const built = buildGoldenProgram(name, { precision: 'f16' });
      expect(built.program.f16?.requiredFeatures).toEqual(['shader-f16']);
      expect(built.program.f16?.subgroups?.map((v) => v.requiredFeatures)).toEqual([['shader-f16', 'subgroups']]);
      const backend = await createWebGpuBackend(built.manifest, built.program, built.weights, { gpu, matmul });
      try {
        expect(backend.description).toMatch(matmul === 'auto' ? /f16 \(statistics and accumulation in f32\), subgroup kernels$/ : /f16 \(statistics and accumulation in f32\)$/);
        const inputs: Array<[string, Map<string, TensorEntry>]> = [[name, readGolden('models', name, 'golden.safetensors')]];
        if (name === 'convnext-tiny-224') inputs.push(['the cat photo', readGolden('models', name, 'end2end-chelsea.safetensors')]);
        const report: string[] = [];
        for (const [what, golden] of inputs) {
          const pixels = golden.get('pixel_values')!;
          const [batch, , height, width] = pixels.shape;
          const expected = floats(golden.get('logits'), 'logits');
          const outputs = await backend.run(floats(pixels), batch, height, width, false);
          const logits = outputs.get('logits')!.data;
          for (const [output, { data }] of outputs) expect(data.every(Number.isFinite), `${what}: ${output} finite`).toBe(true);
          const { maxError } = compare(logits, expected);
          const relative = maxError / maxAbs(expected);
          report.push(`${what}: logits ${maxError.toExponential(2)} = ${relative.toExponential(2)} x max|golden|`);
          expect(relative, `${what}: logits error / max|golden|`).toBeLessThanOrEqual(F16_GOAL);
          expect(topK(logits, logits.length / batch, 5), `${what}: top-5`).toEqual(topK(expected, expected.length / batch, 5));
        }
        console.log(`[webgpu lavapipe f16] ${name} (${matmul}) on ${backend.description}: ${report.join('; ')}`);
      } finally {
        backend.dispose();
      }
    });
  }

  test('ConvNeXt-T at 1024x1024: every output finite', { timeout: 900_000 }, async () => {
    const built = buildGoldenProgram('convnext-tiny-224', { precision: 'f16' });
    const backend = await createWebGpuBackend(built.manifest, built.program, built.weights, { gpu });
    try {
      const size = 1024;
      // The cat photo's normalized pixels tiled over 1024x1024, with the full range of a real image (about -2.1..2.6).
      const cat = readSafetensors(new Uint8Array(readFileSync(goldenPath('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors'))), 'chelsea');
      const photo = imageSlice(floats(cat.get('pixel_values'), 'pixel_values'), [1, 3, 224, 224], 1);
      const input = new Float32Array(3 * size * size);
      for (let c = 0; c < 3; c++) for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) {
        input[(c * size + y) * size + x] = photo[(c * 224 + (y % 224)) * 224 + (x % 224)];
      }
      const started = performance.now();
      const outputs = await backend.run(input, 1, size, size, false);
      const ms = performance.now() - started;
      for (const [name, { data, shape }] of outputs) {
        const bad = data.findIndex((v) => !Number.isFinite(v));
        expect(bad, `${name} ${JSON.stringify(shape)}: first non-finite value at ${bad}`).toBe(-1);
        expect(maxAbs(data), `${name} not all zero`).toBeGreaterThan(0);
      }
      console.log(`[webgpu lavapipe f16] ConvNeXt-T 1024x1024: every output finite, ${ms.toFixed(0)} ms`);
    } finally {
      backend.dispose();
    }
  });
});

describe('a package built with --precision f16, loaded on lavapipe', () => {
  let built: BuiltModule;
  beforeAll(async () => {
    built = await buildToTemp({ input: goldenPath('models', 'v2-micro'), target: 'webgpu', precision: 'f16' });
  }, 300_000);
  afterAll(() => built?.remove());

  test('runs f16 by default and f32 when asked; model.backend says which', { timeout: 300_000 }, async () => {
    const golden = readGolden('models', 'v2-micro', 'golden.safetensors');
    const pixels = golden.get('pixel_values')!;
    const [batch, , height, width] = pixels.shape;
    const expected = floats(golden.get('logits'), 'logits');
    for (const [precision, pattern, bar] of [[undefined, /, f16 \(statistics and accumulation in f32\), subgroup kernels$/, F16_GOAL * maxAbs(expected)], ['f32', /, f32, subgroup kernels$/, 1e-4 * Math.max(1, maxAbs(expected))]] as const) {
      const model = await built.load({ gpu, precision });
      try {
        expect(model.backend).toMatch(pattern);
        const { logits } = await model.run(floats(pixels), { batch, height, width });
        expect(compare(logits!, expected).maxError, `${precision ?? 'default'} logits`).toBeLessThanOrEqual(bar);
      } finally {
        model.dispose();
      }
    }
  });
});
