/**
 * Every published size on WebGPU: the weights of ConvNeXt V2-huge (2.6 GB) are split across
 * buffers no larger than the device allows, each kernel's window bound alone at an aligned
 * offset. Lavapipe and the WebGPU defaults allow 128 MiB per storage binding; 256 MiB and
 * 128 MiB buffers are both checked by planning alone, then a model with 260 MiB of weights runs on
 * a device with WebGPU's default limits (Dawn on SwiftShader), its weights in two buffers, and
 * agrees with the WASM build of the same checkpoint.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { expectedTensors } from '../compiler/checkpoint.js';
import { writeSafetensors } from '../compiler/safetensors.js';
import { nodeGpu } from '../compiler/node-gpu.js';
import { compare } from './helpers/golden.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import { layoutWeights } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import { planWeightChunks } from '../runtime/webgpu.js';

const MIB = 2 ** 20;
const BINDING_LIMIT = 128 * MIB;

function program(configName: string) {
  const path = new URL(`../examples/configs/${configName}/config.json`, import.meta.url);
  return programFor(parseModelConfig(JSON.parse(readFileSync(path, 'utf8')), configName));
}

function programFor(spec: ModelSpec) {
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

describe('on a device with WebGPU\'s default limits (256 MiB buffers, 128 MiB bindings)', () => {
  const work = mkdtempSync(join(tmpdir(), 'cxc-chunks-'));
  const built: BuiltModule[] = [];
  afterAll(() => {
    built.forEach((b) => b.remove());
    rmSync(work, { recursive: true, force: true });
  });

  test('weights split across two buffers give the WASM build\'s outputs', async () => {
    // Two 2048-channel blocks: 2 x 128 MiB of pointwise weights, cheap to run at the smallest input.
    const config = { model_type: 'convnext', hidden_sizes: [8, 16, 32, 2048], depths: [1, 1, 1, 2], num_labels: 10, image_size: 32 };
    const dir = join(work, 'wide');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const spec = parseModelConfig(config, 'wide');
    let seed = 1;
    const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5);
    const tensors = expectedTensors(spec).map(({ name, shape }) => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      const isScale = /layernorm\.weight$|downsampling_layer\.0\.weight$/.test(name);
      for (let i = 0; i < data.length; i++) data[i] = isScale ? 1 + 0.2 * random() : 0.05 * random();
      return [name, { shape, data }] as [string, { shape: number[]; data: Float32Array }];
    });
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors));
    tensors.length = 0;

    const gpu = await nodeGpu();
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error('Dawn found no adapter: install chromium and libvulkan1');
    const device = await adapter.requestDevice();
    expect(device.limits.maxStorageBufferBindingSize).toBe(128 * MIB);
    const webgpu = await buildToTemp({ input: dir, target: 'webgpu' });
    built.push(webgpu);
    // The same program the package runs: its weights need two of this device's buffers.
    expect(planWeightChunks(programFor(spec).program, device.limits.maxBufferSize).chunks.length).toBe(2);
    const wasm = await buildToTemp({ input: dir, target: 'wasm' });
    built.push(wasm);
    expect(webgpu.compiled.manifest.weights.floats * 4).toBeGreaterThan(device.limits.maxBufferSize);

    const input = new Float32Array(3 * 32 * 32).map(() => 2 * random());
    const onGpu = await webgpu.load({ device });
    const onCpu = await wasm.load();
    try {
      const gpuOut = await onGpu.run(input, { batch: 1, height: 32, width: 32 });
      const cpuOut = await onCpu.run(input, { batch: 1, height: 32, width: 32 });
      const { maxError, tolerance } = compare(gpuOut.logits!, cpuOut.logits!);
      expect(maxError).toBeLessThanOrEqual(tolerance);
      expect(cpuOut.logits!.some((v) => v !== 0)).toBe(true);
    } finally {
      onGpu.dispose();
      onCpu.dispose();
      device.destroy();
    }
  }, 300_000);
});
