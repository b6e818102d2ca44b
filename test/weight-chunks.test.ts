/**
 * Every published size on WebGPU: the weights of ConvNeXt V2-huge (2.6 GB) are split across
 * buffers no larger than the device allows, each kernel's window bound alone at an aligned
 * offset. Lavapipe and the WebGPU defaults allow 128 MiB per storage binding; 256 MiB and
 * 128 MiB buffers are both checked. Pure planning: no GPU and no weights needed.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { layoutWeights } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import { planWeightChunks } from '../runtime/webgpu.js';

const MIB = 2 ** 20;
const BINDING_LIMIT = 128 * MIB;

function program(configName: string) {
  const path = new URL(`../examples/configs/${configName}/config.json`, import.meta.url);
  const spec = parseModelConfig(JSON.parse(readFileSync(path, 'utf8')), configName);
  const layout = layoutWeights(spec, WEBGPU_PACKING);
  return { program: renderWebGpu(planModel(spec, layout), layout), floats: layout.floats };
}

describe('WebGPU weight windows of every published size fit a 128 MiB binding', () => {
  // ConvNeXt-XLarge's pwconv1 and pwconv2 are 64 MiB each: together (plus biases) just over 128 MiB.
  test.each(['convnext-xlarge-384', 'convnextv2-huge-224', 'convnext-tiny-224', 'convnextv2-atto-224'])('%s', (name) => {
    const { program: built } = program(name);
    const sizes = built.kernels.flatMap((kernel) => kernel.bindings.flatMap(({ resource }) => (resource.kind === 'weights' ? [resource.floats * 4] : [])));
    expect(Math.max(...sizes)).toBeLessThanOrEqual(BINDING_LIMIT);
    for (const shader of built.shaders) expect(shader.storageBuffers).toBeLessThanOrEqual(8);
  });
});

describe('WebGPU weight buffers for the largest published model', () => {
  const huge = program('convnextv2-huge-224');
  const windows = huge.program.kernels.flatMap((kernel) => kernel.bindings.flatMap(({ resource }) => (resource.kind === 'weights' ? [resource] : [])));

  test('V2-huge has 2.6 GB of weights, every kernel window under the 128 MiB binding limit', () => {
    expect(huge.floats * 4).toBeGreaterThan(2.6e9);
    expect(Math.max(...windows.map((w) => w.floats * 4))).toBeLessThanOrEqual(BINDING_LIMIT);
  });

  test.each([256 * MIB, 128 * MIB])('buffers of at most %d bytes: each window whole in one, at a 256-byte aligned offset', (maxBufferBytes) => {
    const { chunks, bindings } = planWeightChunks(huge.program, maxBufferBytes);
    expect(chunks.length).toBeGreaterThanOrEqual(Math.ceil((huge.floats * 4) / maxBufferBytes));
    for (const chunk of chunks) expect((chunk.end - chunk.start) * 4).toBeLessThanOrEqual(maxBufferBytes);
    for (const window of windows) {
      const binding = bindings.get(`${window.offset}+${window.floats}`)!;
      const chunk = chunks[binding.chunk];
      expect(binding.byteOffset % 256).toBe(0);
      expect(binding.bytes).toBe(window.floats * 4);
      expect(chunk.start * 4 + binding.byteOffset).toBe(window.offset * 4);
      expect(binding.byteOffset + binding.bytes).toBeLessThanOrEqual((chunk.end - chunk.start) * 4);
    }
    // Chunks follow each other without overlap, so every weight is uploaded once.
    for (let i = 1; i < chunks.length; i++) expect(chunks[i].start).toBeGreaterThanOrEqual(chunks[i - 1].end);
  });
});
