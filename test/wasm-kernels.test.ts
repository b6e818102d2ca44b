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
import { at, referenceOps, type Map4 } from './helpers/reference.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';

/** Within the golden bar's form, ten times tighter: max |out - ref| <= 2e-5 x max(1, max |ref|). */
const BAR = 2e-5;
const BATCH = 2;
/** Patch 3 on 23 x 29: level 0 is 7 x 9, level 1 is 3 x 4 (odd sizes floored). */
const INPUT = { height: 23, width: 29 };

const base = { num_channels: 3, patch_size: 3, num_stages: 2, hidden_sizes: [12, 20], depths: [1, 1], image_size: 23 };
const CONFIGS = {
  v1: { ...base, model_type: 'convnext', hidden_act: 'gelu', layer_scale_init_value: 0.5, num_labels: 7, architectures: ['ConvNextForImageClassification'] },
  v2: { ...base, model_type: 'convnextv2', hidden_act: 'gelu', num_labels: 5, architectures: ['ConvNextV2ForImageClassification'] },
  backbone: { ...base, model_type: 'convnext', hidden_act: 'silu', architectures: ['ConvNextBackbone'], out_features: ['stem', 'stage2'] },
};

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

function randomMap(n: number, c: number, h: number, w: number, seed: number): Map4 {
  const next = random(seed);
  return { data: Float64Array.from({ length: n * c * h * w }, () => 2 * next()), n, c, h, w };
}

/** An NCHW map into an NHWC buffer with `channels.padded` floats per pixel (padding lanes zero). */
function writeNhwc(memory: WebAssembly.Memory, address: number, x: Map4, channels: Channels): void {
  const view = new Float32Array(memory.buffer, address, x.n * x.h * x.w * channels.padded).fill(0);
  for (let n = 0; n < x.n; n++) for (let c = 0; c < x.c; c++) for (let y = 0; y < x.h; y++) for (let xx = 0; xx < x.w; xx++) {
    view[((n * x.h + y) * x.w + xx) * channels.padded + c] = x.data[at(x, n, c, y, xx)];
  }
}

/** An NHWC buffer back as NCHW, checking that the padding lanes stayed zero. */
function readNhwc(memory: WebAssembly.Memory, address: number, shape: Omit<Map4, 'data'>, channels: Channels): Map4 {
  const view = new Float32Array(memory.buffer, address, shape.n * shape.h * shape.w * channels.padded);
  const x: Map4 = { ...shape, data: new Float64Array(shape.n * shape.c * shape.h * shape.w) };
  for (let n = 0; n < x.n; n++) for (let y = 0; y < x.h; y++) for (let xx = 0; xx < x.w; xx++) {
    const pixel = ((n * x.h + y) * x.w + xx) * channels.padded;
    for (let c = 0; c < x.c; c++) x.data[at(x, n, c, y, xx)] = view[pixel + c];
    for (let c = x.c; c < channels.padded; c++) expect(view[pixel + c], 'padding lane').toBe(0);
  }
  return x;
}

function expectClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let scale = 1;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  console.log(`  ${label}: max error ${worst.toExponential(2)} (bar ${(BAR * scale).toExponential(2)})`);
  expect(worst).toBeLessThanOrEqual(BAR * scale);
}

const stepIndex = (h: Harness, predicate: (step: PlanStep) => boolean) => {
  const index = h.plan.steps.findIndex(predicate);
  if (index < 0) throw new Error('no such step in the plan');
  return index;
};
const levelShape = (h: Harness, level: number, c: number) => {
  const size = [{ h: Math.floor(INPUT.height / 3), w: Math.floor(INPUT.width / 3) }];
  size.push({ h: Math.floor(size[0].h / 2), w: Math.floor(size[0].w / 2) });
  return { n: BATCH, c, h: size[level].h, w: size[level].w };
};

describe('WASM kernels, one at a time, against the float64 reference (batch 2, 23x29 input, patch 3)', () => {
  test('stem: patchify conv + LayerNorm, NCHW input to NHWC', async () => {
    const h = await harness(CONFIGS.v1, 1);
    const step = h.plan.steps[0] as Extract<PlanStep, { op: 'stem' }>;
    const input = randomMap(BATCH, 3, INPUT.height, INPUT.width, 11);
    const { memory, arena } = await runStep(h, 0, (mem, a) => new Float32Array(mem.buffer, a.at.get('input')!, input.data.length).set(input.data));
    const expected = referenceOps.stem(input, h.spec, h.checkpoint);
    expectClose('stem', readNhwc(memory, arena.at.get(step.dst)!, levelShape(h, 0, 12), step.out).data, expected.data);
  });

  test('downsample: LayerNorm + 2x2 stride-2 conv, odd sizes floored', async () => {
    const h = await harness(CONFIGS.v1, 2);
    const index = stepIndex(h, (s) => s.op === 'downsample');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'downsample' }>;
    const x = randomMap(BATCH, 12, 7, 9, 12);
    const { memory, arena } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.in));
    const expected = referenceOps.downsample(x, h.checkpoint.stages[1].downsample!, 20);
    expectClose('downsample', readNhwc(memory, arena.at.get(step.dst)!, levelShape(h, 1, 20), step.out).data, expected.data);
  });

  for (const [name, config] of [['ConvNeXt block (gelu, layer scale)', CONFIGS.v1], ['ConvNeXt V2 block (GRN)', CONFIGS.v2]] as const) {
    for (const level of [0, 1]) {
      test(`${name} at level ${level}: dwconv + LN + pwconv1 + act + pwconv2 + residual`, async () => {
        const h = await harness(config, 3 + level);
        const index = stepIndex(h, (s) => s.op === 'block' && s.level === level);
        const step = h.plan.steps[index] as Extract<PlanStep, { op: 'block' }>;
        const shape = levelShape(h, level, step.channels.real);
        const x = randomMap(BATCH, shape.c, shape.h, shape.w, 13 + level);
        const { memory, arena } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
        const expected = referenceOps.block(x, h.checkpoint.stages[level].blocks[0], h.spec.hiddenAct);
        expectClose(`${name} level ${level}`, readNhwc(memory, arena.at.get(step.dst)!, shape, step.channels).data, expected.data);
      });
    }
  }

  test('feature map: LayerNorm with affine of a stage output, NCHW out', async () => {
    const h = await harness(CONFIGS.backbone, 5);
    const index = stepIndex(h, (s) => s.op === 'featureMap' && s.level === 1);
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'featureMap' }>;
    const x = randomMap(BATCH, 20, 3, 4, 15);
    const { outputs } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
    const expected = referenceOps.featureMap(x, h.checkpoint.featureNorms.stage2);
    expect(outputs.get(step.name)!.shape).toEqual([BATCH, 20, 3, 4]);
    expectClose('feature map', outputs.get(step.name)!.data, expected.data);
  });

  test('pool: mean over H x W + LayerNorm with the config eps', async () => {
    const h = await harness(CONFIGS.v1, 6);
    const index = stepIndex(h, (s) => s.op === 'pool');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'pool' }>;
    const x = randomMap(BATCH, 20, 3, 4, 16);
    const { outputs } = await runStep(h, index, (mem, a) => writeNhwc(mem, a.at.get(step.src)!, x, step.channels));
    const expected = referenceOps.pool(x, h.checkpoint.poolerNorm!, h.spec.layerNormEps);
    expectClose('pool', outputs.get('pooler_output')!.data, expected.flatMap((row) => [...row]));
  });

  test('classifier: linear over the pooled rows (7 labels, padded to 8)', async () => {
    const h = await harness(CONFIGS.v1, 7);
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
