/**
 * Stage 4: the fused kernel plan. A target-independent list of fused operations
 * over NHWC activations, with the buffers each reads and writes and the weight
 * group each streams. Renderers (WASM, WGSL) turn each op into one or more
 * kernels; the runtime walks the same list as its dispatch list.
 *
 * Levels: level 0 is the stem's output resolution, level s the resolution of stage s
 * (each downsampling halves it, flooring odd sizes). Spatial sizes are the only
 * thing not known at compile time; channel counts, kernel sizes and weight
 * offsets all are.
 *
 * Buffers: each op's result is a new tensor; tensors get activation buffers by liveness
 * (a buffer is reused once the tensor in it has no reader left), so the plan uses as few
 * buffers as its heads need: two for a classifier, more for a head that keeps several
 * stage outputs alive.
 */
import { INNER_LAYER_NORM_EPS, MLP_RATIO, stageNames, type ModelSpec } from './config.js';
import type { ActivationBufferName, Channels, PlanStep } from '../runtime/types.js';
import { paddedChannels, type Packing, type WeightLayout } from './layout.js';

export type { BufferName, ActivationBufferName, Channels, PlanStep } from '../runtime/types.js';

export interface KernelPlan {
  spec: ModelSpec;
  packing: Packing;
  /** Channels at each level (level s = stage s). */
  levels: Channels[];
  steps: PlanStep[];
  /** The NHWC activation buffers the steps use, and the levels each ever holds (for sizing). */
  activationBuffers: Array<{ name: ActivationBufferName; levels: number[] }>;
  /** The smallest input height/width the network accepts (every level at least 1 pixel). */
  minInputSize: number;
  weightFloats: number;
}

/** A step whose activation operands are still tensor numbers (before buffers are assigned). */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type TensorStep = DistributiveOmit<PlanStep, 'src' | 'dst'> & { src: number | 'input' | 'pooled'; dst?: number | 'pooled' | 'logits' };

export function planModel(spec: ModelSpec, layout: WeightLayout): KernelPlan {
  const channels = (real: number): Channels => ({ real, padded: paddedChannels(real, layout.packing) });
  const levels = spec.hiddenSizes.map(channels);
  const steps: TensorStep[] = [];
  const names = stageNames(spec.numStages);
  let tensors = 0;
  let current = tensors++;

  const emitOutputs = (hiddenIndex: number, level: number) => {
    steps.push({ op: 'output', name: `hidden_states.${hiddenIndex}`, level, src: current, channels: levels[level], onlyWithHiddenStates: true });
    const feature = names[hiddenIndex];
    if (spec.head === 'backbone' && spec.outFeatures.includes(feature)) {
      steps.push({
        op: 'featureMap', name: `feature_maps.${spec.outFeatures.indexOf(feature)}`, level, src: current,
        channels: levels[level], weights: layout.featureNorms[feature], eps: INNER_LAYER_NORM_EPS,
      });
    }
  };

  steps.push({
    op: 'stem', level: 0, src: 'input', dst: current, inChannels: spec.numChannels, out: levels[0],
    patch: spec.patchSize, weights: layout.stem, eps: INNER_LAYER_NORM_EPS,
  });
  emitOutputs(0, 0);
  spec.hiddenSizes.forEach((real, s) => {
    const groups = layout.stages[s];
    if (s > 0) {
      const dst = tensors++;
      steps.push({ op: 'downsample', level: s, src: current, dst, in: levels[s - 1], out: levels[s], weights: groups.downsample!, eps: INNER_LAYER_NORM_EPS });
      current = dst;
    }
    groups.blocks.forEach((weights, j) => {
      const dst = tensors++;
      steps.push({
        op: 'block', level: s, stage: s, index: j, src: current, dst, channels: levels[s], hidden: channels(MLP_RATIO * real),
        activation: spec.hiddenAct, grn: spec.grn, weights, eps: INNER_LAYER_NORM_EPS,
      });
      current = dst;
    });
    emitOutputs(s + 1, s);
  });

  const lastLevel = spec.numStages - 1;
  steps.push({ op: 'output', name: 'last_hidden_state', level: lastLevel, src: current, channels: levels[lastLevel], onlyWithHiddenStates: false });
  if (spec.head !== 'backbone') {
    steps.push({ op: 'pool', level: lastLevel, src: current, dst: 'pooled', channels: levels[lastLevel], weights: layout.pooler!, eps: spec.layerNormEps });
  }
  if (spec.head === 'classification' && spec.numLabels > 0) {
    steps.push({ op: 'classifier', src: 'pooled', dst: 'logits', in: levels[lastLevel], labels: channels(spec.numLabels), weights: layout.classifier! });
  }
  const { steps: planned, buffers } = assignBuffers(steps);
  return {
    spec, packing: layout.packing, levels, steps: planned, activationBuffers: buffers,
    minInputSize: spec.patchSize * 2 ** (spec.numStages - 1),
    weightFloats: layout.floats,
  };
}

const isTensor = (operand: unknown): operand is number => typeof operand === 'number';

/**
 * Gives every tensor an activation buffer: a step's result takes the lowest-numbered buffer that
 * holds no live tensor (a tensor is live from the step that writes it to its last reader), so a
 * step never writes a buffer it reads.
 */
export function assignBuffers(steps: TensorStep[]): { steps: PlanStep[]; buffers: KernelPlan['activationBuffers'] } {
  const lastRead = new Map<number, number>();
  steps.forEach((step, index) => {
    if (isTensor(step.src)) lastRead.set(step.src, index);
  });
  const bufferOf = new Map<number, number>();
  const holder: Array<number | undefined> = []; // buffer index -> tensor in it, undefined when free
  const levelsOf: Array<Set<number>> = [];
  const planned = steps.map((step, index) => {
    let dst = step.dst;
    if (isTensor(step.dst)) {
      const tensor = step.dst;
      let free = holder.findIndex((t) => t === undefined);
      if (free < 0) {
        free = holder.length;
        levelsOf.push(new Set());
      }
      holder[free] = tensor;
      bufferOf.set(tensor, free);
      levelsOf[free].add('level' in step ? step.level : 0);
      dst = free;
    }
    const src = isTensor(step.src) ? bufferOf.get(step.src)! : step.src;
    // Free what this step read last, after its own result took a buffer.
    if (isTensor(step.src) && lastRead.get(step.src) === index) holder[bufferOf.get(step.src)!] = undefined;
    if (isTensor(step.dst) && !lastRead.has(step.dst)) holder[bufferOf.get(step.dst)!] = undefined;
    const name = (operand: unknown) => (isTensor(operand) ? (`act${operand}` as const) : operand);
    return (step.dst === undefined ? { ...step, src: name(src) } : { ...step, src: name(src), dst: name(dst) }) as PlanStep;
  });
  return { steps: planned, buffers: levelsOf.map((levels, i) => ({ name: `act${i}` as const, levels: [...levels].sort((a, b) => a - b) })) };
}
