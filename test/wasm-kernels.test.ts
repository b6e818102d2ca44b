/**
 * Every WASM kernel kind alone against the float64 reference (test/helpers/reference.ts), at odd
 * sizes and batch 2: one step of the dispatch list runs on a memory whose source buffer the test
 * fills, and the buffer the step writes is read back. A kernel's error shows here by itself, where
 * a whole-model test shows only the sum of every kernel's.
 */
import { describe, expect, test } from 'vitest';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import type { CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights } from '../compiler/layout.js';
import { planModel, type KernelPlan, type PlanStep } from '../compiler/plan.js';
import { renderWasm, WASM_PACKING, type WasmProgram } from '../compiler/wasm.js';
import { planArena, runSteps, type Arena, type RunContext } from '../runtime/wasm.js';
import type { Channels, RawOutputs } from '../runtime/types.js';
import { referenceOps, type Map4 } from './helpers/reference.js';
import { BATCH, INPUT, KERNEL_CONFIGS, expectClose, fromNhwc, levelShape, randomMap, toNhwc } from './helpers/kernel-check.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';

interface Harness { spec: ModelSpec; checkpoint: CheckpointWeights; packed: PackedWeights; plan: KernelPlan; program: WasmProgram; module: WebAssembly.Module }

async function harness(config: object, seed: number): Promise<Harness> {
  const spec = parseModelConfig(config, 'kernel test config.json');
  const checkpoint = randomCheckpoint(spec, seed);
  const packed = packWeights(spec, WASM_PACKING, checkpoint);
  const plan = planModel(spec, packed.layout);
  const { program } = await renderWasm(plan, packed.layout);
  return { spec, checkpoint, packed, plan, program, module: await WebAssembly.compile(program.binaries.simd as Uint8Array<ArrayBuffer>) };
}

/** Runs plan step `index` alone; `fill` writes its inputs into the arena first. */
async function runStep(h: Harness, index: number, fill: (memory: WebAssembly.Memory, arena: Arena) => void): Promise<{ memory: WebAssembly.Memory; arena: Arena; outputs: RawOutputs }> {
  const weightsBase = h.program.weightsBase;
  const arena = planArena(h.program.buffers, h.spec, Math.ceil((weightsBase + h.packed.data.byteLength) / 64) * 64, BATCH, INPUT, 1);
  const memory = new WebAssembly.Memory({ initial: Math.ceil(arena.end / 65536) + 1, maximum: 65536 });
  const instance = await WebAssembly.instantiate(h.module, { env: { memory } });
  new Float32Array(memory.buffer, weightsBase, h.packed.data.length).set(h.packed.data);
  fill(memory, arena);
  const ctx: RunContext = {
    memory, kernels: instance.exports as RunContext['kernels'], kernelIndex: new Map(), arena,
    weightsAt: (offset) => weightsBase + offset * 4, outputs: new Map(),
  };
  await runSteps([h.program.steps[index]], ctx, true, false);
  return { memory, arena, outputs: ctx.outputs };
}

/** An NCHW map into an NHWC buffer of the arena. */
function writeNhwc(memory: WebAssembly.Memory, address: number, x: Map4, channels: Channels): void {
  toNhwc(x, channels, new Float32Array(memory.buffer, address, x.n * x.h * x.w * channels.padded));
}

function readNhwc(memory: WebAssembly.Memory, address: number, shape: Omit<Map4, 'data'>, channels: Channels): Map4 {
  return fromNhwc(new Float32Array(memory.buffer, address, shape.n * shape.h * shape.w * channels.padded), shape, channels);
}

const stepIndex = (h: Harness, predicate: (step: PlanStep) => boolean) => {
  const index = h.plan.steps.findIndex(predicate);
  if (index < 0) throw new Error('no such step in the plan');
  return index;
};
describe('WASM kernels, one at a time, against the float64 reference (batch 2, 23x29 input, patch 3)', () => {
  test('stem: patchify conv + LayerNorm, NCHW input to NHWC', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, 1);
    const step = h.plan.steps[0] as Extract<PlanStep, { op: 'stem' }>;
    const input = randomMap(BATCH, 3, INPUT.height, INPUT.width, 11);
    const { memory, arena } = await runStep(h, 0, (mem, a) => new Float32Array(mem.buffer, a.at.get('input')!, input.data.length).set(input.data));
    const expected = referenceOps.stem(input, h.spec, h.checkpoint);
    expectClose('stem', readNhwc(memory, arena.at.get(step.dst)!, levelShape(0, 12), step.out).data, expected.data);
  });

  test('downsample: LayerNorm + 2x2 stride-2 conv, odd sizes floored', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, 2);
    const index = stepIndex(h, (s) => s.op === 'downsample');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'downsample' }>;
    const x = randomMap(BATCH, 12, 7, 9, 12);
    const { memory, arena } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.in));
    const expected = referenceOps.downsample(x, h.checkpoint.stages[1].downsample!, 20);
    expectClose('downsample', readNhwc(memory, arena.at.get(step.dst)!, levelShape(1, 20), step.out).data, expected.data);
  });

  for (const [name, config] of [['ConvNeXt block (gelu, layer scale)', KERNEL_CONFIGS.v1], ['ConvNeXt V2 block (GRN)', KERNEL_CONFIGS.v2]] as const) {
    for (const level of [0, 1]) {
      test(`${name} at level ${level}: dwconv + LN + pwconv1 + act + pwconv2 + residual`, async () => {
        const h = await harness(config, 3 + level);
        const index = stepIndex(h, (s) => s.op === 'block' && s.level === level);
        const step = h.plan.steps[index] as Extract<PlanStep, { op: 'block' }>;
        const shape = levelShape(level, step.channels.real);
        const x = randomMap(BATCH, shape.c, shape.h, shape.w, 13 + level);
        const { memory, arena } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
        const expected = referenceOps.block(x, h.checkpoint.stages[level].blocks[0], h.spec.hiddenAct);
        expectClose(`${name} level ${level}`, readNhwc(memory, arena.at.get(step.dst)!, shape, step.channels).data, expected.data);
      });
    }
  }

  test('feature map: LayerNorm with affine of a stage output, NCHW out', async () => {
    const h = await harness(KERNEL_CONFIGS.backbone, 5);
    const index = stepIndex(h, (s) => s.op === 'featureMap' && s.level === 1);
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'featureMap' }>;
    const x = randomMap(BATCH, 20, 3, 4, 15);
    const { outputs } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
    const expected = referenceOps.featureMap(x, h.checkpoint.featureNorms.stage2);
    expect(outputs.get(step.name)!.shape).toEqual([BATCH, 20, 3, 4]);
    expectClose('feature map', outputs.get(step.name)!.data, expected.data);
  });

  test('pool: mean over H x W + LayerNorm with the config eps', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, 6);
    const index = stepIndex(h, (s) => s.op === 'pool');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'pool' }>;
    const x = randomMap(BATCH, 20, 3, 4, 16);
    const { outputs } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
    const expected = referenceOps.pool(x, h.checkpoint.poolerNorm!, h.spec.layerNormEps);
    expectClose('pool', outputs.get('pooler_output')!.data, expected.flatMap((row) => [...row]));
  });

  test('classifier: linear over the pooled rows (7 labels, padded to 8)', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, 7);
    const index = stepIndex(h, (s) => s.op === 'classifier');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'classifier' }>;
    const next = random(17);
    const rows = Array.from({ length: BATCH }, () => Float64Array.from({ length: 20 }, () => 2 * next()));
    const { outputs } = await runStep(h, index, (mem, a) => {
      const pooled = new Float32Array(mem.buffer, a.at.get('pooled')!, BATCH * step.in.padded).fill(0);
      rows.forEach((row, b) => pooled.set(row, b * step.in.padded));
    });
    const expected = referenceOps.classifier(rows, h.checkpoint.classifier!, 7);
    expectClose('classifier', outputs.get('logits')!.data, expected.flatMap((row) => [...row]));
  });
});
