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
import type { BlockWeights, CheckpointWeights, StageWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights, type WeightField } from '../compiler/layout.js';
import { planModel, type KernelPlan } from '../compiler/plan.js';
import { dequantizedValue, type QuantizedDtype } from '../compiler/quantize.js';
import { packingFor } from '../compiler/build.js';
import { CxcError } from '../compiler/errors.js';
import { renderWebGpu, WEBGPU_PACKING } from '../compiler/webgpu.js';
import type { WebGpuProgram } from '../runtime/webgpu.js';
import type { BlockGroup, DownsampleGroup, LinearGroup } from '../runtime/types.js';
import { referenceOps } from './helpers/reference.js';
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

/** (k, n) -> the value the kernels should multiply by, read back from a quantized field's bytes. */
function dequantizedMatrix(packed: PackedWeights, field: WeightField): (k: number, n: number) => number {
  if (field.layout.kind !== 'matrix' || !field.layout.quantized) throw new Error('expected a quantized matrix');
  const { rows, columns, panelWidth, quantized } = field.layout;
  const bytes = new Uint8Array(packed.data.buffer, packed.data.byteOffset, packed.data.byteLength);
  const values = bytes.subarray(field.offset * 4, (field.offset + field.length) * 4);
  const scales = bytes.subarray(quantized.scales.offset * 4, (quantized.scales.offset + quantized.scales.words) * 4);
  const shape = { rows, columns, panelWidth, kGroup: quantized.kGroup };
  return (k, n) => dequantizedValue(quantized, shape, values, scales, k, n);
}

const floatsOf = (packed: PackedWeights, field: WeightField, count: number) => packed.data.slice(field.offset, field.offset + count);
const ones = (n: number) => new Float32Array(n).fill(1);

/**
 * A checkpoint whose float64 reference computes what the quantized kernels should: the layout folds
 * LayerNorm affines, layer scales and the GRN bias into the matrices and biases before quantizing,
 * so here those are identities and the matrices/biases are the packed (folded, dequantized) ones.
 */
function dequantizedCheckpoint(spec: ModelSpec, original: CheckpointWeights, packed: PackedWeights): CheckpointWeights {
  const stages = original.stages.map((stage, s): StageWeights => {
    const groups = packed.layout.stages[s];
    return {
      downsample: stage.downsample && groups.downsample && dequantizedDownsample(packed, groups.downsample, spec.hiddenSizes[s - 1], spec.hiddenSizes[s]),
      blocks: stage.blocks.map((block, j) => dequantizedBlock(packed, groups.blocks[j], block, spec.hiddenSizes[s])),
    };
  });
  return { ...original, stages, classifier: original.classifier && dequantizedClassifier(packed, packed.layout.classifier!, spec) };
}

function dequantizedBlock(packed: PackedWeights, group: BlockGroup, block: BlockWeights, channels: number): BlockWeights {
  const hidden = block.pwconv1Bias.length;
  const pw1 = dequantizedMatrix(packed, group.fields.pw1Weight);
  const pw2 = dequantizedMatrix(packed, group.fields.pw2Weight);
  return {
    ...block,
    norm: { weight: ones(channels), bias: new Float32Array(channels) },
    pwconv1Weight: Float32Array.from({ length: hidden * channels }, (_, i) => pw1(i % channels, Math.floor(i / channels))),
    pwconv1Bias: floatsOf(packed, group.fields.pw1Bias, hidden),
    grn: block.grn && { weight: block.grn.weight, bias: new Float32Array(hidden) },
    pwconv2Weight: Float32Array.from({ length: channels * hidden }, (_, i) => pw2(i % hidden, Math.floor(i / hidden))),
    pwconv2Bias: floatsOf(packed, group.fields.pw2Bias, channels),
    layerScale: undefined,
  };
}

function dequantizedDownsample(packed: PackedWeights, group: DownsampleGroup, previous: number, channels: number): NonNullable<StageWeights['downsample']> {
  const conv = dequantizedMatrix(packed, group.fields.weight);
  const inPadded = group.fields.weight.layout.kind === 'matrix' ? group.fields.weight.layout.rows / 4 : 0;
  // Checkpoint order [co][ci][ky][kx]; the packed K runs over (tap = ky * 2 + kx, padded ci).
  const convWeight = Float32Array.from({ length: channels * previous * 4 }, (_, i) => {
    const tap = i % 4;
    const ci = Math.floor(i / 4) % previous;
    return conv(tap * inPadded + ci, Math.floor(i / (4 * previous)));
  });
  return { norm: { weight: ones(previous), bias: new Float32Array(previous) }, convWeight, convBias: floatsOf(packed, group.fields.bias, channels) };
}

function dequantizedClassifier(packed: PackedWeights, group: LinearGroup, spec: ModelSpec): NonNullable<CheckpointWeights['classifier']> {
  const matrix = dequantizedMatrix(packed, group.fields.weight);
  const last = spec.hiddenSizes[spec.numStages - 1];
  return {
    weight: Float32Array.from({ length: spec.numLabels * last }, (_, i) => matrix(i % last, Math.floor(i / last))),
    bias: floatsOf(packed, group.fields.bias, spec.numLabels),
  };
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
