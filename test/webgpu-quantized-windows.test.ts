/**
 * Weight windows and buffers of q8/q4 WebGPU programs (layouts only, no weights): a quantized
 * matrix's scales live at their own offset, outside its field, so every kernel that reads the
 * matrix must bind a window covering both, and the buffers planWeightChunks makes must hold those
 * windows whole, also when the device's maxBufferSize forces many buffers.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { packingFor } from '../compiler/build.js';
import { parseModelConfig } from '../compiler/config.js';
import { layoutWeights, type WeightField } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import { planWeightChunks } from '../runtime/webgpu.js';

function quantizedProgram(configName: string, dtype: 'q8' | 'q4') {
  const path = new URL(`../examples/configs/${configName}/config.json`, import.meta.url);
  const spec = parseModelConfig(JSON.parse(readFileSync(path, 'utf8')), configName);
  const layout = layoutWeights(spec, packingFor(WEBGPU_PACKING, dtype));
  return { layout, program: renderWebGpu(planModel(spec, layout), layout) };
}

/** [start, end) word ranges of a quantized matrix: its values and its scales. */
function quantizedRanges(field: WeightField): Array<[number, number]> {
  if (field.layout.kind !== 'matrix' || !field.layout.quantized) return [];
  const { scales } = field.layout.quantized;
  return [[field.offset, field.offset + field.length], [scales.offset, scales.offset + scales.words]];
}

describe.each(['q8', 'q4'] as const)('%s WebGPU weight windows', (dtype) => {
  test.each(['convnext-tiny-224', 'convnextv2-atto-224'])('%s: every quantized matrix is bound whole, scales included, and fits its buffer', (name) => {
    const { layout, program } = quantizedProgram(name, dtype);
    const windows = program.kernels.flatMap((kernel) => kernel.bindings.flatMap(({ resource }) => (resource.kind === 'weights' ? [resource] : [])));
    const matrices = layout.groups.flatMap((group) => Object.values(group.fields).map(quantizedRanges).filter((r) => r.length > 0));
    // pwconv1, pwconv2 per block, a conv per downsample, the classifier.
    expect(matrices.length).toBe(2 * layout.stages.reduce((n, s) => n + s.blocks.length, 0) + layout.stages.length - 1 + 1);
    for (const [values, scales] of matrices) {
      const covering = windows.filter((w) => w.offset <= values[0] && values[0] < w.offset + w.floats);
      expect(covering.length).toBeGreaterThan(0);
      for (const w of covering) {
        expect(w.offset + w.floats, 'window covers the values').toBeGreaterThanOrEqual(values[1]);
        expect(w.offset <= scales[0] && scales[1] <= w.offset + w.floats, 'window covers the scales').toBe(true);
      }
    }
    // maxBufferSize = the largest window: the windows spread over several buffers, each window inside one.
    const largest = Math.max(...windows.map((w) => w.floats * 4));
    const { chunks, bindings } = planWeightChunks(program, largest);
    expect(chunks.length).toBeGreaterThan(2);
    for (const chunk of chunks) expect((chunk.end - chunk.start) * 4).toBeLessThanOrEqual(largest);
    for (const w of windows) {
      const binding = bindings.get(`${w.offset}+${w.floats}`)!;
      const chunk = chunks[binding.chunk];
      expect(binding.byteOffset % 256).toBe(0);
      expect(chunk.start * 4 + binding.byteOffset).toBe(w.offset * 4);
      expect(binding.bytes).toBe(w.floats * 4);
      expect(chunk.end).toBeGreaterThanOrEqual(w.offset + w.floats);
    }
  });
});
