/**
 * The WebGPU target as users get it: a built package loaded through its index.js on Dawn
 * (SwiftShader here), checked against the goldens and against the WASM package of the same
 * checkpoint: two backends, one answer.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { nodeGpu } from '../compiler/node-gpu.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';

let gpu: GPU;
beforeAll(async () => {
  gpu = await nodeGpu();
});

describe.each(['micro', 'v2-micro'])('WebGPU package: %s', (name) => {
  const built: BuiltModule[] = [];
  afterAll(() => built.forEach((b) => b.remove()));

  test('golden outputs, and the WASM package agrees', async () => {
    const webgpu = await buildToTemp({ input: goldenPath('models', name), target: 'webgpu' });
    const wasm = await buildToTemp({ input: goldenPath('models', name), target: 'wasm' });
    built.push(webgpu, wasm);
    expect(webgpu.compiled.manifest.target).toBe('webgpu');
    const golden = readGolden('models', name, 'golden.safetensors');
    const input = golden.get('pixel_values')!;
    const [batch, , height, width] = input.shape;
    const gpuModel = await webgpu.load({ gpu });
    const cpuModel = await wasm.load();
    try {
      expect(gpuModel.backend).toMatch(/WebGPU/i);
      const onGpu = await gpuModel.run(floats(input), { batch, height, width, outputHiddenStates: true });
      const onCpu = await cpuModel.run(floats(input), { batch, height, width, outputHiddenStates: true });
      const pairs: Array<[string, Float32Array | undefined, Float32Array | undefined]> = [
        ['logits', onGpu.logits, onCpu.logits],
        ['pooler_output', onGpu.poolerOutput, onCpu.poolerOutput],
        ['last_hidden_state', onGpu.lastHiddenState, onCpu.lastHiddenState],
        ...onGpu.hiddenStates!.map((h, k) => [`hidden_states.${k}`, h, onCpu.hiddenStates![k]] as [string, Float32Array, Float32Array]),
      ];
      for (const [key, gpuOut, cpuOut] of pairs) {
        const vsGolden = compare(gpuOut!, floats(golden.get(key), key));
        expect(vsGolden.maxError, `${key} vs golden`).toBeLessThanOrEqual(vsGolden.tolerance);
        const vsWasm = compare(gpuOut!, cpuOut!);
        expect(vsWasm.maxError, `${key}: WebGPU vs WASM`).toBeLessThanOrEqual(vsGolden.tolerance);
      }
    } finally {
      gpuModel.dispose();
      cpuModel.dispose();
    }
  });
});
