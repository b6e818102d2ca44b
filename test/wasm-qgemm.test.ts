/**
 * The WASM integer kernels of q8/q4 packages. First the integer GEMM alone, against an exact integer
 * reference: weights and activations are integers with scales of exactly 1, so every int32 sum
 * reaches the output unchanged (up to its conversion to float32, done identically here), at the
 * largest magnitudes the activation limit allows. Then every kernel kind that reads a quantized
 * matrix, against the float64 reference computed with the weights the kernel really uses
 * (dequantizedValue() of the stored bytes, and the float32 fields): what remains is the
 * activations' quantization to int16, which the bar below accounts for.
 */
import { describe, expect, test } from 'vitest';
import wabtInit from 'wabt';
import { parseModelConfig, DWCONV_KERNEL, type ModelSpec } from '../compiler/config.js';
import type { BlockWeights, CheckpointWeights } from '../compiler/checkpoint.js';
import { packWeights, type PackedWeights, type WeightField } from '../compiler/layout.js';
import { dequantizedValue, quantizedIndex, scaleIndex, QUANT_BLOCK_ROWS } from '../compiler/quantize.js';
import { planModel, type KernelPlan, type PlanStep } from '../compiler/plan.js';
import { activationLimit, integerGemmSource, renderWasm, WASM_PACKING, type QuantizedGemm, type WasmProgram } from '../compiler/wasm.js';
import { floatsToHalves } from '../runtime/half.js';
import { planArena, runSteps, type RunContext } from '../runtime/wasm.js';
import type { Channels, RawOutputs } from '../runtime/types.js';
import { referenceOps, type Map4 } from './helpers/reference.js';
import { BATCH, INPUT, KERNEL_CONFIGS, expectClose, fromNhwc, levelShape, randomMap, toNhwc } from './helpers/kernel-check.js';
import { random, randomCheckpoint } from './helpers/random-checkpoint.js';

// ---- the integer GEMM alone ---------------------------------------------------------------------

const PANEL = WASM_PACKING.panelWidth;

interface ExactCase { bits: 8 | 4; rows: number; k: number; n: number }

type GemmEntry = (a: number, w: number, bias: number, out: number, rows: number, work: number) => void;

/** Assembles one integer GEMM (epilogue: bias) with an exported entry point ($work: where each panel is widened to int16). */
async function integerGemm(spec: ExactCase, scalesBytes: number): Promise<GemmEntry> {
  const quantized: QuantizedGemm = { bits: spec.bits, blockRows: spec.bits === 8 ? spec.k : QUANT_BLOCK_ROWS, scalesBytes };
  const quantizers = new Map<string, string>();
  const gemm = integerGemmSource({ name: 'qgemm', k: spec.k, n: spec.n, epilogue: 'bias', quantized }, quantized, 'gelu', quantizers);
  const wat = `(module (import "env" "memory" (memory 1 65536))
${gemm}
${[...quantizers.values()].join('\n')}
  (func (export "run") (param i32 i32 i32 i32 i32 i32)
    (call $qgemm (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4) (i32.const 0) (i32.const 0) (local.get 5))))`;
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('qgemm.wat', wat, { simd: true });
  const binary = new Uint8Array(parsed.toBinary({}).buffer);
  parsed.destroy();
  const { instance } = await WebAssembly.instantiate(binary, { env: { memory: integerMemory } });
  return instance.exports.run as GemmEntry;
}
const integerMemory = new WebAssembly.Memory({ initial: 64, maximum: 65536 });

/** Random integers in [lo, hi], with the extremes forced in at a few places. */
function integers(count: number, lo: number, hi: number, seed: number): Int32Array {
  const next = random(seed);
  const values = Int32Array.from({ length: count }, () => Math.min(hi, lo + Math.floor(((next() + 1) / 2) * (hi - lo + 1))));
  for (let i = 0; i < count; i += 37) values[i] = i % 74 === 0 ? lo : hi;
  return values;
}

describe('integer GEMM: int32 sums exactly as an integer reference computes them', () => {
  const cases: ExactCase[] = [
    { bits: 8, rows: 7, k: 40, n: 24 },
    { bits: 8, rows: 13, k: 3064, n: 8 },
    { bits: 4, rows: 7, k: 40, n: 24 },
    { bits: 4, rows: 11, k: 1000, n: 16 },
  ];
  test.each(cases)('q$bits: $rows rows x K $k x N $n', async (c) => {
    const { rows, k, n, bits } = c;
    const blockRows = bits === 8 ? k : QUANT_BLOCK_ROWS;
    const blocks = Math.ceil(k / blockRows);
    const limit = activationLimit({ bits, blockRows }, k);
    const maxWeight = bits === 8 ? 127 : 8;
    // Weights: random integers over the full stored range; column 0 all at +max (|q4| max is -8),
    // so with row 0 all at +limit the largest sum the limit allows is reached.
    const q = integers(k * n, bits === 8 ? -127 : -8, bits === 8 ? 127 : 7, 1 + k);
    for (let kk = 0; kk < k; kk++) q[kk * n] = bits === 8 ? 127 : -8;
    const a = integers(rows * k, -limit, limit, 2 + k);
    for (let kk = 0; kk < k; kk++) a[kk] = bits === 8 ? limit : -limit;
    // Every other row holds +limit somewhere too, so every row's scale is exactly 1.
    for (let r = 1; r < rows; r++) a[r * k + (r % k)] = limit;
    const shape = { rows: k, columns: n, panelWidth: PANEL, kGroup: 2 };
    const valueBytes = bits === 8 ? k * n : Math.ceil((k * n) / 2);
    const scalesBytes = Math.ceil(valueBytes / 64) * 64;
    const W = 1 << 16;
    const bytes = new Uint8Array(integerMemory.buffer);
    bytes.fill(0);
    const view = new DataView(integerMemory.buffer);
    for (let kk = 0; kk < k; kk++) {
      for (let nn = 0; nn < n; nn++) {
        const e = quantizedIndex(kk, nn, shape);
        const value = q[kk * n + nn];
        if (bits === 8) bytes[W + e] = value & 0xff;
        else bytes[W + (e >> 1)] |= (value + 8) << ((e & 1) * 4);
      }
    }
    const one = new Uint16Array(1);
    floatsToHalves(new Float32Array([1]), one);
    for (let b = 0; b < blocks; b++) {
      for (let nn = 0; nn < n; nn++) {
        const at = W + scalesBytes + scaleIndex(b, nn, blocks, shape) * (bits === 8 ? 4 : 2);
        if (bits === 8) view.setFloat32(at, 1, true);
        else view.setUint16(at, one[0], true);
      }
    }
    const A = W + scalesBytes + 65536;
    const bias = A + rows * k * 4;
    const out = bias + n * 4 + 64;
    new Float32Array(integerMemory.buffer, A, rows * k).set(a);
    const run = await integerGemm(c, scalesBytes);
    run(A, W, bias, out, rows, out + rows * n * 4 + 64);
    const produced = new Float32Array(integerMemory.buffer, out, rows * n);
    let largest = 0;
    for (let r = 0; r < rows; r++) {
      for (let nn = 0; nn < n; nn++) {
        // q8: one int32 sum over K; q4: one per block of 32, added in float32 in block order
        let expected = 0;
        for (let b = 0; b < blocks; b++) {
          let sum = 0;
          for (let kk = b * blockRows; kk < Math.min(k, (b + 1) * blockRows); kk++) sum += a[r * k + kk] * q[kk * n + nn];
          expect(Math.abs(sum)).toBeLessThanOrEqual(2 ** 31 - 1);
          largest = Math.max(largest, Math.abs(sum));
          expected = Math.fround(expected + Math.fround(sum));
        }
        expect(produced[r * n + nn], `row ${r} column ${nn}`).toBe(expected);
      }
    }
    // the worst case was reached: the limit is as large as int32 allows (or int16's own limit)
    const bound = limit * maxWeight * Math.min(k, blockRows);
    expect(largest).toBe(bound);
    expect(limit === 32767 || (limit + 1) * maxWeight * Math.min(k, blockRows) > 2 ** 31 - 1).toBe(true);
  });
});

// ---- every kernel kind that reads a quantized matrix ------------------------------------------------

interface Harness { spec: ModelSpec; packed: PackedWeights; plan: KernelPlan; program: WasmProgram; modules: WebAssembly.Module[] }

async function harness(config: object, dtype: 'q8' | 'q4', seed: number): Promise<Harness> {
  const spec = parseModelConfig(config, 'kernel test config.json');
  const packed = packWeights(spec, { ...WASM_PACKING, dtype }, randomCheckpoint(spec, seed));
  const plan = planModel(spec, packed.layout);
  const { program } = await renderWasm(plan, packed.layout);
  const modules = await Promise.all([program.binaries.simd, program.binaries.relaxed].map((b) => WebAssembly.compile(b as Uint8Array<ArrayBuffer>)));
  return { spec, packed, plan, program, modules };
}

/** A matrix field's element (k, n) as the kernels use it: dequantized, or the stored float. */
function fieldValue(h: Harness, field: WeightField, k: number, n: number): number {
  if (field.layout.kind !== 'matrix') throw new Error('not a matrix');
  const { rows, columns, panelWidth, quantized } = field.layout;
  const bytes = new Uint8Array(h.packed.data.buffer);
  if (!quantized) return h.packed.data[field.offset + Math.floor(n / panelWidth) * rows * panelWidth + k * panelWidth + (n % panelWidth)];
  const values = bytes.subarray(field.offset * 4, (field.offset + field.length) * 4);
  const scales = bytes.subarray(quantized.scales.offset * 4, (quantized.scales.offset + quantized.scales.words) * 4);
  return dequantizedValue(quantized, { rows, columns, panelWidth, kGroup: quantized.kGroup }, values, scales, k, n);
}
const vector = (h: Harness, field: WeightField, count: number) => h.packed.data.slice(field.offset, field.offset + count);
const matrix = (count: number, value: (i: number) => number) => Float32Array.from({ length: count }, (_, i) => value(i));
const ones = (count: number) => new Float32Array(count).fill(1);

/**
 * A block's weights as the checkpoint the reference reads, taken from the packed layout: LayerNorm
 * affine, layer scale and GRN bias are already folded there, so they are identities here.
 */
function packedBlock(h: Harness, step: Extract<PlanStep, { op: 'block' }>): BlockWeights {
  const f = step.weights.fields;
  const c = step.channels.real;
  const hidden = step.hidden.real;
  const taps = DWCONV_KERNEL * DWCONV_KERNEL;
  return {
    dwconvWeight: matrix(c * taps, (i) => fieldValue(h, f.dwWeight, i % taps, Math.floor(i / taps))),
    dwconvBias: vector(h, f.dwBias, c),
    norm: { weight: ones(c), bias: new Float32Array(c) },
    pwconv1Weight: matrix(hidden * c, (i) => fieldValue(h, f.pw1Weight, i % c, Math.floor(i / c))),
    pwconv1Bias: vector(h, f.pw1Bias, hidden),
    grn: f.grnGamma ? { weight: vector(h, f.grnGamma, hidden), bias: new Float32Array(hidden) } : undefined,
    pwconv2Weight: matrix(c * hidden, (i) => fieldValue(h, f.pw2Weight, i % hidden, Math.floor(i / hidden))),
    pwconv2Bias: vector(h, f.pw2Bias, c),
  };
}

/**
 * Runs plan step `index` alone in the plain and the relaxed build; they must agree bit for bit (the
 * integer kernels use no FMA), and the plain build's outputs are returned.
 */
async function runStep(h: Harness, index: number, fill: (memory: WebAssembly.Memory, at: (buffer: string) => number) => void, read: (memory: WebAssembly.Memory, outputs: RawOutputs, at: (buffer: string) => number) => Float32Array): Promise<Float32Array> {
  const results: Float32Array[] = [];
  for (const module of h.modules) {
    const weightsBase = h.program.weightsBase;
    const arena = planArena(h.program.buffers, h.spec, Math.ceil((weightsBase + h.packed.data.byteLength) / 64) * 64, BATCH, INPUT, 1);
    const memory = new WebAssembly.Memory({ initial: Math.ceil(arena.end / 65536) + 1, maximum: 65536 });
    const instance = await WebAssembly.instantiate(module, { env: { memory } });
    new Float32Array(memory.buffer, weightsBase, h.packed.data.length).set(h.packed.data);
    const at = (buffer: string) => arena.at.get(buffer)!;
    fill(memory, at);
    const ctx: RunContext = {
      memory, kernels: instance.exports as RunContext['kernels'], kernelIndex: new Map(), arena,
      weightsAt: (offset) => weightsBase + offset * 4, outputs: new Map(),
    };
    await runSteps([h.program.steps[index]], ctx, true, false);
    results.push(read(memory, ctx.outputs, at).slice());
  }
  expect(results[1]).toEqual(results[0]);
  return results[0];
}

const writeNhwc = (memory: WebAssembly.Memory, address: number, x: Map4, channels: Channels) =>
  toNhwc(x, channels, new Float32Array(memory.buffer, address, x.n * x.h * x.w * channels.padded));
const nhwcView = (memory: WebAssembly.Memory, address: number, shape: Omit<Map4, 'data'>, channels: Channels) =>
  new Float32Array(memory.buffer, address, shape.n * shape.h * shape.w * channels.padded);

/**
 * The bar, max |out - ref| <= 1e-4 x max(1, max|ref|): activations are quantized per row to int16
 * with the row's largest magnitude at 32767 (every K here allows the full int16 range), an error
 * of at most 1/65534 of that magnitude per value (1.5e-5). A GEMM output then errs by at most
 * sum_k |w_kn| times that, much less where the errors' signs cancel; a block quantizes twice (its
 * normalized input, its hidden row) and adds the residual. Measured here: 0.9e-5 (classifier) to
 * 3.8e-5 (V2 block) x max(1, max|ref|), the same for q8 and q4. The bar sits 2.6x above that and
 * two orders of magnitude below what the weights' own rounding costs (1e-2 for q8, 1e-1 for q4):
 * a wrong scale, block, nibble or k-pair would miss it by far.
 */
const INTEGER_KERNEL_BAR = 1e-4;

const stepIndex = (h: Harness, predicate: (step: PlanStep) => boolean) => {
  const index = h.plan.steps.findIndex(predicate);
  if (index < 0) throw new Error('no such step in the plan');
  return index;
};

describe.each(['q8', 'q4'] as const)('%s WASM kernels against float64 with the dequantized weights (batch 2, 23x29 input, patch 3)', (dtype) => {
  for (const [name, config] of [['ConvNeXt block (gelu, layer scale)', KERNEL_CONFIGS.v1], ['ConvNeXt V2 block (GRN)', KERNEL_CONFIGS.v2]] as const) {
    for (const level of [0, 1]) {
      test(`${name} at level ${level}`, async () => {
        const h = await harness(config, dtype, 3 + level);
        const index = stepIndex(h, (s) => s.op === 'block' && s.level === level);
        const step = h.plan.steps[index] as Extract<PlanStep, { op: 'block' }>;
        expect(step.weights.dtype).toBe(dtype);
        const shape = levelShape(level, step.channels.real);
        const x = randomMap(BATCH, shape.c, shape.h, shape.w, 13 + level);
        const out = await runStep(h, index, (mem, at) => writeNhwc(mem, at(step.src), x, step.channels),
          (mem, _, at) => nhwcView(mem, at(step.dst), shape, step.channels));
        const expected = referenceOps.block(x, packedBlock(h, step), h.spec.hiddenAct);
        expectClose(`${dtype} ${name} level ${level}`, fromNhwc(out, shape, step.channels).data, expected.data, INTEGER_KERNEL_BAR);
      });
    }
  }

  test('downsample: LayerNorm + 2x2 stride-2 conv, odd sizes floored', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, dtype, 2);
    const index = stepIndex(h, (s) => s.op === 'downsample');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'downsample' }>;
    const x = randomMap(BATCH, 12, 7, 9, 12);
    const shape = levelShape(1, 20);
    const out = await runStep(h, index, (mem, at) => writeNhwc(mem, at(step.src), x, step.in), (mem, _, at) => nhwcView(mem, at(step.dst), shape, step.out));
    // K runs over (tap, ci) with ci padded (compiler/layout.ts); the reference's conv is [co][ci][ky][kx]
    const f = step.weights.fields;
    const ciPad = step.in.padded;
    const weights: NonNullable<CheckpointWeights['stages'][number]['downsample']> = {
      norm: { weight: ones(12), bias: new Float32Array(12) },
      convWeight: matrix(20 * 12 * 4, (i) => fieldValue(h, f.weight, (i % 4) * ciPad + (Math.floor(i / 4) % 12), Math.floor(i / 48))),
      convBias: vector(h, f.bias, 20),
    };
    expectClose(`${dtype} downsample`, fromNhwc(out, shape, step.out).data, referenceOps.downsample(x, weights, 20).data, INTEGER_KERNEL_BAR);
  });

  test('classifier: linear over the pooled rows (7 labels, padded to 8)', async () => {
    const h = await harness(KERNEL_CONFIGS.v1, dtype, 7);
    const index = stepIndex(h, (s) => s.op === 'classifier');
    const step = h.plan.steps[index] as Extract<PlanStep, { op: 'classifier' }>;
    const next = random(17);
    const rows = Array.from({ length: BATCH }, () => Float64Array.from({ length: 20 }, () => 2 * next()));
    const out = await runStep(h, index, (mem, at) => {
      const pooled = new Float32Array(mem.buffer, at('pooled'), BATCH * step.in.padded).fill(0);
      rows.forEach((row, b) => pooled.set(row, b * step.in.padded));
    }, (_, outputs) => outputs.get('logits')!.data);
    const f = step.weights.fields;
    const weights = { weight: matrix(7 * 20, (i) => fieldValue(h, f.weight, i % 20, Math.floor(i / 20))), bias: vector(h, f.bias, 7) };
    expectClose(`${dtype} classifier`, out, referenceOps.classifier(rows, weights, 7).flatMap((row) => [...row]), INTEGER_KERNEL_BAR);
  });
});
