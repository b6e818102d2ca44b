/**
 * The WebGPU target on a real WebGPU implementation: Dawn (npm `webgpu`) on SwiftShader, the CPU
 * Vulkan driver Debian's chromium ships (see ../shared/docs/webgpu-on-cpu.md). Every golden case,
 * every output (hidden states too) within 1e-4 * max(1, max |golden|), plus the backend's errors.
 * test/webgpu-lavapipe.test.ts runs the same golden cases on Mesa's lavapipe.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { TensorEntry } from '../compiler/safetensors.js';
import { createWebGpuBackend, probeConsecutiveSubgroups, WebGpuError, type WebGpuProgram } from '../runtime/webgpu.js';
import type { Backend } from '../runtime/types.js';
import { compare, floats, readGolden } from './helpers/golden.js';
import { referenceForward } from './helpers/reference.js';
import { buildGoldenProgram as build, buildSynthetic, checkOutputs, describeGoldenCases, describeSyntheticCases, gpuOn, imageSlice, type Built } from './helpers/webgpu-golden.js';

let gpu: GPU;
let adapter: GPUAdapter;

beforeAll(async () => {
  // Dawn on SwiftShader (compiler/node-gpu.ts points Vulkan at chromium's ICD).
  ({ gpu, adapter } = await gpuOn('swiftshader'));
});

// load() picks the subgroup row-sharing MLP here (subgroups of 4); the tiled kernels every other adapter runs are proven too.
describeGoldenCases('swiftshader', () => gpu);
describeGoldenCases('swiftshader', () => gpu, 'tiles');

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
      expect(backend.description).toMatch(/, f32 \(no shader-f16 on this GPU adapter\), subgroup kernels \(MLP rows shared by 4\)$/);
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

  test('subgroup kernels: SwiftShader runs the row-sharing variant by default, tiles when asked, and a variant it cannot run is refused with the reason', async () => {
    const [split, shared] = micro.program.subgroups!;
    expect([split.kernelsNote, split.subgroupSizes, split.requiredFeatures]).toEqual(['subgroup kernels', { min: 8, max: 1024 }, ['subgroups']]);
    expect([shared.kernelsNote, shared.subgroupSizes]).toEqual(['subgroup kernels (MLP rows shared by 4)', { min: 4, max: 4 }]);
    expect([adapter.info.subgroupMinSize, adapter.info.subgroupMaxSize, adapter.info.isFallbackAdapter]).toEqual([4, 4, true]);
    for (const [matmul, pattern] of [[undefined, /, f32, subgroup kernels \(MLP rows shared by 4\)$/], ['subgroups', /, f32, subgroup kernels \(MLP rows shared by 4\)$/], ['tiles', /, f32$/]] as const) {
      const chosen = await createWebGpuBackend(micro.manifest, micro.program, micro.weights, { gpu, matmul });
      try {
        expect(chosen.description, String(matmul)).toMatch(pattern);
      } finally {
        chosen.dispose();
      }
    }
    // Only the split kernels (subgroups of 8 or more): SwiftShader's 4 are too few.
    const splitOnly = { ...micro.program, subgroups: [split] };
    const error = await rejection(createWebGpuBackend(micro.manifest, splitOnly, micro.weights, { gpu, matmul: 'subgroups' }));
    expect(error.code).toBe('missing-feature');
    expect(error.message).toMatch(/subgroups hold 4 invocations, these subgroup kernels need 8 or more/);
    expect(error.message).toContain("{ matmul: 'tiles' }");
    const auto = await createWebGpuBackend(micro.manifest, splitOnly, micro.weights, { gpu });
    try {
      expect(auto.description).toMatch(/, f32$/);
    } finally {
      auto.dispose();
    }
    const missing = await rejection(createWebGpuBackend(micro.manifest, { ...micro.program, subgroups: [] }, micro.weights, { gpu, matmul: 'subgroups' }));
    expect(missing.message).toMatch(/this package has no subgroup kernels/);
    await expect(createWebGpuBackend(micro.manifest, micro.program, micro.weights, { gpu, matmul: 'fast' as never })).rejects.toThrow(/matmul must be 'auto', 'tiles' or 'subgroups', got "fast"/);
  });

  test('the row-sharing kernels are checked against the device\'s subgroup layout: auto falls back to the tiled kernels, a forced choice fails', async () => {
    const device = await adapter.requestDevice({ requiredFeatures: ['subgroups'] });
    try {
      expect(await probeConsecutiveSubgroups(device, 4)).toBe(true);
      expect(await probeConsecutiveSubgroups(device, 8)).toBe(false);
    } finally {
      device.destroy();
    }
    // A variant that claims subgroups of 8 from consecutive invocations, where SwiftShader forms them of 4.
    const [split, shared] = micro.program.subgroups!;
    const wrongLayout = { ...micro.program, subgroups: [split, { ...shared, consecutiveSubgroups: 8 }] };
    const auto = await createWebGpuBackend(micro.manifest, wrongLayout, micro.weights, { gpu });
    try {
      expect(auto.description).toMatch(/, f32 \(subgroup layout check failed\)$/);
      const golden = readGolden('models', 'micro', 'golden.safetensors');
      const [batch, , height, width] = golden.get('pixel_values')!.shape;
      const outputs = await auto.run(floats(golden.get('pixel_values')), batch, height, width, false);
      const { maxError, tolerance } = compare(outputs.get('logits')!.data, floats(golden.get('logits')));
      expect(maxError).toBeLessThanOrEqual(tolerance);
    } finally {
      auto.dispose();
    }
    const forced = await rejection(createWebGpuBackend(micro.manifest, wrongLayout, micro.weights, { gpu, matmul: 'subgroups' }));
    expect(forced.message).toMatch(/does not form subgroups of 8 from consecutive invocations/);
    expect(forced.message).toContain("{ matmul: 'tiles' }");
  });

  test('row sharing is rendered where a stage\'s shapes line up with the subgroup, and left out where they do not', () => {
    const mlpLabels = (config: Record<string, unknown>) => {
      const shared = buildSynthetic(config, 1).program.subgroups!.find((v) => v.subgroupSizes?.max === 4)!;
      return shared.shaders.map((s) => s.label).filter((label) => label.startsWith('blocks: MLP'));
    };
    const v1 = { architectures: ['ConvNextModel'], model_type: 'convnext', num_stages: 2, depths: [1, 1], hidden_act: 'gelu' };
    // 48 and 80 channels: 12 and 20 vec4s, hidden chunks of 16 vec4s: both stages share.
    expect(mlpLabels({ ...v1, hidden_sizes: [48, 80] })).toEqual(expect.arrayContaining([expect.stringMatching(/rows shared by 4 lanes\)$/)]));
    expect(mlpLabels({ ...v1, hidden_sizes: [48, 80] }).every((label) => /rows shared by 4 lanes/.test(label))).toBe(true);
    // 6 and 10 channels: 2 and 3 vec4s per pixel, so no subgroup of 4 lines up: each invocation loads its own rows.
    expect(mlpLabels({ ...v1, hidden_sizes: [6, 10] }).some((label) => /shared/.test(label))).toBe(false);
    // The depthwise conv shares its taps across subgroups of 8 (the split variant), not of 4 (slower on SwiftShader).
    const dwconvLabel = (variant: WebGpuProgram) => variant.shaders.map((s) => s.label).find((label) => label.startsWith('blocks: depthwise conv'));
    const [split, shared] = micro.program.subgroups!;
    expect(dwconvLabel(split)).toBe('blocks: depthwise conv + LayerNorm, taps shared by 8 lanes');
    expect(dwconvLabel(shared)).toBe('blocks: depthwise conv + LayerNorm');
    expect(dwconvLabel(micro.program)).toBe('blocks: depthwise conv + LayerNorm');
  });

  test('a shader that does not compile reports the compiler\'s messages', async () => {
    const shaders = micro.program.shaders.map((s, i) => (i === 1 ? { ...s, code: s.code.replace('fn main(', 'fn main(oops ') } : s));
    const error = await rejection(createWebGpuBackend(micro.manifest, { ...micro.program, shaders }, micro.weights, { gpu, matmul: 'tiles' }));
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
    const reference = referenceForward(tiny.spec, tiny.checkpoint, tinyInput(1), 1, TINY_SIZE, TINY_SIZE);
    const { maxError, tolerance } = compare(outputs.get('pooler_output')!.data.subarray(0, 8), Float32Array.from(reference.get('pooler_output')!.data));
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

describeSyntheticCases('swiftshader', () => gpu);
describeSyntheticCases('swiftshader', () => gpu, 'tiles');
