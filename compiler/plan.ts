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
 */
import { INNER_LAYER_NORM_EPS, MLP_RATIO, type ModelSpec } from './config.js';
import type { Channels, PlanStep } from '../runtime/types.js';

export type { BufferName, Channels, PlanStep } from '../runtime/types.js';
import { findGroup, paddedChannels, type Packing, type WeightLayout } from './layout.js';

export interface KernelPlan {
  spec: ModelSpec;
  packing: Packing;
  /** Channels at each level (level s = stage s). */
  levels: Channels[];
  steps: PlanStep[];
  /** The smallest input height/width the network accepts (every level at least 1 pixel). */
  minInputSize: number;
  weightFloats: number;
}

export function planModel(spec: ModelSpec, layout: WeightLayout): KernelPlan {
  const channels = (real: number): Channels => ({ real, padded: paddedChannels(real, layout.packing) });
  const offset = (key: string) => findGroup(layout, key).offset;
  const levels = spec.hiddenSizes.map(channels);
  const steps: PlanStep[] = [];
  const stageNames = ['stem', ...spec.hiddenSizes.map((_, i) => `stage${i + 1}`)];

  // The stage output currently lives in `current`; blocks and downsampling write the other buffer.
  let current: 'a' | 'b' = 'a';
  const other = () => (current === 'a' ? 'b' : 'a');
  const emitOutputs = (hiddenIndex: number, level: number) => {
    steps.push({ op: 'output', name: `hidden_states.${hiddenIndex}`, level, src: current, channels: levels[level], onlyWithHiddenStates: true });
    const feature = stageNames[hiddenIndex];
    if (spec.head === 'backbone' && spec.outFeatures.includes(feature)) {
      steps.push({
        op: 'featureMap', name: `feature_maps.${spec.outFeatures.indexOf(feature)}`, level, src: current,
        channels: levels[level], weights: offset(`featureNorms.${feature}`), eps: INNER_LAYER_NORM_EPS,
      });
    }
  };

  steps.push({
    op: 'stem', level: 0, src: 'input', dst: current, inChannels: spec.numChannels, out: levels[0],
    patch: spec.patchSize, weights: offset('stem'), eps: INNER_LAYER_NORM_EPS,
  });
  emitOutputs(0, 0);
  spec.hiddenSizes.forEach((real, s) => {
    if (s > 0) {
      const dst = other();
      steps.push({
        op: 'downsample', level: s, src: current, dst, in: levels[s - 1], out: levels[s],
        weights: offset(`stages.${s}.downsample`), eps: INNER_LAYER_NORM_EPS,
      });
      current = dst;
    }
    for (let j = 0; j < spec.depths[s]; j++) {
      const dst = other();
      steps.push({
        op: 'block', level: s, stage: s, index: j, src: current, dst, channels: levels[s], hidden: channels(MLP_RATIO * real),
        activation: spec.hiddenAct, grn: spec.grn, weights: offset(`stages.${s}.blocks.${j}`), eps: INNER_LAYER_NORM_EPS,
      });
      current = dst;
    }
    emitOutputs(s + 1, s);
  });

  const lastLevel = spec.numStages - 1;
  steps.push({ op: 'output', name: 'last_hidden_state', level: lastLevel, src: current, channels: levels[lastLevel], onlyWithHiddenStates: false });
  if (spec.head !== 'backbone') {
    steps.push({ op: 'pool', level: lastLevel, src: current, dst: 'pooled', channels: levels[lastLevel], weights: offset('pooler'), eps: spec.layerNormEps });
  }
  if (spec.head === 'classification' && spec.numLabels > 0) {
    steps.push({ op: 'classifier', src: 'pooled', dst: 'logits', in: levels[lastLevel], labels: channels(spec.numLabels), weights: offset('classifier') });
  }
  return {
    spec, packing: layout.packing, levels, steps,
    minInputSize: spec.patchSize * 2 ** (spec.numStages - 1),
    weightFloats: layout.floats,
  };
}
