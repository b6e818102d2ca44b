/**
 * The WebGPU target on a real WebGPU implementation: Dawn (npm `webgpu`) on SwiftShader, the CPU
 * Vulkan driver Debian's chromium ships (see ../shared/docs/webgpu-on-cpu.md). Every golden case,
 * every output (hidden states too) within 1e-4 * max(1, max |golden|), plus the backend's errors.
 * test/webgpu-lavapipe.test.ts runs the same golden cases on Mesa's lavapipe.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import type { TensorEntry } from '../compiler/safetensors.js';
import { bindCheckpoint, expectedTensors, type CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import { createWebGpuBackend, WebGpuError } from '../runtime/webgpu.js';
import type { Backend, ModelManifest } from '../runtime/types.js';
import { compare, floats, readGolden } from './helpers/golden.js';
import { buildGoldenProgram as build, checkOutputs, describeGoldenCases, gpuOn, imageSlice, type Built } from './helpers/webgpu-golden.js';

let gpu: GPU;
let adapter: GPUAdapter;

beforeAll(async () => {
  // Dawn on SwiftShader (compiler/node-gpu.ts points Vulkan at chromium's ICD).
  ({ gpu, adapter } = await gpuOn('swiftshader'));
});

describeGoldenCases('swiftshader', () => gpu);

describe('WebGPU backend behaviour', () => {
  let micro: Built;
  let backend: Backend;
  let golden: Map<string, TensorEntry>;

  beforeAll(async () => {
    micro = build('micro');
    backend = await createWebGpuBackend(micro.manifest, micro.program, micro.weights, { gpu });
    golden = readGolden('models', 'micro', 'golden.safetensors');
  });
  afterAll(() => backend?.dispose());

  test('without hidden states only the final outputs come back, and shapes can change between runs', async () => {
    const pixels = golden.get('pixel_values')!;
    const [batch, , height, width] = pixels.shape;
    const full = await backend.run(floats(pixels), batch, height, width, false);
    expect([...full.keys()].sort()).toEqual(['last_hidden_state', 'logits', 'pooler_output']);
    checkOutputs(full, golden, (n) => n, batch);
    // Batch 1 reuses the buffers; then batch 2 again.
    const one = await backend.run(imageSlice(floats(pixels), pixels.shape, 1), 1, height, width, true);
    checkOutputs(one, golden, (n) => n, 1);
    const again = await backend.run(floats(pixels), batch, height, width, false);
    checkOutputs(again, golden, (n) => n, batch);
  });

  test('odd input sizes floor like PyTorch (72x52 -> 18x13 -> 9x6 -> 4x3 -> 2x1)', async () => {
    const input = new Float32Array(3 * 72 * 52).map((_, i) => Math.sin(i * 0.37));
    const outputs = await backend.run(input, 1, 72, 52, true);
    expect(outputs.get('hidden_states.0')!.shape).toEqual([1, 8, 18, 13]);
    expect(outputs.get('hidden_states.4')!.shape).toEqual([1, 64, 2, 1]);
    for (const [name, { data }] of outputs) expect(data.every(Number.isFinite), name).toBe(true);
  });

  test('concurrent runs are serialized and each gets its own answer', async () => {
    const pixels = golden.get('pixel_values')!;
    const [batch, , height, width] = pixels.shape;
    const [a, b] = await Promise.all([
      backend.run(imageSlice(floats(pixels), pixels.shape, 1), 1, height, width, false),
      backend.run(floats(pixels), batch, height, width, false),
    ]);
    checkOutputs(a, golden, (n) => n, 1);
    checkOutputs(b, golden, (n) => n, batch);
  });
});

describe('WebGPU backend errors', () => {
  let micro: Built;
  /** For the tests that must load a model on a fresh device: two small stages compile in seconds. */
  let tiny: ReturnType<typeof buildSynthetic>;
  const TINY_SIZE = 16;
  const tinyInput = (batch: number) => Float32Array.from({ length: batch * 3 * TINY_SIZE * TINY_SIZE }, (_, i) => Math.sin(i * 0.11));
  beforeAll(() => {
    micro = build('micro');
    tiny = buildSynthetic({ architectures: ['ConvNextModel'], num_stages: 2, hidden_sizes: [4, 8], depths: [1, 1], hidden_act: 'relu' }, 5);
  });

  const rejection = async (promise: Promise<unknown>): Promise<WebGpuError> => {
    const error = await promise.then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(WebGpuError);
    return error as WebGpuError;
  };

  test('no adapter: a clear error that suggests --target wasm', async () => {
    const noAdapter = { requestAdapter: async () => null } as unknown as GPU;
    const error = await rejection(createWebGpuBackend(micro.manifest, micro.program, micro.weights, { gpu: noAdapter }));
    expect(error.code).toBe('no-adapter');
    expect(error.message).toMatch(/no WebGPU adapter/);
    expect(error.message).toMatch(/--target wasm/);
  });

  test('no WebGPU at all (no navigator.gpu, no gpu option)', async () => {
    const error = await rejection(createWebGpuBackend(micro.manifest, micro.program, micro.weights, {}));
    expect(error.code).toBe('no-adapter');
    expect(error.message).toMatch(/--target wasm/);
  });

  test('a missing feature is named', async () => {
    const program = { ...micro.program, requiredFeatures: ['shader-f16'] };
    expect(adapter.features.has('shader-f16')).toBe(false); // SwiftShader has no f16
    const error = await rejection(createWebGpuBackend(micro.manifest, program, micro.weights, { gpu }));
    expect(error.code).toBe('missing-feature');
    expect(error.message).toMatch(/shader-f16/);
  });

  test('an f16 build on an adapter without shader-f16 runs f32 and says why; forcing f16 names flags that exist', async () => {
    const f16 = build('micro', { precision: 'f16' });
    expect(f16.program.f16).toBeDefined();
    const backend = await createWebGpuBackend(f16.manifest, f16.program, f16.weights, { gpu });
    try {
      expect(backend.description).toMatch(/, f32 \(no shader-f16 on this GPU adapter\)$/);
    } finally {
      backend.dispose();
    }
    const error = await rejection(createWebGpuBackend(f16.manifest, f16.program, f16.weights, { gpu, precision: 'f16' }));
    expect(error.code).toBe('missing-feature');
    expect(error.message).toMatch(/shader-f16/);
    // The flags it suggests exist: load({ precision }) above, and cxc build --precision (test/cli.test.ts).
    expect(error.message).toContain("{ precision: 'f32' }");
    expect(error.message).toContain('cxc build --precision f32');
    const f32Only = await rejection(createWebGpuBackend(micro.manifest, micro.program, micro.weights, { gpu, precision: 'f16' }));
    expect(f32Only.message).toMatch(/build it with `cxc build --precision f16`/);
  });

  test('a shader that does not compile reports the compiler\'s messages', async () => {
    const shaders = micro.program.shaders.map((s, i) => (i === 1 ? { ...s, code: s.code.replace('fn main(', 'fn main(oops ') } : s));
    const error = await rejection(createWebGpuBackend(micro.manifest, { ...micro.program, shaders }, micro.weights, { gpu }));
    expect(error.code).toBe('shader-compile');
    expect(error.message).toContain(micro.program.shaders[1].label);
    expect(error.message).toMatch(/error at line \d+/);
  });

  /** A real device that reports smaller limits than it has. */
  async function deviceWithLimits(overrides: Partial<Record<keyof GPUSupportedLimits, number>>): Promise<GPUDevice> {
    const device = await (await gpu.requestAdapter())!.requestDevice();
    const limits = new Proxy(device.limits, {
      get: (target, key) => (key in overrides ? overrides[key as keyof GPUSupportedLimits] : Reflect.get(target, key)),
    });
    return new Proxy(device, {
      get(target, key) {
        if (key === 'limits') return limits;
        const value = Reflect.get(target, key);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  test('weights above the device\'s binding limit: a limit error at load', async () => {
    const device = await deviceWithLimits({ maxStorageBufferBindingSize: 4096 });
    const error = await rejection(createWebGpuBackend(micro.manifest, micro.program, micro.weights, { device }));
    expect(error.code).toBe('limit');
    expect(error.message).toMatch(/maxStorageBufferBindingSize/);
    device.destroy();
  });

  test('an input whose buffers exceed the device\'s limits: a limit error at run, and the backend still works', async () => {
    const device = await deviceWithLimits({ maxStorageBufferBindingSize: 1024 * 1024 });
    const backend = await createWebGpuBackend(tiny.manifest, tiny.program, tiny.weights, { device });
    const error = await rejection(backend.run(new Float32Array(3 * 512 * 512), 1, 512, 512, false));
    expect(error.code).toBe('limit');
    expect(error.message).toMatch(/"input" buffer/);
    const outputs = await backend.run(tinyInput(2), 2, TINY_SIZE, TINY_SIZE, false);
    const reference = referenceForward(tiny.spec, tiny.checkpoint, { c: 3, h: TINY_SIZE, w: TINY_SIZE, data: Float64Array.from(tinyInput(1)) });
    const { maxError, tolerance } = compare(outputs.get('pooler_output')!.data.subarray(0, 8), new Float32Array(reference.get('pooler_output')!));
    expect(maxError).toBeLessThanOrEqual(tolerance);
    backend.dispose();
    device.destroy();
  });

  test('device loss rejects the pending run and every later one, without hanging', async () => {
    const device = await (await gpu.requestAdapter())!.requestDevice();
    const backend = await createWebGpuBackend(tiny.manifest, tiny.program, tiny.weights, { device });
    const pending = backend.run(tinyInput(2), 2, TINY_SIZE, TINY_SIZE, true);
    device.destroy();
    const error = await rejection(pending);
    expect(error.code).toBe('device-lost');
    expect(error.message).toMatch(/lost/);
    const later = await rejection(backend.run(tinyInput(2), 2, TINY_SIZE, TINY_SIZE, true));
    expect(later.code).toBe('device-lost');
    backend.dispose();
    // a later load recovers on a fresh device
    const recovered = await createWebGpuBackend(tiny.manifest, tiny.program, tiny.weights, { gpu });
    const outputs = await recovered.run(tinyInput(1), 1, TINY_SIZE, TINY_SIZE, false);
    expect(outputs.get('pooler_output')!.data.every(Number.isFinite)).toBe(true);
    recovered.dispose();
  });

  test('a disposed backend refuses to run', async () => {
    const backend = await createWebGpuBackend(tiny.manifest, tiny.program, tiny.weights, { gpu });
    await backend.run(tinyInput(1), 1, TINY_SIZE, TINY_SIZE, false);
    backend.dispose();
    const error = await rejection(backend.run(tinyInput(1), 1, TINY_SIZE, TINY_SIZE, false));
    expect(error.code).toBe('disposed');
  });
});

// ---- synthetic configs against an independent float64 reference -------------------------------------
// The goldens are all multiples of 4 channels, GELU, patch 4. These cover what they cannot: padding
// lanes (odd channel counts), other activations, other patch sizes and input channels, odd sizes, and
// the compile-time folds (the reference runs the unfolded checkpoint).

/** Deterministic uniform numbers in [-1, 1). */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 31 - 1;
  };
}

/** A checkpoint of random, non-trivial weights for a spec (LayerNorm weights near 1, layer scales in [0.1, 1]). */
function randomCheckpoint(spec: ModelSpec, seed: number): CheckpointWeights {
  const next = random(seed);
  const tensors = new Map<string, TensorEntry>();
  for (const { name, shape } of expectedTensors(spec)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const isNormWeight = /(layernorm|norms?\.[a-z0-9]+|downsampling_layer\.0)\.weight$/.test(name);
    const value = isNormWeight ? () => 1 + 0.3 * next()
      : name.endsWith('layer_scale_parameter') ? () => 0.55 + 0.45 * next()
        : name.includes('grn.') ? () => 0.5 * next()
          : () => next() * (name.endsWith('bias') ? 0.3 : 0.6);
    tensors.set(name, { dtype: 'F32', shape, data: Float32Array.from({ length: count }, value) });
  }
  return bindCheckpoint(spec, tensors, 'synthetic');
}

/** The compiler pipeline for a config with random weights (no checkpoint folder needed). */
function buildSynthetic(config: Record<string, unknown>, seed: number): Built & { spec: ModelSpec; checkpoint: CheckpointWeights } {
  const spec = parseModelConfig(config, 'synthetic config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, WEBGPU_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  const manifest = { name: 'synthetic', minInputSize: plan.minInputSize, levels: plan.levels, steps: plan.steps } as ModelManifest;
  return { manifest, program: renderWebGpu(plan, packed.layout), weights: packed.data, spec, checkpoint };
}

/** erf in float64: Taylor series below 3, continued fraction for erfc above (error < 1e-13). */
function erf(x: number): number {
  const z = Math.abs(x);
  if (z < 3) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 60; n++) {
      term *= (-z * z) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let fraction = 0;
  for (let k = 60; k >= 1; k--) fraction = (k / 2) / (z + fraction);
  return Math.sign(x) * (1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / (z + fraction));
}

const REFERENCE_ACTIVATIONS: Record<string, (x: number) => number> = {
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_new: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  silu: (x) => x / (1 + Math.exp(-x)),
  relu: (x) => Math.max(x, 0),
  quick_gelu: (x) => x / (1 + Math.exp(-1.702 * x)),
  mish: (x) => x * Math.tanh(Math.log1p(Math.exp(x))),
};

/** One image's activation: [C][H][W] in float64. */
interface Plane { c: number; h: number; w: number; data: Float64Array }

function layerNorm(x: Plane, eps: number, weight?: Float32Array, bias?: Float32Array): Plane {
  const out = new Float64Array(x.data.length);
  const hw = x.h * x.w;
  for (let p = 0; p < hw; p++) {
    let mean = 0;
    for (let c = 0; c < x.c; c++) mean += x.data[c * hw + p] / x.c;
    let variance = 0;
    for (let c = 0; c < x.c; c++) variance += (x.data[c * hw + p] - mean) ** 2 / x.c;
    for (let c = 0; c < x.c; c++) {
      const normalized = (x.data[c * hw + p] - mean) / Math.sqrt(variance + eps);
      out[c * hw + p] = weight ? normalized * weight[c] + bias![c] : normalized;
    }
  }
  return { ...x, data: out };
}

/** Convolution with kernel = stride = k (stem and downsampling), weight [Co][Ci][k][k]. */
function patchConv(x: Plane, k: number, co: number, weight: Float32Array, bias: Float32Array): Plane {
  const h = Math.floor(x.h / k);
  const w = Math.floor(x.w / k);
  const out = new Float64Array(co * h * w);
  for (let o = 0; o < co; o++) for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) {
    let sum = bias[o];
    for (let i = 0; i < x.c; i++) for (let ky = 0; ky < k; ky++) for (let kx = 0; kx < k; kx++) {
      sum += weight[((o * x.c + i) * k + ky) * k + kx] * x.data[(i * x.h + y * k + ky) * x.w + xx * k + kx];
    }
    out[(o * h + y) * w + xx] = sum;
  }
  return { c: co, h, w, data: out };
}

function referenceBlock(x: Plane, block: CheckpointWeights['stages'][number]['blocks'][number], act: (v: number) => number): Plane {
  const { c, h, w } = x;
  const hw = h * w;
  const dw = new Float64Array(c * hw);
  for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) {
    let sum = block.dwconvBias[ch];
    for (let ky = 0; ky < 7; ky++) for (let kx = 0; kx < 7; kx++) {
      const yy = y + ky - 3;
      const xi = xx + kx - 3;
      if (yy >= 0 && yy < h && xi >= 0 && xi < w) sum += block.dwconvWeight[(ch * 7 + ky) * 7 + kx] * x.data[(ch * h + yy) * w + xi];
    }
    dw[(ch * h + y) * w + xx] = sum;
  }
  const normed = layerNorm({ c, h, w, data: dw }, 1e-6, block.norm.weight, block.norm.bias);
  const hidden = 4 * c;
  const mid = new Float64Array(hidden * hw);
  for (let j = 0; j < hidden; j++) for (let p = 0; p < hw; p++) {
    let sum = block.pwconv1Bias[j];
    for (let ch = 0; ch < c; ch++) sum += block.pwconv1Weight[j * c + ch] * normed.data[ch * hw + p];
    mid[j * hw + p] = act(sum);
  }
  if (block.grn) {
    const gx = Array.from({ length: hidden }, (_, j) => Math.sqrt(mid.subarray(j * hw, (j + 1) * hw).reduce((a, v) => a + v * v, 0)));
    const meanGx = gx.reduce((a, b) => a + b, 0) / hidden;
    for (let j = 0; j < hidden; j++) for (let p = 0; p < hw; p++) {
      const v = mid[j * hw + p];
      mid[j * hw + p] = block.grn.weight[j] * (v * (gx[j] / (meanGx + 1e-6))) + block.grn.bias[j] + v;
    }
  }
  const out = new Float64Array(c * hw);
  for (let ch = 0; ch < c; ch++) for (let p = 0; p < hw; p++) {
    let sum = block.pwconv2Bias[ch];
    for (let j = 0; j < hidden; j++) sum += block.pwconv2Weight[ch * hidden + j] * mid[j * hw + p];
    out[ch * hw + p] = x.data[ch * hw + p] + (block.layerScale ? block.layerScale[ch] : 1) * sum;
  }
  return { c, h, w, data: out };
}

/** transformers' forward of one image, by output name (feature maps, pooler and logits as the head has them). */
function referenceForward(spec: ModelSpec, weights: CheckpointWeights, image: Plane): Map<string, Float64Array> {
  const act = REFERENCE_ACTIVATIONS[spec.hiddenAct];
  const outputs = new Map<string, Float64Array>();
  let x = layerNorm(patchConv(image, spec.patchSize, spec.hiddenSizes[0], weights.stem.convWeight, weights.stem.convBias), 1e-6, weights.stem.norm.weight, weights.stem.norm.bias);
  const hiddenStates = [x];
  weights.stages.forEach((stage, s) => {
    if (stage.downsample) {
      x = patchConv(layerNorm(x, 1e-6, stage.downsample.norm.weight, stage.downsample.norm.bias), 2, spec.hiddenSizes[s], stage.downsample.convWeight, stage.downsample.convBias);
    }
    for (const block of stage.blocks) x = referenceBlock(x, block, act);
    hiddenStates.push(x);
  });
  hiddenStates.forEach((state, i) => outputs.set(`hidden_states.${i}`, state.data));
  outputs.set('last_hidden_state', x.data);
  const stageNames = ['stem', ...spec.hiddenSizes.map((_, i) => `stage${i + 1}`)];
  spec.outFeatures.forEach((feature, i) => {
    const norm = weights.featureNorms[feature];
    outputs.set(`feature_maps.${i}`, layerNorm(hiddenStates[stageNames.indexOf(feature)], 1e-6, norm.weight, norm.bias).data);
  });
  if (weights.poolerNorm) {
    const hw = x.h * x.w;
    const mean = new Float64Array(x.c).map((_, c) => x.data.subarray(c * hw, (c + 1) * hw).reduce((a, b) => a + b, 0) / hw);
    const pooled = layerNorm({ c: x.c, h: 1, w: 1, data: mean }, spec.layerNormEps, weights.poolerNorm.weight, weights.poolerNorm.bias).data;
    outputs.set('pooler_output', pooled);
    if (weights.classifier) {
      outputs.set('logits', new Float64Array(spec.numLabels).map((_, l) => pooled.reduce((a, v, c) => a + v * weights.classifier!.weight[l * x.c + c], weights.classifier!.bias[l])));
    }
  }
  return outputs;
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
    // 132 channels: the fused MLP gives each invocation 2 output blocks, the second round partial.
    name: 'V1, 132/20 channels (several MLP output blocks per invocation), gelu, 33x40',
    config: { architectures: ['ConvNextForImageClassification'], model_type: 'convnext', num_stages: 2, hidden_sizes: [132, 20], depths: [1, 1], hidden_act: 'gelu', num_labels: 5 },
    batch: 1, height: 33, width: 40,
  },
];

describe('WebGPU target against a float64 reference: synthetic configs', () => {
  for (const [index, testCase] of SYNTHETIC.entries()) {
    test(testCase.name, { timeout: 300_000 }, async () => {
      const { spec, checkpoint, manifest, program, weights } = buildSynthetic(testCase.config, 1234 + index);
      const backend = await createWebGpuBackend(manifest, program, weights, { gpu });
      try {
        const { batch, height, width } = testCase;
        const next = random(99 + index);
        const input = Float32Array.from({ length: batch * spec.numChannels * height * width }, () => 2 * next());
        const outputs = await backend.run(input, batch, height, width, true);
        const perImage = spec.numChannels * height * width;
        const references = Array.from({ length: batch }, (_, n) => referenceForward(spec, checkpoint, {
          c: spec.numChannels, h: height, w: width, data: Float64Array.from(input.subarray(n * perImage, (n + 1) * perImage)),
        }));
        expect([...outputs.keys()].sort()).toEqual([...references[0].keys()].sort());
        const report: string[] = [];
        for (const [name, output] of outputs) {
          const expected = new Float32Array(references.flatMap((r) => [...r.get(name)!]));
          const { maxError, tolerance } = compare(output.data, expected);
          report.push(`${name} ${maxError.toExponential(1)} (bar ${tolerance.toExponential(1)})`);
          expect(maxError, `${name} max |error|`).toBeLessThanOrEqual(tolerance);
        }
        console.log(`[webgpu] synthetic: ${testCase.name}\n  ${report.join(', ')}`);
      } finally {
        backend.dispose();
      }
    });
  }
});
