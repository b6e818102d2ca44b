/**
 * The fused plan's buffers: tensors get activation buffers by liveness. A step never writes a
 * buffer it reads, every read finds the tensor its producer wrote, and the plan uses as few
 * buffers as the longest-lived tensors need.
 */
import { describe, expect, test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { layoutWeights } from '../compiler/layout.js';
import { assignBuffers, planModel, type PlanStep } from '../compiler/plan.js';
import { WASM_PACKING } from '../compiler/wasm.js';

const config = (extra: object) => ({
  model_type: 'convnext', num_stages: 3, hidden_sizes: [8, 16, 24], depths: [2, 1, 2], hidden_act: 'gelu', ...extra,
});

/** Replays the steps over their buffers and checks each read sees the tensor its producer wrote. */
function checkDataflow(steps: PlanStep[]): void {
  const holds = new Map<string, number>(); // buffer -> index of the step whose result it holds
  let lastResult = -1;
  steps.forEach((step, index) => {
    if (step.src !== 'input' && step.src !== 'pooled') {
      expect(holds.has(step.src), `step ${index} (${step.op}) reads ${step.src} before anything wrote it`).toBe(true);
    }
    if ('dst' in step && step.dst.startsWith('act')) {
      expect(step.dst, `step ${index} (${step.op}) writes the buffer it reads`).not.toBe(step.src);
      holds.set(step.dst, index);
      lastResult = index;
    }
  });
  expect(lastResult).toBeGreaterThan(0);
}

describe('plan buffers by liveness', () => {
  test('a classifier chain ping-pongs between two buffers, and every read sees its producer', () => {
    const spec = parseModelConfig(config({ num_labels: 3 }), 'config.json');
    const plan = planModel(spec, layoutWeights(spec, WASM_PACKING));
    expect(plan.activationBuffers.map((b) => b.name)).toEqual(['act0', 'act1']);
    checkDataflow(plan.steps);
    // each step's source is the previous result (a chain): the block reads what the step before it wrote
    const chain = plan.steps.filter((s) => s.op === 'block' || s.op === 'downsample' || s.op === 'stem');
    chain.slice(1).forEach((step, i) => expect(step.src).toBe((chain[i] as { dst: string }).dst));
    // the buffers are sized for every level they hold
    expect(plan.activationBuffers.flatMap((b) => b.levels).sort()).toEqual([0, 0, 1, 1, 2, 2]);
  });

  test('a backbone over every stage still needs two: each feature map is read where it is made', () => {
    const spec = parseModelConfig(config({ architectures: ['ConvNextBackbone'], out_features: ['stem', 'stage1', 'stage2', 'stage3'] }), 'config.json');
    const plan = planModel(spec, layoutWeights(spec, WASM_PACKING));
    expect(plan.steps.filter((s) => s.op === 'featureMap')).toHaveLength(4);
    expect(plan.activationBuffers).toHaveLength(2);
    checkDataflow(plan.steps);
  });

  test('a tensor read late (as a decoder head would) keeps its buffer: a third one is allocated, then reused', () => {
    // stem -> t0; block t0 -> t1; block t1 -> t2; output reads t0 late (alive across both blocks); block t2 -> t3
    const channels = { real: 8, padded: 8 };
    const weights = {} as never;
    const block = (src: number, dst: number) => ({ op: 'block', level: 0, stage: 0, index: 0, src, dst, channels, hidden: channels, activation: 'gelu', grn: false, weights, eps: 1e-6 }) as const;
    const { steps, buffers } = assignBuffers([
      { op: 'stem', level: 0, src: 'input', dst: 0, inChannels: 3, out: channels, patch: 4, weights, eps: 1e-6 },
      block(0, 1),
      block(1, 2),
      { op: 'output', name: 'early', level: 0, src: 0, channels, onlyWithHiddenStates: false },
      block(2, 3),
      { op: 'output', name: 'last', level: 0, src: 3, channels, onlyWithHiddenStates: false },
    ]);
    expect(buffers).toHaveLength(3);
    const dsts = steps.map((s) => ('dst' in s ? s.dst : undefined));
    expect(dsts).toEqual(['act0', 'act1', 'act2', undefined, 'act0', undefined]); // act0 is free again once 'early' has read it
    expect(steps[3].src).toBe('act0');
    checkDataflow(steps);
  });
});
