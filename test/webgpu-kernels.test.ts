/**
 * Every WGSL kernel kind alone against the float64 reference (test/helpers/reference.ts), at the
 * same odd sizes as test/wasm-kernels.test.ts, on Dawn + SwiftShader. The kernels of one plan step
 * run from the compiled program's own shaders and bindings, with buffers this test fills, sized,
 * bound and dispatched by the program's description (independently of runtime/webgpu.ts, so a
 * kernel's error shows by itself).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import type { CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights } from '../compiler/layout.js';
import { planModel, type KernelPlan, type PlanStep } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import type { WebGpuKernel, WebGpuProgram } from '../runtime/webgpu.js';
import { referenceOps } from './helpers/reference.js';
import { BATCH, INPUT, KERNEL_CONFIGS, expectClose, fromNhwc, levelShape, randomMap, toNhwc } from './helpers/kernel-check.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';
import { gpuOn } from './helpers/webgpu-golden.js';

let gpu: GPU; // kept for the device's whole life
let device: GPUDevice;
beforeAll(async () => {
  ({ gpu } = await gpuOn('swiftshader'));
  device = await (await gpu.requestAdapter())!.requestDevice();
});
afterAll(() => device?.destroy());

interface Harness { spec: ModelSpec; checkpoint: CheckpointWeights; packed: PackedWeights; plan: KernelPlan; program: WebGpuProgram }

function harness(config: object, seed: number): Harness {
  const spec = parseModelConfig(config, 'kernel test config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, WEBGPU_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  return { spec, checkpoint, packed, plan, program: renderWebGpu(plan, packed.layout) };
}

const levelSizes = () => [0, 1].map((level) => ({ height: levelShape(level, 1).h, width: levelShape(level, 1).w }));

/** Floats of a named buffer for this test's batch and input, as the program sizes it. */
function bufferFloats(program: WebGpuProgram, name: string): number {
  if (name === 'input') return BATCH * program.inputChannels * INPUT.height * INPUT.width;
  const size = program.buffers[name as keyof WebGpuProgram['buffers']];
  const perPixel = Math.max(0, ...levelSizes().map((l, i) => l.height * l.width * (size.floatsPerPixel[i] ?? 0)));
  return BATCH * (perPixel + size.floatsPerImage);
}

function outputFloats(program: WebGpuProgram, name: string): number {
  const output = program.outputs.find((o) => o.name === name)!;
  const level = output.level === null ? { height: 1, width: 1 } : levelSizes()[output.level];
  return BATCH * output.channels * level.height * level.width;
}

async function readBack(buffer: GPUBuffer, floats: number): Promise<Float32Array> {
  const staging = device.createBuffer({ size: floats * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, floats * 4);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const data = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return data;
}

/**
 * Runs the program's kernels that `belongs` picks (one plan step's), in order, on buffers created
 * zeroed and filled from `inputs`; returns a reader of named buffers and outputs.
 */
async function runKernels(h: Harness, belongs: (kernel: WebGpuKernel) => boolean, inputs: Record<string, Float32Array>) {
  const { program } = h;
  const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const buffers = new Map<string, GPUBuffer>();
  const bufferOf = (name: string, floats: number) => {
    if (!buffers.has(name)) buffers.set(name, device.createBuffer({ size: Math.max(16, floats * 4), usage: storage }));
    return buffers.get(name)!;
  };
  for (const [name, data] of Object.entries(inputs)) device.queue.writeBuffer(bufferOf(name, bufferFloats(program, name)), 0, data as Float32Array<ArrayBuffer>);
  const weights = device.createBuffer({ size: h.packed.data.byteLength, usage: storage });
  device.queue.writeBuffer(weights, 0, h.packed.data as Float32Array<ArrayBuffer>);
  const kernels = program.kernels.filter(belongs);
  expect(kernels.length).toBeGreaterThan(0);
  const encoder = device.createCommandEncoder();
  for (const kernel of kernels) {
    const shader = program.shaders[kernel.shader];
    const pipeline = await device.createComputePipelineAsync({ layout: 'auto', compute: { module: device.createShaderModule({ code: shader.code }), entryPoint: 'main' } });
    const levels = levelSizes();
    const level = levels[kernel.level];
    const source = kernel.inLevel === null ? level : kernel.inLevel < 0 ? INPUT : levels[kernel.inLevel];
    const params = device.createBuffer({ size: 32, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(params, 0, new Uint32Array([BATCH, level.height, level.width, source.height, source.width, kernel.weightBase, kernel.weightBase2 ?? 0, 0]));
    const entries = kernel.bindings.map(({ binding, resource }): GPUBindGroupEntry => {
      switch (resource.kind) {
        case 'params': return { binding, resource: { buffer: params } };
        case 'weights': return { binding, resource: { buffer: weights, offset: resource.offset * 4, size: resource.floats * 4 } };
        case 'buffer': return { binding, resource: { buffer: bufferOf(resource.buffer, bufferFloats(program, resource.buffer)) } };
        case 'output': return { binding, resource: { buffer: bufferOf(`output:${resource.name}`, outputFloats(program, resource.name)) } };
      }
    });
    const units = kernel.grid.unit === 'images' ? BATCH
      : kernel.grid.unit === 'pixels' ? BATCH * level.height * level.width
        : BATCH * level.height * Math.ceil(level.width / 4);
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }));
    pass.dispatchWorkgroups(Math.ceil(units / kernel.grid.perWorkgroup), kernel.grid.columnTiles, 1);
    pass.end();
  }
  device.queue.submit([encoder.finish()]);
  return {
    buffer: (name: string) => readBack(buffers.get(name)!, bufferFloats(program, name)),
    output: (name: string) => readBack(buffers.get(`output:${name}`)!, outputFloats(program, name)),
  };
}

const stepOf = <Op extends PlanStep['op']>(h: Harness, op: Op, predicate: (step: Extract<PlanStep, { op: Op }>) => boolean = () => true) => {
  const step = h.plan.steps.find((s): s is Extract<PlanStep, { op: Op }> => s.op === op && predicate(s as Extract<PlanStep, { op: Op }>));
  if (!step) throw new Error(`no ${op} step in the plan`);
  return step;
};

describe('WGSL kernels, one at a time, against the float64 reference (batch 2, 23x29 input, patch 3, SwiftShader)', () => {
  test('stem: patchify conv + LayerNorm, NCHW input to NHWC', async () => {
    const h = harness(KERNEL_CONFIGS.v1, 1);
    const step = stepOf(h, 'stem');
    const input = randomMap(BATCH, 3, INPUT.height, INPUT.width, 11);
    const run = await runKernels(h, (k) => k.label === 'stem', { input: Float32Array.from(input.data) });
    const out = fromNhwc(await run.buffer(step.dst), levelShape(0, 12), step.out);
    expectClose('stem', out.data, referenceOps.stem(input, h.spec, h.checkpoint).data);
  });

  test('downsample: LayerNorm + 2x2 stride-2 conv, odd sizes floored', async () => {
    const h = harness(KERNEL_CONFIGS.v1, 2);
    const step = stepOf(h, 'downsample');
    const x = randomMap(BATCH, 12, 7, 9, 12);
    const run = await runKernels(h, (k) => k.label === 'stages.1.downsample', { [step.src]: toNhwc(x, step.in) });
    const out = fromNhwc(await run.buffer(step.dst), levelShape(1, 20), step.out);
    expectClose('downsample', out.data, referenceOps.downsample(x, h.checkpoint.stages[1].downsample!, 20).data);
  });

  for (const [name, config] of [['ConvNeXt block (gelu, layer scale)', KERNEL_CONFIGS.v1], ['ConvNeXt V2 block (GRN)', KERNEL_CONFIGS.v2]] as const) {
    for (const level of [0, 1]) {
      test(`${name} at level ${level}: every kernel of the block`, async () => {
        const h = harness(config, 3 + level);
        const step = stepOf(h, 'block', (s) => s.level === level);
        const shape = levelShape(level, step.channels.real);
        const x = randomMap(BATCH, shape.c, shape.h, shape.w, 13 + level);
        const run = await runKernels(h, (k) => k.label.startsWith(`stages.${level}.blocks.0:`), { [step.src]: toNhwc(x, step.channels) });
        const out = fromNhwc(await run.buffer(step.dst), shape, step.channels);
        expectClose(`${name} level ${level}`, out.data, referenceOps.block(x, h.checkpoint.stages[level].blocks[0], h.spec.hiddenAct).data);
      });
    }
  }

  test('feature map: LayerNorm with affine of a stage output, NCHW out', async () => {
    const h = harness(KERNEL_CONFIGS.backbone, 5);
    const step = stepOf(h, 'featureMap', (s) => s.level === 1);
    const x = randomMap(BATCH, 20, 3, 4, 15);
    const run = await runKernels(h, (k) => k.label === step.name, { [step.src]: toNhwc(x, step.channels) });
    expectClose('feature map', await run.output(step.name), referenceOps.featureMap(x, h.checkpoint.featureNorms.stage2).data);
  });

  test('pool: mean over H x W + LayerNorm with the config eps', async () => {
    const h = harness(KERNEL_CONFIGS.v1, 6);
    const step = stepOf(h, 'pool');
    const x = randomMap(BATCH, 20, 3, 4, 16);
    const run = await runKernels(h, (k) => k.label === 'pooler', { [step.src]: toNhwc(x, step.channels) });
    const expected = referenceOps.pool(x, h.checkpoint.poolerNorm!, h.spec.layerNormEps);
    expectClose('pool', await run.output('pooler_output'), expected.flatMap((row) => [...row]));
  });

  test('classifier: linear over the pooled rows (7 labels, padded to 8)', async () => {
    const h = harness(KERNEL_CONFIGS.v1, 7);
    const step = stepOf(h, 'classifier');
    const next = random(17);
    const rows = Array.from({ length: BATCH }, () => Float64Array.from({ length: 20 }, () => 2 * next()));
    const pooled = new Float32Array(BATCH * step.in.padded);
    rows.forEach((row, b) => pooled.set(row, b * step.in.padded));
    const run = await runKernels(h, (k) => k.label === 'classifier', { pooled });
    expectClose('classifier', await run.output('logits'), referenceOps.classifier(rows, h.checkpoint.classifier!, 7).flatMap((row) => [...row]));
  });
});
