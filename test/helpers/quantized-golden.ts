/**
 * q8 and q4 packages (issue 10) against golden cases, built and loaded as a user does. Every output
 * is compared with the float64 goldens and its error printed; the bars are the declared ones of
 * compiler/compare.ts (relative to max(1, max|golden|)). On ConvNeXt-T the q8 logits must keep the
 * golden top-5 classes, in order, on both golden inputs and on the cat photo end to end; q4's top-5
 * is reported (4 bits cannot keep it on these uniform random weights). Used by
 * test/quantized-golden.test.ts (WASM, and WebGPU on SwiftShader) and
 * test/quantized-lavapipe.test.ts (WebGPU on lavapipe).
 */
import { afterAll, describe, expect, test } from 'vitest';
import { decodeImageFile } from '../../compiler/image.js';
import { compareToGolden, keptTop5, topK } from '../../compiler/compare.js';
import type { WeightsFileDtype } from '../../runtime/types.js';
import { buildToTemp, type BuiltModule } from './build.js';
import { floats, goldenPairs, goldenPath, readGolden } from './golden.js';

export const QUANTIZED_CASES = [
  { name: 'micro', dir: 'micro', golden: 'micro' },
  { name: 'micro backbone', dir: 'micro/backbone', golden: 'micro' },
  { name: 'small-bf16', dir: 'small-bf16', golden: 'small-bf16' },
  { name: 'v2-micro', dir: 'v2-micro', golden: 'v2-micro' },
  { name: 'convnext-tiny-224', dir: 'convnext-tiny-224', golden: 'convnext-tiny-224' },
];

/** One dtype on one target (WebGPU: on the GPU entry point `gpu` gives) over `cases`, and the cat photo through ConvNeXt-T. */
export function describeQuantizedGoldens(
  { target, dtype, gpu, label = target, cases = QUANTIZED_CASES, matmul, backend }:
  {
    target: 'wasm' | 'webgpu'; dtype: Extract<WeightsFileDtype, 'q8' | 'q4'>; gpu?: () => GPU; label?: string; cases?: typeof QUANTIZED_CASES;
    /** WebGPU: which matrix kernels to ask load() for, and what model.backend must then say. */
    matmul?: 'auto' | 'tiles' | 'subgroups'; backend?: RegExp;
  },
): void {
  describe(`${dtype} on ${label}`, () => {
    const built: BuiltModule[] = [];
    afterAll(() => {
      for (const b of built) b.remove();
    });

    const load = async (dir: string) => {
      const module = await buildToTemp({ input: goldenPath('models', dir), target, weightsDtype: dtype });
      built.push(module);
      expect(module.compiled.manifest.weights.dtype).toBe(dtype);
      const model = await module.load(target === 'webgpu' ? { gpu: gpu!(), matmul } : {});
      if (backend) expect(model.backend).toMatch(backend);
      return { module, model };
    };

    test.each(cases)(`$name: every output within ${dtype}'s bar`, { timeout: 600_000 }, async ({ dir, golden: goldenCase }) => {
      const { module, model } = await load(dir);
      try {
        const golden = readGolden('models', goldenCase, 'golden.safetensors');
        const input = golden.get('pixel_values')!;
        const [batch, , height, width] = input.shape;
        const out = await model.run(floats(input), { batch, height, width, outputHiddenStates: true });
        const isBackbone = module.compiled.manifest.head === 'backbone';
        const report: string[] = [];
        let compared = 0;
        for (const { key, expected: tensor, actual } of goldenPairs(golden, out, isBackbone)) {
          expect(actual, `output ${key} missing`).toBeDefined();
          const { maxError, tolerance, maxGolden } = compareToGolden(actual!, floats(tensor, key), dtype);
          report.push(`${key} ${(maxError / Math.max(1, maxGolden)).toExponential(2)}`);
          expect(maxError, `${key}: max error ${maxError} over ${dtype}'s tolerance ${tolerance}`).toBeLessThanOrEqual(tolerance);
          compared++;
        }
        expect(compared).toBeGreaterThanOrEqual(isBackbone ? 4 : 3);
        const logits = golden.get('logits');
        const kept = out.logits && logits && logits.shape[1] >= 5 ? keptTop5(out.logits, floats(logits), logits.shape[1]) : undefined;
        console.log(`${dtype} ${label} ${dir}: error / max(1, max|golden|): ${report.join(', ')}${kept ? `; top-5 kept ${kept.filter(Boolean).length}/${kept.length}` : ''}`);
        if (dir === 'convnext-tiny-224' && dtype === 'q8') expect(kept).toEqual([true, true]);
      } finally {
        model.dispose();
      }
    });

    test('ConvNeXt-T end to end on chelsea.png: top-5 of the golden run', { timeout: 600_000 }, async () => {
      const { model } = await load('convnext-tiny-224');
      try {
        const golden = readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors');
        const image = await decodeImageFile(goldenPath('preprocess', 'chelsea.png'));
        const top = await model.classify(image, { topK: 5 });
        const expected = topK(floats(golden.get('logits')), 1000, 5)[0];
        console.log(`${dtype} ${label} chelsea.png top-5: ${top.map((t) => t.index).join(',')} (golden ${expected.join(',')})`);
        if (dtype === 'q8') expect(top.map((t) => t.index)).toEqual(expected);
        else expect(top.every((t) => Number.isFinite(t.score))).toBe(true);
      } finally {
        model.dispose();
      }
    });
  });
}
