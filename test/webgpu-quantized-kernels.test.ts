/**
 * The WGSL kernels that read a quantized matrix (--weights-dtype q8 / q4: the block MLP, plain and
 * GRN, the downsampling conv, the classifier), one plan step at a time, on Dawn + SwiftShader,
 * against the float64 reference run with the weights the kernels are meant to use: the folded
 * matrices as compiler/quantize.ts dequantizes them from the packed bytes. Quantizing is the
 * layout's business; what these tests see is the kernels' own error (unpacking, scales, f32 sums),
 * held to the float32 kernels' bar.
 */
import { describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import type { CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights } from '../compiler/layout.js';
import { planModel, type KernelPlan } from '../compiler/plan.js';
import type { QuantizedDtype } from '../compiler/quantize.js';
import { packingFor } from '../compiler/build.js';
import { CxcError } from '../compiler/errors.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import type { WebGpuProgram } from '../runtime/webgpu.js';
import { referenceOps } from './helpers/reference.js';
import { dequantizedCheckpoint } from './helpers/dequantized-checkpoint.js';
import { BATCH, KERNEL_CONFIGS, expectClose, fromNhwc, levelShape, randomMap, toNhwc } from './helpers/kernel-check.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';
import { runKernels, stepOf, swiftShaderDevice } from './helpers/webgpu-kernel-run.js';

const device = swiftShaderDevice();

interface Harness { spec: ModelSpec; packed: PackedWeights; plan: KernelPlan; program: WebGpuProgram; dequantized: CheckpointWeights }

function harness(config: object, seed: number, dtype: QuantizedDtype): Harness {
  const spec = parseModelConfig(config, 'kernel test config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, packingFor(WEBGPU_PACKING, dtype), checkpoint);
  const plan = planModel(spec, packed.layout);
  return { spec, packed, plan, program: renderWebGpu(plan, packed.layout), dequantized: dequantizedCheckpoint(spec, checkpoint, packed) };
}

/** Channel counts that pad (18 -> 20), q4 blocks cut short (K = 20, 38 -> 40, 72, 152) and a chunked MLP. */
const ODD = { ...KERNEL_CONFIGS.v1, hidden_sizes: [18, 38], num_labels: 11 };

describe.each(['q8', 'q4'] as const)('WGSL kernels reading %s weights, against the float64 reference on the dequantized weights (SwiftShader)', (dtype) => {
  test('the weights stay packed: the kernels that read a quantized matrix bind it as words', () => {
    const h = harness(KERNEL_CONFIGS.v2, 1, dtype);
    const element = dtype === 'q8' ? 'vec4<u32>' : 'vec2<u32>';
    const readers = h.program.shaders.filter((s) => /MLP|pwconv|downsample|classifier/.test(s.label));
    expect(readers.length).toBe(h.program.shaders.filter((s) => s.code.includes(`array<${element}>`)).length);
    for (const shader of readers) expect(shader.code, shader.label).toContain(`var<storage, read> weights: array<${element}>`);
  });

  test('downsample: LayerNorm + 2x2 stride-2 conv', async () => {
    for (const [config, seed] of [[KERNEL_CONFIGS.v1, 2], [ODD, 3]] as const) {
      const h = harness(config, seed, dtype);
      const step = stepOf(h, 'downsample');
      const [cin, cout] = config.hidden_sizes;
      const x = randomMap(BATCH, cin, 7, 9, 12);
      const run = await runKernels(device(), h, (k) => k.label === 'stages.1.downsample', { [step.src]: toNhwc(x, step.in) });
      const out = fromNhwc(await run.buffer(step.dst), levelShape(1, cout), step.out);
      expectClose(`${dtype} downsample ${cin} -> ${cout}`, out.data, referenceOps.downsample(x, h.dequantized.stages[1].downsample!, cout).data);
    }
  });

  const blocks = [['ConvNeXt block', KERNEL_CONFIGS.v1], ['ConvNeXt block, padded channels', ODD], ['ConvNeXt V2 block (GRN)', KERNEL_CONFIGS.v2]] as const;
  for (const [name, config] of blocks) {
    test(`${name}: every kernel of the block, at both levels`, async () => {
      for (const level of [0, 1]) {
        const h = harness(config, 3 + level, dtype);
        const step = stepOf(h, 'block', (s) => s.level === level);
        const shape = levelShape(level, step.channels.real);
        const x = randomMap(BATCH, shape.c, shape.h, shape.w, 13 + level);
        const run = await runKernels(device(), h, (k) => k.label.startsWith(`stages.${level}.blocks.0:`), { [step.src]: toNhwc(x, step.channels) });
        const out = fromNhwc(await run.buffer(step.dst), shape, step.channels);
        const expected = referenceOps.block(x, h.dequantized.stages[level].blocks[0], h.spec.hiddenAct);
        expectClose(`${dtype} ${name} level ${level}`, out.data, expected.data);
      }
    });
  }

  test('classifier: linear over the pooled rows', async () => {
    for (const [config, seed] of [[KERNEL_CONFIGS.v1, 7], [ODD, 8]] as const) {
      const h = harness(config, seed, dtype);
      const step = stepOf(h, 'classifier');
      const next = random(17);
      const rows = Array.from({ length: BATCH }, () => Float64Array.from({ length: step.in.real }, () => 2 * next()));
      const pooled = new Float32Array(BATCH * step.in.padded);
      rows.forEach((row, b) => pooled.set(row, b * step.in.padded));
      const run = await runKernels(device(), h, (k) => k.label === 'classifier', { pooled });
      const expected = referenceOps.classifier(rows, h.dequantized.classifier!, step.labels.real).flatMap((row) => [...row]);
      expectClose(`${dtype} classifier ${step.in.real} -> ${step.labels.real}`, await run.output('logits'), expected);
    }
  });

  test('--precision f16 is refused: its kernels would read the packed integers as halves', () => {
    const h = harness(KERNEL_CONFIGS.v1, 9, dtype);
    expect(() => renderWebGpu(h.plan, h.packed.layout, { precision: 'f16' })).toThrow(CxcError);
    expect(() => renderWebGpu(h.plan, h.packed.layout, { precision: 'f16' })).toThrow(/--precision f16 does not combine with --weights-dtype/);
  });
});
