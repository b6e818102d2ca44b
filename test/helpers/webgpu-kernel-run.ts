/**
 * Runs some kernels of a compiled WebGPU program by themselves (the kernel-by-kernel tests of
 * test/webgpu-kernels.test.ts and test/webgpu-quantized-kernels.test.ts): buffers this helper
 * fills, sized, bound and dispatched from the program's own description, independently of
 * runtime/webgpu.ts, so a kernel's error shows by itself.
 */
import { afterAll, beforeAll, expect } from 'vitest';
import type { PackedWeights } from '../../compiler/layout.js';
import type { KernelPlan, PlanStep } from '../../compiler/plan.js';
import { kernelParams, PARAMS_BYTES, type WebGpuKernel, type WebGpuProgram } from '../../runtime/webgpu.js';
import { BATCH, INPUT, levelShape } from './kernel-check.js';
import { gpuOn } from './webgpu-golden.js';

/** A SwiftShader device for the calling test file's tests (made before them, destroyed after): call at file level. */
export function swiftShaderDevice(): () => GPUDevice {
  let gpu: GPU | undefined; // kept for the device's whole life (and after: Dawn may still process its events)
  let device: GPUDevice | undefined;
  beforeAll(async () => {
    ({ gpu } = await gpuOn('swiftshader'));
    device = await (await gpu.requestAdapter())!.requestDevice();
  });
  afterAll(() => device?.destroy());
  return () => device!;
}

export interface KernelProgram { packed: PackedWeights; plan: KernelPlan; program: WebGpuProgram }

const levelSizes = () => [0, 1].map((level) => ({ height: levelShape(level, 1).h, width: levelShape(level, 1).w }));

/** Floats of a named buffer for the kernel tests' batch and input, as the program sizes it. */
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

async function readBack(device: GPUDevice, buffer: GPUBuffer, floats: number): Promise<Float32Array> {
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
 * zeroed and filled from `inputs` (the weights: the packed file as it is); returns a reader of
 * named buffers and outputs.
 */
export async function runKernels(device: GPUDevice, h: KernelProgram, belongs: (kernel: WebGpuKernel) => boolean, inputs: Record<string, Float32Array>) {
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
    const params = device.createBuffer({ size: PARAMS_BYTES, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(params, 0, new Uint32Array(kernelParams(kernel, BATCH, level, source)));
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
    buffer: (name: string) => readBack(device, buffers.get(name)!, bufferFloats(program, name)),
    output: (name: string) => readBack(device, buffers.get(`output:${name}`)!, outputFloats(program, name)),
  };
}

/** The plan's first `op` step that `predicate` accepts. */
export function stepOf<Op extends PlanStep['op']>(h: KernelProgram, op: Op, predicate: (step: Extract<PlanStep, { op: Op }>) => boolean = () => true): Extract<PlanStep, { op: Op }> {
  const step = h.plan.steps.find((s): s is Extract<PlanStep, { op: Op }> => s.op === op && predicate(s as Extract<PlanStep, { op: Op }>));
  if (!step) throw new Error(`no ${op} step in the plan`);
  return step;
}
