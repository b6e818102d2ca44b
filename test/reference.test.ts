/**
 * Proves the float64 reference (test/helpers/reference.ts) against the golden
 * fixtures, so that it can stand in for them where none exist (odd sizes, other
 * activations, other heads). The bar here is ten times tighter than the targets':
 * every output within 1e-5 * max(1, max |golden|).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { bindCheckpoint, type CheckpointWeights } from '../compiler/checkpoint.js';
import { erf, REFERENCE_ACTIVATIONS, referenceForward, type RefTensor } from './helpers/reference.js';
import { floats, goldenPath, hasGolden, readGolden } from './helpers/golden.js';
import { ACTIVATIONS } from '../runtime/types.js';

const REFERENCE_BAR = 1e-5;

function loadCase(folder: string): { spec: ModelSpec; weights: CheckpointWeights } {
  const dir = goldenPath('models', folder);
  const tensors = readSafetensors(new Uint8Array(readFileSync(`${dir}/model.safetensors`)), `${dir}/model.safetensors`);
  const spec = parseModelConfig(JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')), `${dir}/config.json`, { tensorNames: tensors.keys() });
  return { spec, weights: bindCheckpoint(spec, tensors, `${dir}/model.safetensors`) };
}

/** max |ref - golden| over the first `count` values (all by default), and the bar. */
function measure(ref: RefTensor, golden: Float32Array, count = golden.length): { maxError: number; bar: number } {
  let maxError = 0;
  let maxGolden = 0;
  for (let i = 0; i < count; i++) {
    const error = Math.abs(ref.data[i] - golden[i]);
    if (!(error <= maxError)) maxError = Number.isNaN(error) ? Infinity : error;
    maxGolden = Math.max(maxGolden, Math.abs(golden[i]));
  }
  return { maxError, bar: REFERENCE_BAR * Math.max(1, maxGolden) };
}

describe('erf (float64)', () => {
  // Python's math.erf / math.erfc (correctly rounded to a few ulp).
  const table: Array<[number, number]> = [
    [1e-8, 1.1283791670955126e-8], [0.1, 0.1124629160182849], [0.5, 0.5204998778130465],
    [-0.7, -0.6778011938374184], [1, 0.8427007929497149], [1.5, 0.9661051464753108],
    [2, 0.9953222650189527], [2.5, 0.999593047982555], [2.999, 0.9999777698314002],
    [3, 0.9999779095030014], [3.001, 0.9999780483390822], [3.5, 0.9999992569016276],
    [4, 0.9999999845827421], [5, 0.9999999999984626],
  ];
  test.each(table)('erf(%f)', (x, expected) => {
    expect(Math.abs(erf(x) - expected)).toBeLessThanOrEqual(1e-15 * Math.max(1e-8, Math.abs(expected)) + 2e-16);
    expect(erf(-x)).toBe(-erf(x));
  });
  test('erfc tail is accurate relative to its size', () => {
    // erfc(4) = 1.541725790028002e-08, erfc(3) = 2.2090496998585438e-05
    expect(Math.abs(1 - erf(4) - 1.541725790028002e-8)).toBeLessThan(1e-15);
    expect(Math.abs(1 - erf(3) - 2.2090496998585438e-5)).toBeLessThan(1e-15);
    expect(erf(30)).toBe(1);
    expect(erf(0)).toBe(0);
  });
  test('every activation has a reference formula', () => {
    for (const name of ACTIVATIONS) expect(typeof REFERENCE_ACTIVATIONS[name], name).toBe('function');
    // Spot values of the definitions (transformers' ACT2FN).
    const f = REFERENCE_ACTIVATIONS;
    expect(f.gelu(1)).toBeCloseTo(0.8413447460685429, 14);
    expect(f.gelu_new(1)).toBeCloseTo(0.8411919906082768, 14);
    expect(f.gelu_10(20)).toBe(10);
    expect(f.quick_gelu(1)).toBeCloseTo(1 / (1 + Math.exp(-1.702)), 14);
    expect(f.laplace(0.707107)).toBeCloseTo(0.5, 14);
    expect(f.leaky_relu(-2)).toBeCloseTo(-0.02, 14);
    expect(f.mish(1)).toBeCloseTo(Math.tanh(Math.log(1 + Math.E)), 14);
    expect(f.relu2(-1)).toBe(0);
    expect(f.relu2(3)).toBe(9);
    expect(f.relu6(7)).toBe(6);
    expect(f.silu(-800)).toBeCloseTo(0, 14);
    expect(f.mish(-800)).toBeCloseTo(0, 14);
    expect(Number.isFinite(f.mish(800))).toBe(true);
  });
});

interface Case {
  /** Model folder under models/. */
  folder: string;
  /** Folder of golden.safetensors under models/. */
  goldenFolder: string;
  /** Key prefix of this case's outputs in the golden file. */
  prefix: string;
  /** Only the first batch item (big models). */
  firstItemOnly?: boolean;
}

const CASES: Case[] = [
  { folder: 'micro', goldenFolder: 'micro', prefix: '' },
  { folder: 'micro/backbone', goldenFolder: 'micro', prefix: 'backbone.' },
  { folder: 'small-bf16', goldenFolder: 'small-bf16', prefix: '' },
  { folder: 'v2-micro', goldenFolder: 'v2-micro', prefix: '' },
  // ~4.5 GFLOP in naive float64 loops: one batch item only.
  { folder: 'convnext-tiny-224', goldenFolder: 'convnext-tiny-224', prefix: '', firstItemOnly: true },
];

describe.skipIf(!hasGolden())('reference against the goldens', () => {
  for (const c of CASES) {
    test(c.folder, () => {
      const { spec, weights } = loadCase(c.folder);
      const golden = readGolden('models', c.goldenFolder, 'golden.safetensors');
      const pixelTensor = golden.get('pixel_values')!;
      const [n, channels, h, w] = pixelTensor.shape;
      const batch = c.firstItemOnly ? 1 : n;
      const pixels = floats(pixelTensor).subarray(0, batch * channels * h * w);
      const outputs = referenceForward(spec, weights, pixels, batch, h, w);

      const keys = [...golden.keys()].filter((key) => key !== 'pixel_values' && key.startsWith(c.prefix) && (c.prefix !== '' || !key.startsWith('backbone.')));
      expect(keys.length).toBeGreaterThan(0);
      const report: string[] = [];
      for (const key of keys) {
        const name = key.slice(c.prefix.length);
        const ref = outputs.get(name);
        expect(ref, `reference has no ${name}`).toBeDefined();
        const goldenTensor = golden.get(key)!;
        expect(ref!.shape.slice(1), name).toEqual(goldenTensor.shape.slice(1));
        expect(ref!.shape[0], name).toBe(batch);
        const perItem = goldenTensor.shape.slice(1).reduce((a, b) => a * b, 1);
        const { maxError, bar } = measure(ref!, floats(goldenTensor), batch * perItem);
        report.push(`${name} ${maxError.toExponential(2)}`);
        expect(maxError, `${c.folder} ${name}: max error ${maxError} over bar ${bar}`).toBeLessThanOrEqual(bar);
      }
      // Backbones also give every hidden state and the last one; heads decide the rest.
      if (spec.head === 'backbone') {
        expect(outputs.has('logits')).toBe(false);
        expect(outputs.has('pooler_output')).toBe(false);
      } else {
        expect(outputs.has('feature_maps.0')).toBe(false);
      }
      console.log(`reference ${c.folder}: ${report.join(', ')}`);
    }, 120_000);
  }
});
