/**
 * The float64 reference of a quantized build (--weights-dtype q8 / q4): a checkpoint whose
 * reference forward pass (test/helpers/reference.ts) multiplies by exactly the weights the kernels
 * are meant to use, the packed matrices as compiler/quantize.ts dequantizes them. The layout folds
 * LayerNorm affines, layer scales and the GRN bias into the matrices and biases before quantizing,
 * so here those are identities and the matrices and biases are the packed (folded) ones.
 */
import type { ModelSpec } from '../../compiler/config.js';
import type { BlockWeights, CheckpointWeights, StageWeights } from '../../compiler/checkpoint.js';
import type { PackedWeights, WeightField } from '../../compiler/layout.js';
import { dequantizedValue } from '../../compiler/quantize.js';
import type { BlockGroup, DownsampleGroup, LinearGroup } from '../../runtime/types.js';

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
export function dequantizedCheckpoint(spec: ModelSpec, original: CheckpointWeights, packed: PackedWeights): CheckpointWeights {
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
