/**
 * --target webgpu --weights-dtype q8 / q4 as users get it: built packages of the golden micro
 * (ConvNeXt) and v2-micro (ConvNeXt V2, GRN) checkpoints, loaded through their index.js on Dawn +
 * SwiftShader. Every output is held to two bars:
 *   - against the goldens, the accuracy quantization allows (q8: 2e-2 x max |golden| per output,
 *     q4: 0.3 x max |golden|, from weight-only fake quantization of ConvNeXt-T). Where exact
 *     arithmetic on the quantized weights (the reference below) is itself further off than that
 *     (v2-micro q4's pooler_output: 0.31), the weights are to blame, not the kernels: the bar is
 *     then the reference's own error plus the float32 bar;
 *   - against the float64 reference run with the dequantized weights, the float32 bar
 *     (1e-4 x max(1, max |reference|)): what the kernels add on top of quantizing.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bindCheckpoint } from '../compiler/checkpoint.js';
import { packingFor } from '../compiler/build.js';
import { parseModelConfig } from '../compiler/config.js';
import { packWeights } from '../compiler/layout.js';
import { nodeGpu } from '../compiler/node-gpu.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { WEBGPU_PACKING } from '../compiler/webgpu.js';
import { checksum32 } from '../runtime/checksum.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { dequantizedCheckpoint } from './helpers/dequantized-checkpoint.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';
import { referenceForward } from './helpers/reference.js';

const QUANTIZATION_BAR = { q8: 2e-2, q4: 0.3 } as const;

let gpu: GPU;
beforeAll(async () => {
  gpu = await nodeGpu();
});

/** The float64 reference on the weights the package's kernels read, and those weights' checksum. */
function dequantizedReference(name: string, dtype: 'q8' | 'q4', pixels: Float32Array, shape: number[]) {
  const dir = goldenPath('models', name);
  const tensors = readSafetensors(new Uint8Array(readFileSync(`${dir}/model.safetensors`)), `${dir}/model.safetensors`);
  const spec = parseModelConfig(JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')), `${dir}/config.json`, { tensorNames: tensors.keys() });
  const checkpoint = bindCheckpoint(spec, tensors, `${dir}/model.safetensors`);
  const packed = packWeights(spec, packingFor(WEBGPU_PACKING, dtype), checkpoint);
  const [batch, , height, width] = shape;
  const outputs = referenceForward(spec, dequantizedCheckpoint(spec, checkpoint, packed), pixels, batch, height, width);
  return { outputs, checksum: checksum32(packed.data), floats: packed.layout.floats };
}

describe.each(['micro', 'v2-micro'])('WebGPU package with quantized weights: %s', (name) => {
  const built: BuiltModule[] = [];
  afterAll(() => built.forEach((b) => b.remove()));

  test.each(['q8', 'q4'] as const)('%s: golden outputs within the quantization bar, the dequantized reference within the float32 bar', async (dtype) => {
    const module = await buildToTemp({ input: goldenPath('models', name), target: 'webgpu', weightsDtype: dtype });
    built.push(module);
    const { manifest } = module.compiled;
    expect(manifest.weights.dtype).toBe(dtype);
    const golden = readGolden('models', name, 'golden.safetensors');
    const input = golden.get('pixel_values')!;
    const [batch, , height, width] = input.shape;
    const reference = dequantizedReference(name, dtype, floats(input), input.shape);
    // The reference read the very bytes the package ships.
    expect(manifest.weights.checksum).toBe(reference.checksum);
    expect(manifest.weights.floats).toBe(reference.floats);

    const model = await module.load({ gpu });
    try {
      expect(model.backend).toMatch(/WebGPU/i);
      const run = await model.run(floats(input), { batch, height, width, outputHiddenStates: true });
      const outputs: Array<[string, Float32Array | undefined]> = [
        ['logits', run.logits], ['pooler_output', run.poolerOutput], ['last_hidden_state', run.lastHiddenState],
        ...run.hiddenStates!.map((h, k) => [`hidden_states.${k}`, h] as [string, Float32Array]),
      ];
      const report: string[] = [];
      for (const [key, actual] of outputs) {
        const expected = floats(golden.get(key), key);
        const vsGolden = compare(actual!, expected);
        const goldenMax = expected.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        const exact = Float32Array.from(reference.outputs.get(key)!.data);
        const vsReference = compare(actual!, exact);
        const quantizationError = compare(exact, expected).maxError;
        const goldenBar = Math.max(QUANTIZATION_BAR[dtype] * goldenMax, quantizationError + vsReference.tolerance);
        report.push(
          `${key}: vs golden ${(vsGolden.maxError / goldenMax).toExponential(2)} of max|golden| (exact arithmetic on these weights: ${(quantizationError / goldenMax).toExponential(2)}), ` +
            `vs the dequantized reference ${vsReference.maxError.toExponential(2)} (bar ${vsReference.tolerance.toExponential(2)})`,
        );
        expect(vsGolden.maxError, `${key} vs golden`).toBeLessThanOrEqual(goldenBar);
        expect(vsReference.maxError, `${key} vs the dequantized reference`).toBeLessThanOrEqual(vsReference.tolerance);
      }
      console.log(`[webgpu ${dtype}] ${name}:\n  ${report.join('\n  ')}`);
    } finally {
      model.dispose();
    }
  });
});
