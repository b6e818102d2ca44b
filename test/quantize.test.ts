/**
 * The q8/q4 weights format (compiler/quantize.ts): every element has one place, every byte belongs
 * to one element, values round to the nearest grid point of their scale, and the layout marks
 * exactly the matrices it quantizes. Kernels of both targets read these bytes as they are, so the
 * order is checked element by element, not only through a round trip.
 */
import { describe, expect, test } from 'vitest';
import { dequantizedValue, quantizeMatrix, quantizedIndex, quantizedSizes, scaleIndex, type QuantizedDtype } from '../compiler/quantize.js';
import { layoutWeights } from '../compiler/layout.js';
import { loadModelSource, packingFor } from '../compiler/build.js';
import { WASM_PACKING } from '../compiler/wasm.js';
import { WEBGPU_PACKING } from '../compiler/webgpu.js';
import { halvesToFloats } from '../runtime/half.js';
import { goldenPath } from './helpers/golden.js';

/** A deterministic, sign-mixed source with a few exact zeros and columns of very different ranges. */
const source = (k: number, n: number) => (k * 7 + n * 3) % 11 === 0 ? 0 : Math.sin(k * 12.9898 + n * 78.233) * (1 + (n % 5)) * 0.01;

const SHAPES = [
  { rows: 12, columns: 16, panelWidth: 8, kGroup: 2 },   // WASM: panels of 8, k-pairs
  { rows: 40, columns: 24, panelWidth: 8, kGroup: 2 },   // K not a multiple of 32: a partial q4 block
  { rows: 20, columns: 12, panelWidth: 0, kGroup: 4 },   // WebGPU: one panel, k-quads
  { rows: 100, columns: 6, panelWidth: 0, kGroup: 4 },
];

function quantized(dtype: QuantizedDtype, shape: (typeof SHAPES)[number], kReal = shape.rows, nReal = shape.columns) {
  const { valueWords, scaleWords, blockRows } = quantizedSizes(dtype, shape);
  const values = new Uint8Array(valueWords * 4);
  const scales = new Uint8Array(scaleWords * 4);
  quantizeMatrix(dtype, shape, kReal, nReal, source, values, scales);
  return { values, scales, storage: { bits: dtype === 'q8' ? 8 as const : 4 as const, blockRows, kGroup: shape.kGroup } };
}

describe('quantized matrix format', () => {
  test.each(SHAPES)('element order is a bijection onto the value bytes: %o', (shape) => {
    const seen = new Set<number>();
    for (let k = 0; k < shape.rows; k++) for (let n = 0; n < shape.columns; n++) seen.add(quantizedIndex(k, n, shape));
    expect(seen.size).toBe(shape.rows * shape.columns);
    expect(Math.min(...seen)).toBe(0);
    expect(Math.max(...seen)).toBe(shape.rows * shape.columns - 1);
    // the documented formula, spelled out once for a middle element
    const W = shape.panelWidth || shape.columns;
    const [k, n] = [shape.rows - 1, shape.columns - 1];
    expect(quantizedIndex(k, n, shape)).toBe(Math.floor(n / W) * shape.rows * W + (Math.floor(k / shape.kGroup) * W + (n % W)) * shape.kGroup + (k % shape.kGroup));
  });

  test.each(SHAPES.flatMap((shape) => (['q8', 'q4'] as const).map((dtype) => [dtype, shape] as const)))('%s round trip stays within half a step: %o', (dtype, shape) => {
    const { values, scales, storage } = quantized(dtype, shape);
    const blocks = Math.ceil(shape.rows / storage.blockRows);
    const view = new DataView(scales.buffer);
    for (let n = 0; n < shape.columns; n++) {
      for (let k = 0; k < shape.rows; k++) {
        const b = Math.floor(k / storage.blockRows);
        const at = scaleIndex(b, n, blocks, shape);
        const scale = dtype === 'q8' ? view.getFloat32(at * 4, true) : halvesToFloats(new Uint16Array([view.getUint16(at * 2, true)]))[0];
        const value = dequantizedValue(storage, shape, values, scales, k, n);
        expect(Math.abs(value - source(k, n))).toBeLessThanOrEqual(scale / 2 * (1 + 1e-6) + (dtype === 'q4' ? scale * 0.01 : 0));
        if (source(k, n) === 0) expect(value).toBe(0);
      }
    }
  });

  test('q8 bytes are int8 per column scale; q4 nibbles pair consecutive elements', () => {
    const shape = SHAPES[0];
    const q8 = quantized('q8', shape);
    // the largest magnitude of every column lands on +-127
    for (let n = 0; n < shape.columns; n++) {
      const column = Array.from({ length: shape.rows }, (_, k) => (q8.values[quantizedIndex(k, n, shape)] << 24) >> 24);
      expect(Math.max(...column.map(Math.abs))).toBe(127);
    }
    const q4 = quantized('q4', shape);
    for (let k = 0; k < shape.rows; k++) {
      for (let n = 0; n < shape.columns; n++) {
        const e = quantizedIndex(k, n, shape);
        const nibble = (q4.values[e >> 1] >> ((e & 1) * 4)) & 15;
        expect(nibble).toBeGreaterThanOrEqual(0);
        expect(nibble - 8).toBeGreaterThanOrEqual(-8);
        expect(nibble - 8).toBeLessThanOrEqual(7);
      }
    }
  });

  test('padding columns and rows quantize to zero', () => {
    const shape = SHAPES[1];
    const { values, scales, storage } = quantized('q8', shape, 30, 21);
    for (let k = 0; k < shape.rows; k++) {
      for (let n = 0; n < shape.columns; n++) if (k >= 30 || n >= 21) expect(dequantizedValue(storage, shape, values, scales, k, n)).toBe(0);
    }
  });

  test('quantizedSizes refuses shapes the order cannot hold', () => {
    expect(() => quantizedSizes('q8', { rows: 10, columns: 8, panelWidth: 8, kGroup: 4 })).toThrow(/k-group/);
    expect(() => quantizedSizes('q4', { rows: 8, columns: 12, panelWidth: 8, kGroup: 2 })).toThrow(/panel width/);
  });
});

describe('quantized layouts of ConvNeXt-T', () => {
  const spec = loadModelSource({ input: goldenPath('models', 'convnext-tiny-224', 'config.json') }).spec;

  test.each([['wasm', WASM_PACKING], ['webgpu', WEBGPU_PACKING]] as const)('%s: sizes meet the goals, and exactly the big matrices are quantized', (_, packing) => {
    const bytes = (dtype: 'f32' | 'q8' | 'q4') => layoutWeights(spec, packingFor(packing, dtype)).floats * 4;
    console.log(`ConvNeXt-T weights.bin: f32 ${(bytes('f32') / 1e6).toFixed(2)} MB, q8 ${(bytes('q8') / 1e6).toFixed(2)} MB, q4 ${(bytes('q4') / 1e6).toFixed(2)} MB`);
    expect(bytes('q8')).toBeLessThanOrEqual(30e6); // transformers.js's q8 file: 31.3 MB
    expect(bytes('q4')).toBeLessThanOrEqual(18e6); // its q4f16 file: 20.2 MB
    const layout = layoutWeights(spec, packingFor(packing, 'q8'));
    const quantizedFields = layout.groups.flatMap((g) => Object.entries(g.fields)
      .filter(([, f]) => f?.layout.kind === 'matrix' && f.layout.quantized).map(([name]) => `${g.key.replace(/\.\d+/g, '.N')}:${name}`));
    expect(new Set(quantizedFields)).toEqual(new Set(['stages.N.downsample:weight', 'stages.N.blocks.N:pw1Weight', 'stages.N.blocks.N:pw2Weight', 'classifier:weight']));
    // scales lie inside their group, past the values, and no two fields overlap
    for (const group of layout.groups) {
      const ranges = Object.values(group.fields).flatMap((f) => f ? [[f.offset, f.offset + f.length], ...(f.layout.kind === 'matrix' && f.layout.quantized ? [[f.layout.quantized.scales.offset, f.layout.quantized.scales.offset + f.layout.quantized.scales.words]] : [])] : []);
      ranges.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).toBeGreaterThanOrEqual(ranges[i - 1][1]);
      expect(ranges[ranges.length - 1][1]).toBeLessThanOrEqual(group.offset + group.floats);
      expect(group.dtype).toBe(ranges.length > Object.keys(group.fields).length ? 'q8' : 'f32');
    }
  });
});
