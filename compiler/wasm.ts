/**
 * Stage 5 for the CPU target: renders the fused plan into one WebAssembly module
 * (WAT from templates/wasm, assembled with wabt), once with plain SIMD128 and once
 * with relaxed-SIMD FMA, and writes the dispatch list the backend walks (runtime/wasm-program.ts):
 * every kernel call with its arguments by role. Every decision lives here: which kernels exist,
 * their constants (channel counts, byte offsets of weight fields, tile sizes), which buffers a
 * run needs, and what each plan step calls.
 */
import wabtInit from 'wabt';
import { DWCONV_KERNEL, DWCONV_PADDING, GRN_EPS } from './config.js';
import type { Packing, WeightField, WeightGroup, WeightLayout } from './layout.js';
import type { KernelPlan, PlanStep } from './plan.js';
import { renderTemplate } from './templates.js';
import { activationPartial } from './activations.js';
import { quantizedStorage } from './quantize.js';
import type { WasmArg, WasmBufferSpec, WasmKernelInfo, WasmOp, WasmStep } from '../runtime/wasm-program.js';
import type { WasmVariant } from '../runtime/wasm.js';

/**
 * Output columns per weight panel: one panel row is two f32x4 registers, the GEMM microkernel's
 * column block (the templates hold a panel row in exactly two vectors).
 */
const PANEL_WIDTH = 8;
const PANEL_ROW_BYTES = PANEL_WIDTH * 4;
/** Channels padded to the panel width, so every panel is whole. */
export const WASM_PACKING: Packing = { channelAlign: PANEL_WIDTH, panelWidth: PANEL_WIDTH, kGroup: 2 };

/**
 * Rows of the GEMM register block: 4 rows x 8 columns = 8 accumulators, plus two weight
 * vectors and one broadcast. Measured on V8 (Node 20, x64): 6 rows spill and run ~20%
 * slower; unrolling K (4x) also ran slower than a tight loop.
 */
const GEMM_ROWS = 4;
/** Leftover rows (fewer than GEMM_ROWS) run as blocks of these sizes, largest first; with each at most once they cover every count below GEMM_ROWS. */
const GEMM_TAILS = [4, 2, 1].filter((t) => t < GEMM_ROWS);
/** Steps of K per loop iteration (K is always a multiple of 8: padded channels); see GEMM_ROWS. */
const GEMM_UNROLL = 1;
/**
 * Per-tile working set target (dwconv rows + hidden rows), to stay inside L2 (1-2 MiB on current
 * x86 and ARM cores). Bigger tiles stream each pointwise weight matrix fewer times per block,
 * which matters in the late stages (stage 3 of ConvNeXt-T: 9 MiB per matrix, 49 pixels):
 * 512 KiB ran ~4% faster than 256 KiB on ConvNeXt-T (AMD EPYC, 1 MiB L2).
 */
const TILE_BUDGET_BYTES = 512 * 1024;
/** Weights start after the first 64 KiB page, kept free so address 0 is never a tensor. */
export const WEIGHTS_BASE = 65536;
/**
 * The instructions the special functions (erf, tanh, exp partials) clamp their argument with. The
 * float kernels keep f32x4.min/max; the integer path's quantizer uses pmin/pmax, which give the same
 * result for every input there (x, NaN included, is the first operand) but are one instruction each on
 * x64 instead of a NaN-aware sequence: the GELU quantizer pass 31 -> 22 cycles per vector.
 */
const FLOAT_CLAMP = { clampMin: 'f32x4.min', clampMax: 'f32x4.max' };
const SINGLE_INSTRUCTION_CLAMP = { clampMin: 'f32x4.pmin', clampMax: 'f32x4.pmax' };
/** Constants every template may use: they have one source, here and in config.ts. */
const TEMPLATE_CONSTANTS = {
  panelRowBytes: PANEL_ROW_BYTES,
  panelShift: Math.log2(PANEL_ROW_BYTES),
  dwKernel: DWCONV_KERNEL,
  dwPadding: DWCONV_PADDING,
  grnEps: GRN_EPS,
  ...FLOAT_CLAMP,
};

export type GemmEpilogue = 'bias' | 'act' | 'act_sumsq' | 'residual';
/**
 * A GEMM whose weights are integers (q8/q4): bits, rows of K per scale, and where the scales start,
 * in bytes from the values (both in one group, so one weights pointer reaches both).
 */
export interface QuantizedGemm { bits: 8 | 4; blockRows: number; scalesBytes: number }
/**
 * `activateInput`: an integer GEMM whose input rows are pre-activations (the previous GEMM's output
 * + bias); its quantizer applies the activation first (see integerGemmSource).
 */
export interface GemmSpec { name: string; k: number; n: number; epilogue: GemmEpilogue; quantized?: QuantizedGemm; activateInput?: boolean }
interface NormSpec { name: string; c: number; cs: number; padding: number; eps: number; affine: boolean }
type StepOf<Op extends PlanStep['op']> = Extract<PlanStep, { op: Op }>;

export interface WasmProgram extends WasmKernelInfo {
  binaries: Record<WasmVariant, Uint8Array>;
}

export interface RenderedWasm {
  program: WasmProgram;
  /** The WAT sources, kept for readers and for debugging. */
  sources: { simd: string; relaxed: string };
}

/**
 * Integer GEMMs (q8/q4): rows of the register block (8 int32 accumulators + two weight vectors + the
 * broadcasts, as in the float GEMM) and k-pairs per loop step. Measured on ConvNeXt-T q8, 1 thread
 * (V8 12 / Node 20, AMD EPYC, medians of 7, rows x k-pairs per step): 4x1 157 ms; 4x2 +15%,
 * 5x1 +29%, 6x1 +16%, 6x2 +30%, 3x2 +27%. The 4x1 block runs the int16 dot products at ~42 GMAC/s
 * (a stage-2 tile's pwconv2, quantizer included); this core issues 2 pmaddwd per cycle, 57 GMAC/s at
 * its 3.6 GHz (measured with independent dot chains; f32x4 FMA peaks at 28), and TurboFan's code for
 * the inner loop is already just its loads, dots and adds (checked with --print-wasm-code).
 */
const QGEMM_ROWS = 4;
const QGEMM_TAILS = [4, 2, 1].filter((t) => t < QGEMM_ROWS);
const QGEMM_UNROLL = 1;
/**
 * Bytes per weight in the per-panel scratch copy the integer GEMM's inner loop reads: int16, so the
 * loop needs no sign extension (q8 pwconv2 of a stage-2 tile 3-5% faster than reading the int8 panel).
 */
const WIDENED_WEIGHT_BYTES = 2;
/** Largest |q| of a stored weight: q8 values lie in [-127, 127], q4 in [-8, 7]. */
const MAX_WEIGHT = { 8: 127, 4: 8 } as const;
const INT16_MAX = 32767;
const INT32_MAX = 2 ** 31 - 1;

/**
 * The int16 magnitude activations are quantized to: as fine as int16 allows, but small enough that
 * no int32 accumulator can overflow (q8 sums all of K; q4 sums one block, then goes to float).
 */
export function activationLimit(quantized: Pick<QuantizedGemm, 'bits' | 'blockRows'>, k: number): number {
  const products = Math.min(k, quantized.blockRows);
  return Math.min(INT16_MAX, Math.floor(INT32_MAX / (MAX_WEIGHT[quantized.bits] * products)));
}

function tileFor(rowFloats: number): number {
  const rows = Math.floor(TILE_BUDGET_BYTES / (rowFloats * 4));
  return Math.max(GEMM_ROWS, Math.min(64, Math.floor(rows / GEMM_ROWS) * GEMM_ROWS));
}

/** Byte offsets of a group's fields from the group's start (the group's address is a kernel argument). */
function fieldBytes<G extends WeightGroup<string, string>>(group: G): Record<string, number> {
  const bytes: Record<string, number> = {};
  for (const [name, field] of Object.entries(group.fields)) {
    if (!field) continue;
    bytes[`${name}Bytes`] = (field.offset - group.offset) * 4;
    const quantized = quantizedStorage(field);
    if (quantized) bytes[`${name}ScalesBytes`] = (quantized.scales.offset - group.offset) * 4;
  }
  return bytes;
}

/**
 * Floats of per-thread scratch an integer GEMM needs to widen one panel into: its int16 k-pairs
 * (16 bytes per row of K) and, for 4-bit weights, its scales as float32. None for float GEMMs.
 */
function unpackFloats(k: number, quantized: QuantizedGemm | undefined): number {
  if (!quantized) return 0;
  const scales = quantized.bits === 4 ? Math.ceil(k / quantized.blockRows) * PANEL_WIDTH * 4 : 0;
  return (k * PANEL_WIDTH * WIDENED_WEIGHT_BYTES + scales) / 4;
}

/** How a GEMM reads its weight matrix: as floats, or as integers + scales. */
function quantizedGemm(field: WeightField): QuantizedGemm | undefined {
  const quantized = quantizedStorage(field);
  if (!quantized) return undefined;
  if (quantized.kGroup !== 2) throw new Error(`internal: the WASM integer GEMM reads k-pairs, got weights in k-groups of ${quantized.kGroup}`);
  return { bits: quantized.bits, blockRows: quantized.blockRows, scalesBytes: (quantized.scales.offset - field.offset) * 4 };
}

const render = (template: string, data: object) => renderTemplate(`wasm/${template}.wat.hbs`, { ...TEMPLATE_CONSTANTS, ...data });

/**
 * The kernels of one model, collected while walking the plan: each plan step asks for the
 * kernels it calls and gets their export names; shared pieces (GEMMs, LayerNorms) are kept once.
 */
class WasmKernelSet {
  readonly sources: string[] = [];
  readonly gemms = new Map<string, GemmSpec>();
  readonly norms = new Map<string, NormSpec>();
  /** Per-thread tile scratch (floats), the widest GRN hidden row, and the levels GRN intermediates live at. */
  scratchFloats = 0;
  grnHidden: Array<{ level: number; floats: number }> = [];
  featureTemp: Array<{ level: number; floats: number }> = [];
  private readonly blockKernels = new Map<string, string>();
  private readonly head = { featureMaps: [] as object[], pool: undefined as object | undefined, classifier: undefined as object | undefined };

  gemm(spec: GemmSpec): string {
    this.gemms.set(spec.name, spec);
    return spec.name;
  }

  norm(c: number, cs: number, eps: number, affine: boolean): string {
    const name = `layernorm_c${c}_${affine ? 'affine' : 'plain'}_eps${String(eps).replace(/[^0-9a-z]/gi, '_')}`;
    this.norms.set(name, { name, c, cs, padding: cs - c, eps, affine });
    return name;
  }

  stem(step: StepOf<'stem'>): string {
    const cs = step.out.padded;
    const k = step.inChannels * step.patch * step.patch;
    this.sources.push(render('stem', {
      patch: step.patch, cin: step.inChannels, c: step.out.real, cs, panels: cs / PANEL_WIDTH, panelBytes: k * PANEL_ROW_BYTES,
      ...fieldBytes(step.weights), norm: this.norm(step.out.real, cs, step.eps, true),
    }));
    return 'stem';
  }

  downsample(step: StepOf<'downsample'>): string {
    const name = `downsample_s${step.level}`;
    const tile = tileFor(4 * step.in.padded);
    const k = 4 * step.in.padded;
    const quantized = quantizedGemm(step.weights.fields.weight);
    const unpack = unpackFloats(k, quantized);
    this.sources.push(render('downsample', {
      name, cin: step.in.real, cout: step.out.real, cinPadded: step.in.padded, coutPadded: step.out.padded, tile,
      norm: this.norm(step.in.real, step.in.padded, step.eps, false),
      gemm: this.gemm({ name: `gemm_${name}`, k, n: step.out.padded, epilogue: 'bias', quantized }),
      unpackBytes: unpack > 0 && tile * k * 4, ...fieldBytes(step.weights),
    }));
    this.scratchFloats = Math.max(this.scratchFloats, tile * k + unpack);
    return name;
  }

  /**
   * The block kernel for this block's shapes and weight field offsets. Blocks of a stage normally
   * share one (their groups are laid out alike); a block whose fields lie elsewhere gets its own.
   */
  block(step: StepOf<'block'>): string {
    const fields = fieldBytes(step.weights);
    const signature = JSON.stringify({ stage: step.stage, grn: step.grn, activation: step.activation, fields });
    const existing = this.blockKernels.get(signature);
    if (existing) return existing;
    const sameStage = [...this.blockKernels.keys()].filter((key) => JSON.parse(key).stage === step.stage).length;
    const id = sameStage === 0 ? `s${step.stage}` : `s${step.stage}_${sameStage}`;
    this.blockKernels.set(signature, id);
    const cs = step.channels.padded;
    const hs = step.hidden.padded;
    const tile = tileFor(cs + hs);
    const pw1 = quantizedGemm(step.weights.fields.pw1Weight);
    const pw2 = quantizedGemm(step.weights.fields.pw2Weight);
    if (Boolean(pw1) !== Boolean(pw2) || pw1?.bits !== pw2?.bits) throw new Error(`internal: block ${id} has pwconv1 and pwconv2 stored differently`);
    // Integer blocks without GRN apply the activation in pwconv2's quantizer, a streaming pass over the
    // hidden rows, instead of in pwconv1's register-block epilogue (GRN needs it there, for its sums).
    const activateInQuantizer = Boolean(pw2) && !step.grn;
    this.gemm({ name: `pw1_${id}`, k: cs, n: hs, epilogue: activateInQuantizer ? 'bias' : step.grn ? 'act_sumsq' : 'act', quantized: pw1 });
    this.gemm({ name: `pw2_${id}`, k: hs, n: cs, epilogue: 'residual', quantized: pw2, activateInput: activateInQuantizer });
    // integer panels are widened (4-bit ones unpacked) past the tiles (dwconv rows, hidden rows) in the thread's scratch
    const unpack = Math.max(unpackFloats(cs, pw1), unpackFloats(hs, pw2));
    this.sources.push(render('block', {
      id, stage: step.stage, c: step.channels.real, cs, hidden: step.hidden.real, hs, panels: cs / PANEL_WIDTH, tile, grn: step.grn,
      norm: this.norm(step.channels.real, cs, step.eps, false), grnGammaBytes: 0, unpackBytes: unpack > 0 && tile * (cs + hs) * 4, ...fields,
    }));
    this.scratchFloats = Math.max(this.scratchFloats, tile * (cs + hs) + unpack);
    if (step.grn) this.grnHidden.push({ level: step.level, floats: hs });
    return id;
  }

  featureMap(step: StepOf<'featureMap'>): string {
    const name = `feature_map_${step.name.replace(/[^a-z0-9]/gi, '_')}`;
    this.head.featureMaps.push({
      name, cs: step.channels.padded, norm: this.norm(step.channels.real, step.channels.padded, step.eps, true), ...fieldBytes(step.weights),
    });
    this.featureTemp.push({ level: step.level, floats: step.channels.padded });
    return name;
  }

  pool(step: StepOf<'pool'>): string {
    this.head.pool = { cs: step.channels.padded, eps: step.eps, norm: this.norm(step.channels.real, step.channels.padded, step.eps, true), ...fieldBytes(step.weights) };
    return 'pool';
  }

  /** The classifier kernel; `unpack`: it takes the scratch buffer too, to widen (unpack) integer weights into. */
  classifier(step: StepOf<'classifier'>): { kernel: string; unpack: boolean } {
    const quantized = quantizedGemm(step.weights.fields.weight);
    const unpack = unpackFloats(step.in.padded, quantized);
    this.head.classifier = {
      gemm: this.gemm({ name: 'gemm_classifier', k: step.in.padded, n: step.labels.padded, epilogue: 'bias', quantized }),
      unpack: unpack > 0, ...fieldBytes(step.weights),
    };
    this.scratchFloats = Math.max(this.scratchFloats, unpack);
    return { kernel: 'classifier', unpack: unpack > 0 };
  }

  /** Every kernel's WAT (the GEMMs depend on the build: relaxed-SIMD FMA or plain multiply + add). */
  kernelSources(activation: StepOf<'block'>['activation'], relaxed: boolean): string[] {
    const head = render('head', { featureMaps: this.head.featureMaps, pool: this.head.pool ?? false, classifier: this.head.classifier ?? false });
    const norms = [...this.norms.values()].map((n) => render('layernorm', n));
    const quantizers = new Map<string, string>();
    const gemms = [...this.gemms.values()].map((g) => {
      if (g.quantized) return integerGemmSource(g, g.quantized, activation, quantizers);
      if (g.k % GEMM_UNROLL !== 0 || g.n % PANEL_WIDTH !== 0) throw new Error(`internal: GEMM ${g.name} is ${g.k}x${g.n}, not padded`);
      return render('gemm', {
        ...g, relaxed, activationPartial: activationPartial(activation, 'wasm'), mr: GEMM_ROWS, tails: GEMM_TAILS, unroll: GEMM_UNROLL,
        unrolled: Array.from({ length: GEMM_UNROLL }, (_, i) => i), kSteps: g.k / GEMM_UNROLL, panels: g.n / PANEL_WIDTH,
        panelBytes: g.k * PANEL_ROW_BYTES, rowBytesA: g.k * 4, rowBytesC: g.n * 4,
      });
    });
    return [...this.sources, head, ...norms, ...gemms, ...quantizers.values()];
  }
}

/**
 * An integer GEMM's WAT (exported for its exact-integer test); the activation quantizer it calls
 * (one per K and limit) is added to `quantizers`. Identical in the plain and relaxed builds: the integer part is exact, and the
 * float epilogue uses no FMA, so q8/q4 packages give the same numbers on every engine.
 */
export function integerGemmSource(g: GemmSpec, quantized: QuantizedGemm, activation: StepOf<'block'>['activation'], quantizers: Map<string, string>): string {
  const pairs = g.k / 2;
  if (g.k % 8 !== 0 || pairs % QGEMM_UNROLL !== 0 || g.n % PANEL_WIDTH !== 0) throw new Error(`internal: integer GEMM ${g.name} is ${g.k}x${g.n}, not padded`);
  const q4 = quantized.bits === 4;
  if (q4 && (quantized.blockRows / 2) % QGEMM_UNROLL !== 0) throw new Error(`internal: q4 blocks of ${quantized.blockRows} rows do not fit the unroll`);
  const limit = activationLimit(quantized, g.k);
  const quantize = `quantize_k${g.k}_l${limit}${g.activateInput ? `_${activation}` : ''}`;
  if (!quantizers.has(quantize)) {
    quantizers.set(quantize, render('quantize', {
      name: quantize, k: g.k, limit, accumulated: Math.min(g.k, quantized.blockRows), maxWeight: MAX_WEIGHT[quantized.bits],
      activationPartial: g.activateInput ? activationPartial(activation, 'wasm') : false, ...SINGLE_INSTRUCTION_CLAMP,
    }));
  }
  const blocks = Math.ceil(g.k / quantized.blockRows);
  return render('qgemm', {
    ...g, q4, quantize, activationPartial: activationPartial(activation, 'wasm'), mr: QGEMM_ROWS, tails: QGEMM_TAILS, unroll: QGEMM_UNROLL,
    unrolled: Array.from({ length: QGEMM_UNROLL }, (_, i) => i), panels: g.n / PANEL_WIDTH,
    panelBytes: (g.k * PANEL_WIDTH * quantized.bits) / 8, rowBytesA: g.k * 4, rowBytesC: g.n * 4, rowScaleOffset: g.k * 2,
    kPairBytes: 2 * PANEL_WIDTH * WIDENED_WEIGHT_BYTES, pairBytes: g.k * PANEL_WIDTH * WIDENED_WEIGHT_BYTES, scalesBytes: quantized.scalesBytes, blockRows: quantized.blockRows, blocks, scalePanelBytes: blocks * PANEL_WIDTH * 2,
  });
}

// ---- the dispatch list: argument lists by role ------------------------------------------------

const buffer = (name: string, imageStride?: { level: number | 'input' | null; floats: number }): WasmArg =>
  imageStride ? { kind: 'buffer', buffer: name, imageStride } : { kind: 'buffer', buffer: name };
const weights = (group: WeightGroup<string, string>): WasmArg => ({ kind: 'weights', offset: group.offset });
const size = (level: number | 'input'): WasmArg[] => [{ kind: 'height', level }, { kind: 'width', level }];
const range = (level: number, wholeBatch: boolean): WasmArg[] => [{ kind: 'rangeStart' }, { kind: 'pixels', level, wholeBatch }];
const pixels = (level: number): WasmArg => ({ kind: 'pixels', level, wholeBatch: false });
const call = (kernel: string, args: WasmArg[], split = false): WasmOp => ({ op: 'call', kernel, args, split });

/** The ops of one plan step, with the kernels it needs added to `kernels`. */
function wasmStep(step: PlanStep, kernels: WasmKernelSet): WasmStep {
  const make = (label: string, eachImage: WasmOp[], wholeBatch: WasmOp[] = [], onlyWithHiddenStates = false): WasmStep =>
    ({ label, eachImage, wholeBatch, onlyWithHiddenStates });
  switch (step.op) {
    case 'stem': {
      const args = [buffer('input', { level: 'input', floats: step.inChannels }), buffer(step.dst, { level: 0, floats: step.out.padded }),
        ...size('input'), ...range(0, false), weights(step.weights)];
      return make('stem', [call(kernels.stem(step), args, true)]);
    }
    case 'downsample': {
      const args = [buffer(step.src, { level: step.level - 1, floats: step.in.padded }), buffer(step.dst, { level: step.level, floats: step.out.padded }),
        ...size(step.level - 1), ...range(step.level, false), weights(step.weights), buffer('scratch')];
      return make(step.weights.key, [call(kernels.downsample(step), args, true)]);
    }
    case 'block':
      return blockStep(step, kernels.block(step));
    case 'output':
      return make(step.name, [], [{ op: 'readNchw', output: step.name, buffer: step.src, level: step.level, channels: step.channels }], step.onlyWithHiddenStates);
    case 'featureMap': {
      const args = [buffer(step.src, { level: step.level, floats: step.channels.padded }), buffer('featureTemp'), pixels(step.level), weights(step.weights)];
      return make(step.name, [call(kernels.featureMap(step), args),
        { op: 'readNchw', output: step.name, buffer: 'featureTemp', level: step.level, channels: step.channels }]);
    }
    case 'pool': {
      const args = [buffer(step.src, { level: step.level, floats: step.channels.padded }), buffer('pooled', { level: null, floats: step.channels.padded }),
        pixels(step.level), weights(step.weights)];
      return make('pooler_output', [call(kernels.pool(step), args)], [{ op: 'readRows', output: 'pooler_output', buffer: 'pooled', channels: step.channels }]);
    }
    case 'classifier': {
      const { kernel, unpack } = kernels.classifier(step);
      const args = [buffer('pooled', { level: null, floats: step.in.padded }), buffer('logits', { level: null, floats: step.labels.padded }), weights(step.weights),
        ...(unpack ? [buffer('scratch')] : [])];
      return make('logits', [call(kernel, args)], [{ op: 'readRows', output: 'logits', buffer: 'logits', channels: step.labels }]);
    }
  }
}

function blockStep(step: StepOf<'block'>, id: string): WasmStep {
  const label = step.weights.key;
  if (!step.grn) {
    // Images lie one after another and the kernel numbers pixels across them: one call (one split
    // between threads) covers the whole batch.
    const args = [buffer(step.src), buffer(step.dst), ...size(step.level), ...range(step.level, true), weights(step.weights), buffer('scratch')];
    return { label, eachImage: [], wholeBatch: [call(`block_${id}`, args, true)], onlyWithHiddenStates: false };
  }
  // GRN needs the whole image's statistics between the two halves of the block.
  const src = buffer(step.src, { level: step.level, floats: step.channels.padded });
  const dst = buffer(step.dst, { level: step.level, floats: step.channels.padded });
  return {
    label,
    eachImage: [
      { op: 'clear', buffer: 'threadSums' },
      call(`block_${id}_expand`, [src, buffer('grnHidden'), ...size(step.level), ...range(step.level, false), weights(step.weights), buffer('scratch'), buffer('threadSums')], true),
      { op: 'sumThreads', buffer: 'threadSums', floats: step.hidden.padded },
      call(`grn_${id}`, [buffer('threadSums'), buffer('grnScale'), weights(step.weights)]),
      call(`block_${id}_project`, [src, dst, buffer('grnHidden'), ...range(step.level, false), weights(step.weights), buffer('scratch'), buffer('grnScale')], true),
    ],
    wholeBatch: [],
    onlyWithHiddenStates: false,
  };
}

/** The arena a run lays out: every buffer the steps name, sized by level. */
function arenaBuffers(plan: KernelPlan, kernels: WasmKernelSet): WasmBufferSpec[] {
  const spec = (name: string, perPixel: WasmBufferSpec['perPixel'], perImage = 0, images: WasmBufferSpec['images'] = 'batch', perThread = false): WasmBufferSpec =>
    ({ name, perPixel, perImage, images, perThread });
  const last = plan.levels[plan.levels.length - 1].padded;
  const widestHidden = Math.max(0, ...kernels.grnHidden.map((h) => h.floats));
  const buffers = [
    spec('input', [{ level: 'input', floats: plan.spec.numChannels }]),
    ...plan.activationBuffers.map((b) => spec(b.name, b.levels.map((level) => ({ level, floats: plan.levels[level].padded })))),
    spec('pooled', [], last),
    spec('logits', [], Math.ceil(plan.spec.numLabels / PANEL_WIDTH) * PANEL_WIDTH),
    spec('scratch', [], kernels.scratchFloats, 'one', true),
    spec('grnHidden', kernels.grnHidden, 0, 'one'),
    spec('threadSums', [], widestHidden, 'one', true),
    spec('grnScale', [], widestHidden, 'one'),
    spec('featureTemp', kernels.featureTemp, 0, 'one'),
  ];
  return buffers.filter((b) => b.perPixel.length > 0 || b.perImage > 0);
}

async function assemble(architecture: string, sources: Record<WasmVariant, string>): Promise<Record<WasmVariant, Uint8Array>> {
  const wabt = await wabtInit();
  const binary = (variant: WasmVariant): Uint8Array => {
    const relaxed = variant.startsWith('relaxed');
    const module = wabt.parseWat(`${architecture}.wat`, sources[variant], { simd: true, relaxed_simd: relaxed, threads: true });
    try {
      return new Uint8Array(module.toBinary({ log: false, write_debug_names: true }).buffer);
    } finally {
      module.destroy();
    }
  };
  return { simd: binary('simd'), relaxed: binary('relaxed'), 'simd-shared': binary('simd-shared'), 'relaxed-shared': binary('relaxed-shared') };
}

export async function renderWasm(plan: KernelPlan, layout: WeightLayout): Promise<RenderedWasm> {
  const { spec } = plan;
  if (layout.packing.panelWidth !== PANEL_WIDTH) throw new Error(`internal: the WASM kernels need weights packed with WASM_PACKING, got ${JSON.stringify(layout.packing)}`);
  const kernels = new WasmKernelSet();
  const steps = plan.steps.map((step) => wasmStep(step, kernels));
  const minPages = Math.ceil((WEIGHTS_BASE + plan.weightFloats * 4) / 65536) + 1;
  // The kernels differ only between the FMA and plain builds: render each once, for both memories.
  const math = render('math', {});
  const kernelSources = { plain: kernels.kernelSources(spec.hiddenAct, false), relaxed: kernels.kernelSources(spec.hiddenAct, true) };
  const moduleSource = (relaxed: boolean, shared: boolean) => render('module', {
    architecture: spec.architecture, description: relaxed ? 'relaxed SIMD (FMA)' : 'SIMD128', minPages, maxPages: 65536, shared,
    math, kernels: relaxed ? kernelSources.relaxed : kernelSources.plain,
  });
  // Threads need the memory declared shared; the kernels are otherwise identical.
  const sources: Record<WasmVariant, string> = {
    simd: moduleSource(false, false), relaxed: moduleSource(true, false),
    'simd-shared': moduleSource(false, true), 'relaxed-shared': moduleSource(true, true),
  };
  const program: WasmProgram = {
    weightsBase: WEIGHTS_BASE,
    buffers: arenaBuffers(plan, kernels),
    steps,
    binaries: await assemble(spec.architecture, sources),
  };
  return { program, sources: { simd: sources.simd, relaxed: sources.relaxed } };
}
