/**
 * Every WGSL kernel kind alone against the float64 reference (test/helpers/reference.ts), at the
 * same odd sizes as test/wasm-kernels.test.ts, on Dawn + SwiftShader. The kernels of one plan step
 * run from the compiled program's own shaders and bindings, with buffers this test fills, sized,
 * bound and dispatched by the program's description (independently of runtime/webgpu.ts, so a
 * kernel's error shows by itself).
 */
import { describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import type { CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights } from '../compiler/layout.js';
import { planModel, type KernelPlan } from '../compiler/plan.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import type { WebGpuKernel, WebGpuProgram } from '../runtime/webgpu.js';
import { referenceOps } from './helpers/reference.js';
import { BATCH, INPUT, KERNEL_CONFIGS, expectClose, fromNhwc, levelShape, randomMap, toNhwc } from './helpers/kernel-check.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';
import { runKernels as runOn, stepOf, swiftShaderDevice } from './helpers/webgpu-kernel-run.js';

const device = swiftShaderDevice();

interface Harness { spec: ModelSpec; checkpoint: CheckpointWeights; packed: PackedWeights; plan: KernelPlan; program: WebGpuProgram }

const runKernels = (h: Harness, belongs: (kernel: WebGpuKernel) => boolean, inputs: Record<string, Float32Array>) => runOn(device(), h, belongs, inputs);

function harness(config: object, seed: number): Harness {
  const spec = parseModelConfig(config, 'kernel test config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, WEBGPU_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  return { spec, checkpoint, packed, plan, program: renderWebGpu(plan, packed.layout) };
}

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
