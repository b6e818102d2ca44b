/**
 * The WASM target against every golden case: every output (hidden states, backbone
 * feature maps, pooler, logits) within 1e-4 * max(1, max|golden|), through the built
 * npm package exactly as a user loads it.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { decodeImageFile } from '../compiler/image.js';
import type { ConvNextModel } from '../runtime/model.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { compare, floats, goldenPairs, goldenPath, readGolden } from './helpers/golden.js';

const CASES = [
  { name: 'micro', dir: 'micro', golden: 'micro' },
  { name: 'micro backbone', dir: 'micro/backbone', golden: 'micro' },
  { name: 'small-bf16', dir: 'small-bf16', golden: 'small-bf16' },
  { name: 'v2-micro', dir: 'v2-micro', golden: 'v2-micro' },
  { name: 'convnext-tiny-224', dir: 'convnext-tiny-224', golden: 'convnext-tiny-224' },
];

describe.each(CASES)('WASM golden: $name', ({ dir, golden: goldenCase }) => {
  let built: BuiltModule;
  const models: Record<string, ConvNextModel> = {};
  beforeAll(async () => {
    built = await buildToTemp({ input: goldenPath('models', dir), target: 'wasm' });
  });
  afterAll(() => {
    for (const model of Object.values(models)) model.dispose();
    built?.remove();
  });

  // Two threads split every spatial kernel's pixels (and V2's GRN sums) between workers.
  test.each([1, 2])('every output within 1e-4 x max(1, max|golden|), %i thread(s)', async (threads) => {
    const model = (models[threads] = await built.load({ threads }));
    expect(model.backend).toMatch(new RegExp(`${threads} threads?`));
    const golden = readGolden('models', goldenCase, 'golden.safetensors');
    const input = golden.get('pixel_values')!;
    const [batch, , height, width] = input.shape;
    const out = await model.run(floats(input), { batch, height, width, outputHiddenStates: true });
    const isBackbone = built.compiled.manifest.head === 'backbone';
    let compared = 0;
    for (const { key, expected: tensor, actual } of goldenPairs(golden, out, isBackbone)) {
      expect(actual, `output ${key} missing`).toBeDefined();
      expect(out.shapes[key.replace('backbone.', '')], `shape of ${key}`).toEqual(tensor.shape);
      const { maxError, tolerance } = compare(actual!, floats(tensor, key));
      expect(maxError, `${key}: max error ${maxError} over tolerance ${tolerance}`).toBeLessThanOrEqual(tolerance);
      compared++;
    }
    expect(compared).toBeGreaterThanOrEqual(isBackbone ? 4 : 3);
  });
});

describe('WASM end to end: chelsea.png through preprocessing and ConvNeXt-T', () => {
  let built: BuiltModule;
  let model: ConvNextModel;
  beforeAll(async () => {
    built = await buildToTemp({ input: goldenPath('models', 'convnext-tiny-224'), target: 'wasm' });
    model = await built.load();
  });
  afterAll(() => {
    model?.dispose();
    built?.remove();
  });

  test('pixel values, logits and top-5 match the golden run', async () => {
    const golden = readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors');
    const image = await decodeImageFile(goldenPath('preprocess', 'chelsea.png'));
    const { pixelValues, height, width } = model.preprocess(image);
    expect([height, width]).toEqual([224, 224]);
    const pixels = compare(pixelValues, floats(golden.get('pixel_values')));
    expect(pixels.maxError).toBeLessThanOrEqual(1e-6);

    const { logits } = await model.run(pixelValues, { batch: 1, height, width });
    const goldenLogits = floats(golden.get('logits'));
    const { maxError, tolerance } = compare(logits!, goldenLogits);
    expect(maxError).toBeLessThanOrEqual(tolerance);

    const top = await model.classify(image, { topK: 5 });
    const expected = Array.from(goldenLogits.keys()).sort((a, b) => goldenLogits[b] - goldenLogits[a]).slice(0, 5);
    expect(top.map((t) => t.index)).toEqual(expected);
    expect(top[0].label).toBe(built.compiled.manifest.labels[expected[0]]);
    const scoreSum = top.reduce((s, t) => s + t.score, 0);
    expect(scoreSum).toBeGreaterThan(0);
    expect(scoreSum).toBeLessThanOrEqual(1 + 1e-9);
  });

  test('loss is transformers cross-entropy', async () => {
    const logits = new Float32Array(2000).map((_, i) => Math.sin(i));
    const labels = [3, 999];
    let expected = 0;
    for (let b = 0; b < 2; b++) {
      const row = Array.from(logits.subarray(b * 1000, (b + 1) * 1000));
      const max = Math.max(...row);
      const logSum = Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max;
      expected += logSum - row[labels[b]];
    }
    expect(model.loss(logits, labels)).toBeCloseTo(expected / 2, 10);
    expect(() => model.loss(logits, [3, 1000])).toThrow(/label 1000/);
  });
});
