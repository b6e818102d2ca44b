import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { bindCheckpoint, expectedTensors } from '../compiler/checkpoint.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { goldenPath } from './helpers/golden.js';

const microTensors = () => readSafetensors(new Uint8Array(readFileSync(goldenPath('models', 'micro', 'model.safetensors'))), 'model.safetensors');
const microSpec = (extra = {}) => parseModelConfig({ ...JSON.parse(readFileSync(goldenPath('models', 'micro', 'config.json'), 'utf8')), ...extra }, 'config.json');

describe('checkpoint binding', () => {
  test('expected names are exactly the golden checkpoints\' names', () => {
    for (const dir of ['micro', 'small-bf16', 'v2-micro', 'convnext-tiny-224', 'micro/backbone']) {
      const tensors = readSafetensors(new Uint8Array(readFileSync(goldenPath('models', dir, 'model.safetensors'))), dir);
      const spec = parseModelConfig(JSON.parse(readFileSync(goldenPath('models', dir, 'config.json'), 'utf8')), dir, { tensorNames: tensors.keys() });
      const expected = expectedTensors(spec);
      expect(new Set(expected.map((t) => t.name))).toEqual(new Set(tensors.keys()));
      for (const t of expected) expect(tensors.get(t.name)!.shape, t.name).toEqual(t.shape);
    }
  });

  test('missing, unexpected and misshapen tensors are all reported at once, by name', () => {
    const tensors = microTensors();
    tensors.delete('convnext.encoder.stages.2.layers.1.pwconv2.weight');
    tensors.delete('classifier.bias');
    tensors.set('convnext.extra.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) });
    const dw = tensors.get('convnext.encoder.stages.0.layers.0.dwconv.weight')!;
    tensors.set('convnext.encoder.stages.0.layers.0.dwconv.weight', { ...dw, shape: [8, 1, 3, 3], data: new Float32Array(72) });
    let message = '';
    try {
      bindCheckpoint(microSpec(), tensors, 'model.safetensors');
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/4 problems/);
    expect(message).toMatch(/missing tensor convnext\.encoder\.stages\.2\.layers\.1\.pwconv2\.weight \[32,128\]/);
    expect(message).toMatch(/missing tensor classifier\.bias \[10\]/);
    expect(message).toMatch(/wrong shape: convnext\.encoder\.stages\.0\.layers\.0\.dwconv\.weight is \[8,1,3,3\], expected \[8,1,7,7\]/);
    expect(message).toMatch(/unexpected tensor convnext\.extra\.weight/);
  });

  test('a config that disagrees with the checkpoint (labels) is caught', () => {
    expect(() => bindCheckpoint(microSpec({ num_labels: 7 }), microTensors(), 'model.safetensors')).toThrow(/classifier\.weight is \[10,64\], expected \[7,64\]/);
  });

  test('non-finite weights are refused', () => {
    const tensors = microTensors();
    (tensors.get('convnext.layernorm.bias')!.data as Float32Array)[3] = NaN;
    expect(() => bindCheckpoint(microSpec(), tensors, 'model.safetensors')).toThrow(/convnext\.layernorm\.bias holds a non-finite value \(NaN\) at index 3/);
  });
});
