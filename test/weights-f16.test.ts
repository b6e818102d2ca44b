/**
 * weights.bin stored as float16: half the size, widened to float32 at load. The file holds
 * the packed weights after compile-time folds (LayerNorm affine into pwconv1, layer scale
 * into pwconv2), so even a float16 checkpoint's weights are rounded again: the error this
 * adds is measured and reported beside the float32 one, a declared looser mode.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { floatsToHalves } from '../compiler/half.js';
import { halvesToFloats } from '../runtime/half.js';
import { buildToTemp } from './helpers/build.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';

describe('float16 weights', () => {
  test('every finite half survives half -> float -> half; rounding is to nearest even', () => {
    const halves = new Uint16Array(65536).map((_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00);
    const back = floatsToHalves(halvesToFloats(halves), 'test');
    expect(Array.from(back)).toEqual(Array.from(halves));
    // midpoints between neighbouring halves round to the even one
    const one = 1;
    const ulp = 2 ** -10;
    const mid = new Float32Array([one + ulp / 2, one + (3 * ulp) / 2, -(one + ulp / 2), 2 ** -24 / 2 * 3]);
    const rounded = halvesToFloats(floatsToHalves(mid, 'test'));
    expect(Array.from(rounded)).toEqual([1, 1 + 2 * ulp, -1, 2 ** -23]);
    expect(() => floatsToHalves(new Float32Array([70000]), 'w.safetensors')).toThrow(/outside the float16 range/);
  });

  test.each(['convnext-tiny-224', 'micro'])('%s: golden outputs with f16 weights', async (name) => {
    const f16 = await buildToTemp({ input: goldenPath('models', name), target: 'wasm', weightsDtype: 'f16' });
    const f32 = await buildToTemp({ input: goldenPath('models', name), target: 'wasm' });
    try {
      expect(statSync(join(f16.dir, 'weights.bin')).size * 2).toBe(statSync(join(f32.dir, 'weights.bin')).size);
      const golden = readGolden('models', name, 'golden.safetensors');
      const input = golden.get('pixel_values')!;
      const [batch, , height, width] = input.shape;
      const errors: Record<string, number> = {};
      for (const [label, built] of [['f16', f16], ['f32', f32]] as const) {
        const model = await built.load();
        const { logits } = await model.run(floats(input), { batch, height, width });
        errors[label] = compare(logits!, floats(golden.get('logits'))).maxError;
        model.dispose();
      }
      console.log(`${name}: logits max |error| with f16 weights ${errors.f16.toExponential(2)}, with f32 weights ${errors.f32.toExponential(2)}`);
      expect(errors.f16).toBeGreaterThan(errors.f32); // rounding the weights shows
      expect(errors.f16).toBeLessThan(1e-2 * Math.max(1, Math.max(...floats(golden.get('logits')).map(Math.abs)))); // and stays float16-sized
    } finally {
      f16.remove();
      f32.remove();
    }
  });
});
