/**
 * The WebGPU golden cases, shared by the test files of each Vulkan driver (test/webgpu.test.ts on
 * SwiftShader, test/webgpu-lavapipe.test.ts on lavapipe): every golden case, every output (hidden
 * states too) within 1e-4 * max(1, max |golden|). Vitest runs each test file in its own process,
 * and the Vulkan loader reads its driver from the environment, so one file = one driver.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { countParameters, parseModelConfig } from '../../compiler/config.js';
import { readSafetensors, type TensorEntry } from '../../compiler/safetensors.js';
import { bindCheckpoint } from '../../compiler/checkpoint.js';
import { packWeights } from '../../compiler/layout.js';
import { planModel } from '../../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING, type WebGpuRenderOptions } from '../../compiler/webgpu.js';
import { DRIVER_ADAPTER, nodeGpu, type VulkanDriver } from '../../compiler/node-gpu.js';
import { checksum32 } from '../../runtime/checksum.js';
import { createWebGpuBackend, type WebGpuProgram } from '../../runtime/webgpu.js';
import type { ModelManifest, RawOutputs } from '../../runtime/types.js';
import { compare, floats, goldenPath, readGolden } from './golden.js';
import { referenceForward } from './reference.js';
import { random, randomCheckpoint } from './random-checkpoint.js';
import type { CheckpointWeights } from '../../compiler/checkpoint.js';
import type { ModelSpec } from '../../compiler/config.js';
import type { WebGpuBackendOptions } from '../../runtime/webgpu.js';

export interface Built {
  manifest: ModelManifest;
  program: WebGpuProgram;
  weights: Float32Array;
}

/** The compiler pipeline up to the WebGPU program, for a golden checkpoint folder. */
export function buildGoldenProgram(caseName: string, options: WebGpuRenderOptions = {}): Built {
  const dir = goldenPath('models', caseName);
  const tensors = readSafetensors(new Uint8Array(readFileSync(`${dir}/model.safetensors`)), `${dir}/model.safetensors`);
  const spec = parseModelConfig(JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')), `${dir}/config.json`, { tensorNames: tensors.keys() });
  const checkpoint = bindCheckpoint(spec, tensors, `${dir}/model.safetensors`);
  const packed = packWeights(spec, WEBGPU_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  const program = renderWebGpu(plan, packed.layout, options);
  // The fields the backend reads; the rest as a build would fill them.
  const manifest: ModelManifest = {
    name: `${caseName.replace('/', '-')}-webgpu`, target: 'webgpu', architecture: spec.architecture, parameters: countParameters(spec), modelType: spec.modelType,
    head: spec.head, numChannels: spec.numChannels, patchSize: spec.patchSize, hiddenSizes: spec.hiddenSizes, depths: spec.depths,
    hiddenAct: spec.hiddenAct, layerNormEps: spec.layerNormEps, imageSize: spec.imageSize, numLabels: spec.numLabels,
    labels: spec.labels, label2id: spec.label2id, problemType: spec.problemType, outFeatures: spec.outFeatures, preprocess: undefined as unknown as ModelManifest['preprocess'],
    minInputSize: plan.minInputSize, levels: plan.levels, steps: plan.steps,
    weights: { file: 'weights.bin', dtype: 'f32', floats: packed.layout.floats, checksum: checksum32(packed.data) },
  };
  // The program is baked into modules as JSON: prove it survives the round trip.
  return { manifest, program: JSON.parse(JSON.stringify(program)) as WebGpuProgram, weights: packed.data };
}

export function imageSlice(data: Float32Array, shape: number[], count: number): Float32Array {
  const perImage = shape.slice(1).reduce((a, b) => a * b, 1);
  return data.subarray(0, count * perImage);
}

/** Compares every output against the golden tensors; returns "name: error / tolerance" lines. */
export function checkOutputs(outputs: RawOutputs, golden: Map<string, TensorEntry>, goldenName: (name: string) => string, images: number): string[] {
  const report: string[] = [];
  for (const [name, output] of outputs) {
    const key = goldenName(name);
    const expected = golden.get(key);
    expect(expected, `golden ${key}`).toBeDefined();
    expect(output.shape, name).toEqual([images, ...expected!.shape.slice(1)]);
    const { maxError, tolerance } = compare(output.data, imageSlice(floats(expected, key), expected!.shape, images));
    report.push(`${name}: ${maxError.toExponential(2)} (bar ${tolerance.toExponential(2)})`);
    expect(maxError, `${name} max |error|`).toBeLessThanOrEqual(tolerance);
  }
  return report;
}

export interface GoldenCase {
  name: string;
  /** Golden file folder (the backbone's goldens live beside the classification model's). */
  goldenFolder: string;
  goldenName: (output: string) => string;
  expectedOutputs: string[];
  /** Run only the first N images of the golden batch (the full batch when absent). */
  images?: number;
  timeoutMs: number;
}

const hidden = (n: number) => Array.from({ length: n }, (_, i) => `hidden_states.${i}`);
export const GOLDEN_CASES: GoldenCase[] = [
  { name: 'micro', goldenFolder: 'micro', goldenName: (n) => n, expectedOutputs: [...hidden(5), 'last_hidden_state', 'pooler_output', 'logits'], timeoutMs: 120_000 },
  {
    name: 'micro/backbone', goldenFolder: 'micro',
    // The backbone shares micro's trunk weights: its hidden states are micro's.
    goldenName: (n) => (n.startsWith('feature_maps.') ? `backbone.${n}` : n),
    expectedOutputs: [...hidden(5), 'last_hidden_state', 'feature_maps.0', 'feature_maps.1', 'feature_maps.2', 'feature_maps.3'],
    timeoutMs: 120_000,
  },
  { name: 'small-bf16', goldenFolder: 'small-bf16', goldenName: (n) => n, expectedOutputs: [...hidden(5), 'last_hidden_state', 'pooler_output', 'logits'], timeoutMs: 180_000 },
  { name: 'v2-micro', goldenFolder: 'v2-micro', goldenName: (n) => n, expectedOutputs: [...hidden(5), 'last_hidden_state', 'pooler_output', 'logits'], timeoutMs: 120_000 },
  // The full ConvNeXt-T at 224x224: its golden has no hidden states.
  {
    name: 'convnext-tiny-224', goldenFolder: 'convnext-tiny-224', goldenName: (n) => n,
    expectedOutputs: ['last_hidden_state', 'pooler_output', 'logits'],
    images: process.env.CXC_WEBGPU_TINY_BATCH ? Number(process.env.CXC_WEBGPU_TINY_BATCH) : undefined,
    timeoutMs: 900_000,
  },
];

/** A GPU entry point on one CPU Vulkan driver, proven to be that driver. */
export async function gpuOn(driver: VulkanDriver): Promise<{ gpu: GPU; adapter: GPUAdapter }> {
  const gpu = await nodeGpu({ driver });
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new Error(`Dawn found no adapter on ${driver}: install libvulkan1 and the driver (see README)`);
  const info = `${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.description}`;
  if (!DRIVER_ADAPTER[driver].test(info)) throw new Error(`asked Vulkan for ${driver}, got the adapter "${info}"`);
  return { gpu, adapter };
}

/** Which matrix kernels a suite asks load() for, and the backend description that proves it got them. */
export type Matmul = NonNullable<WebGpuBackendOptions['matmul']>;
function expectMatmul(description: string, matmul: Matmul, driver: VulkanDriver): void {
  // On these CPU adapters 'auto' picks the subgroup kernels: lavapipe (subgroups of 8) the split
  // matrix kernels, SwiftShader (subgroups of 4) the row-sharing MLP; 'tiles' the tiled kernels.
  if (matmul === 'tiles') expect(description).not.toMatch(/subgroup/);
  else if (driver === 'lavapipe') expect(description).toMatch(/, f32, subgroup kernels$/);
  else expect(description).toMatch(/, f32, subgroup kernels \(MLP rows shared by 4\)$/);
}

/** Every golden case on one driver, every output within the float32 bar. */
export function describeGoldenCases(driver: VulkanDriver, gpu: () => GPU, matmul: Matmul = 'auto'): void {
  describe(`WebGPU target on Dawn + ${driver}${matmul === 'auto' ? '' : `, ${matmul} matrix kernels`}: golden cases`, () => {
    for (const testCase of GOLDEN_CASES) {
      test(testCase.name, { timeout: testCase.timeoutMs }, async () => {
        const built = buildGoldenProgram(testCase.name);
        const golden = readGolden('models', testCase.goldenFolder, 'golden.safetensors');
        const pixels = golden.get('pixel_values')!;
        const [batch, , height, width] = pixels.shape;
        const images = testCase.images ?? batch;

        const loadStart = performance.now();
        const backend = await createWebGpuBackend(built.manifest, built.program, built.weights, { gpu: gpu(), matmul });
        const loadMs = performance.now() - loadStart;
        try {
          expect(backend.description).toMatch(DRIVER_ADAPTER[driver]);
          expectMatmul(backend.description, matmul, driver);
          const runStart = performance.now();
          const withHidden = testCase.expectedOutputs.some((n) => n.startsWith('hidden_states.'));
          const outputs = await backend.run(imageSlice(floats(pixels), pixels.shape, images), images, height, width, withHidden);
          const runMs = performance.now() - runStart;
          expect([...outputs.keys()].sort()).toEqual([...testCase.expectedOutputs].sort());
          const report = checkOutputs(outputs, golden, testCase.goldenName, images);
          console.log(
            `[webgpu ${driver}] ${testCase.name}: batch ${images} at ${height}x${width}, load ${loadMs.toFixed(0)} ms ` +
              `(${(/subgroup kernels$/.test(backend.description) ? built.program.subgroups![0] : built.program).shaders.length} pipelines), run ${runMs.toFixed(0)} ms on ${backend.description}\n  ${report.join('\n  ')}`,
          );
        } finally {
          backend.dispose();
        }
      });
    }
  });
}

// ---- synthetic configs against an independent float64 reference -------------------------------------
// The goldens are all multiples of 4 channels, GELU, patch 4. These cover what they cannot: padding
// lanes (odd channel counts), other activations, other patch sizes and input channels, odd sizes, and
// the compile-time folds (the reference, test/helpers/reference.ts, runs the unfolded checkpoint).

/** The compiler pipeline for a config with random weights (no checkpoint folder needed). */
export function buildSynthetic(config: Record<string, unknown>, seed: number): Built & { spec: ModelSpec; checkpoint: CheckpointWeights } {
  const spec = parseModelConfig(config, 'synthetic config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, WEBGPU_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  const manifest = { name: 'synthetic', minInputSize: plan.minInputSize, levels: plan.levels, steps: plan.steps } as ModelManifest;
  return { manifest, program: renderWebGpu(plan, packed.layout), weights: packed.data, spec, checkpoint };
}

const SYNTHETIC: Array<{ name: string; config: Record<string, unknown>; batch: number; height: number; width: number }> = [
  {
    name: 'V1, 6/10 channels, gelu_new, patch 2, 1 input channel, layer scale, 13x11',
    config: { architectures: ['ConvNextForImageClassification'], model_type: 'convnext', num_channels: 1, patch_size: 2, num_stages: 2, hidden_sizes: [6, 10], depths: [1, 2], hidden_act: 'gelu_new', layer_scale_init_value: 0.5, num_labels: 3 },
    batch: 2, height: 13, width: 11,
  },
  {
    name: 'V2, 5/12/7 channels, silu, patch 3, base model (pooler only), 20x17',
    config: { architectures: ['ConvNextV2Model'], model_type: 'convnextv2', patch_size: 3, num_stages: 3, hidden_sizes: [5, 12, 7], depths: [2, 1, 1], hidden_act: 'silu' },
    batch: 3, height: 20, width: 17,
  },
  {
    name: 'V1 backbone, 4/9 channels, relu, feature maps of stem and stage2, no layer scale, 9x16',
    config: { architectures: ['ConvNextBackbone'], model_type: 'convnext', num_stages: 2, hidden_sizes: [4, 9], depths: [1, 1], hidden_act: 'relu', layer_scale_init_value: 0, out_features: ['stem', 'stage2'], patch_size: 2 },
    batch: 2, height: 9, width: 16,
  },
  {
    // 48 and 80 channels: multiples of 4 vec4s, so the row-sharing MLP (SwiftShader, quantized on lavapipe)
    // shares its rows in both stages, with a guarded partial round of output blocks.
    name: 'V1, 48/80 channels (MLP rows shared across subgroups, guarded output blocks), gelu, 15x21',
    config: { architectures: ['ConvNextForImageClassification'], model_type: 'convnext', num_stages: 2, hidden_sizes: [48, 80], depths: [1, 1], hidden_act: 'gelu', num_labels: 4 },
    batch: 2, height: 15, width: 21,
  },
  {
    // 132 channels: the fused MLP gives each invocation 2 output blocks, the second round partial.
    name: 'V1, 132/20 channels (several MLP output blocks per invocation), gelu, 33x40',
    config: { architectures: ['ConvNextForImageClassification'], model_type: 'convnext', num_stages: 2, hidden_sizes: [132, 20], depths: [1, 1], hidden_act: 'gelu', num_labels: 5 },
    batch: 1, height: 33, width: 40,
  },
];

/** The synthetic configs on one driver against the float64 reference, every output within the float32 bar. */
export function describeSyntheticCases(driver: VulkanDriver, gpu: () => GPU, matmul: Matmul = 'auto'): void {
describe(`WebGPU target on Dawn + ${driver}${matmul === 'auto' ? '' : `, ${matmul} matrix kernels`} against a float64 reference: synthetic configs`, () => {
  for (const [index, testCase] of SYNTHETIC.entries()) {
    test(testCase.name, { timeout: 300_000 }, async () => {
      const { spec, checkpoint, manifest, program, weights } = buildSynthetic(testCase.config, 1234 + index);
      const backend = await createWebGpuBackend(manifest, program, weights, { gpu: gpu(), matmul });
      expectMatmul(backend.description, matmul, driver);
      try {
        const { batch, height, width } = testCase;
        const next = random(99 + index);
        const input = Float32Array.from({ length: batch * spec.numChannels * height * width }, () => 2 * next());
        const outputs = await backend.run(input, batch, height, width, true);
        const references = referenceForward(spec, checkpoint, input, batch, height, width);
        expect([...outputs.keys()].sort()).toEqual([...references.keys()].sort());
        const report: string[] = [];
        for (const [name, output] of outputs) {
          expect(output.shape, name).toEqual(references.get(name)!.shape);
          const expected = Float32Array.from(references.get(name)!.data);
          const { maxError, tolerance } = compare(output.data, expected);
          report.push(`${name} ${maxError.toExponential(1)} (bar ${tolerance.toExponential(1)})`);
          expect(maxError, `${name} max |error|`).toBeLessThanOrEqual(tolerance);
        }
        console.log(`[webgpu ${driver}${matmul === 'auto' ? '' : ` ${matmul}`}] synthetic: ${testCase.name}\n  ${report.join(', ')}`);
      } finally {
        backend.dispose();
      }
    });
  }
});
}
