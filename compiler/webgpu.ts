/**
 * Stage 5 for the WebGPU target: renders the fused plan into WGSL kernels (templates/wgsl) and
 * the dispatch list the runtime walks (runtime/webgpu.ts). Every decision lives here: which
 * kernels each plan step becomes, their constants (channel counts, weight field offsets), tile
 * and workgroup sizes, and which buffers each binds. Templates only hold kernel code. The block,
 * downsample and output kernels read their channel counts and weight offsets from the dispatch's
 * parameters instead (runtimeSizes), so that every stage shares one pipeline of each.
 *
 * Kernels per plan step:
 *   stem        -> stem (conv + LayerNorm)
 *   downsample  -> downsample (LayerNorm + 2x2 conv)
 *   block       -> block-dwconv (7x7 depthwise + LayerNorm, into `normed`), then
 *                  block-mlp (pw1 + act + pw2 + residual, hidden kept in workgroup memory), or for
 *                  ConvNeXt V2: grn-expand (pw1 + act) -> grn-squares (sums of squares over pixel slices)
 *                  -> grn-reduce (GRN statistics per image) -> grn-project (pw2 + residual)
 *   output      -> output (NHWC -> NCHW copy)
 *   featureMap  -> feature-map (LayerNorm with affine -> NCHW)
 *   pool        -> pool (mean + LayerNorm)
 *   classifier  -> classifier
 *
 * Weights dtype q8/q4 (compiler/quantize.ts): the kernels that read a quantized matrix (block-mlp,
 * grn-expand, grn-project, downsample, classifier) bind its window as packed u32 words and unpack
 * them in the shader (templates/wgsl/partials/quantized-*), so the GPU holds and reads a quarter
 * (q8) or an eighth (q4) of the f32 matrix bytes; activations and sums stay f32.
 */
import { alignUp, type Packing, type WeightField, type WeightGroup, type WeightLayout } from './layout.js';
import type { KernelPlan, PlanStep } from './plan.js';
import { renderTemplate } from './templates.js';
import { activationEntry, activationPartial } from './activations.js';
import { DWCONV_KERNEL, DWCONV_PADDING, GRN_EPS } from './config.js';
import { CxcError } from './errors.js';
import { quantizedStorage } from './quantize.js';
import type {
  WebGpuBufferName, WebGpuBufferSize, WebGpuKernel, WebGpuOutput, WebGpuProgram, WebGpuResource, WebGpuShader,
} from '../runtime/webgpu.js';
import { PARAMS_SIZE_VEC4S } from '../runtime/webgpu.js';
import type { Activation, ActivationBufferName } from '../runtime/types.js';

/**
 * Channels padded to 4 (one vec4); matrices plain row-major [K][N] (one panel): a kernel reads
 * one weight row's vec4 for 4 output channels, and neighbouring invocations read neighbouring
 * vec4s of the same row.
 */
export const WEBGPU_PACKING: Packing = { channelAlign: 4, panelWidth: 0, kGroup: 4 };

/** Weight windows start on 256-byte boundaries (the largest minStorageBufferOffsetAlignment): 64 floats, or 128 halves. */
const WEIGHT_WINDOW_BYTES = 256;
/** WebGPU's default limits, which every adapter has: kernels stay within them. */
const MAX_WORKGROUP = 256;
const MAX_WORKGROUP_STORAGE = 16384;

/** Invocations per workgroup of the simple one-item-per-invocation kernels. */
const SIMPLE_WORKGROUP = 64;
/** Pixels per workgroup of the matrix kernels (multiple of 4: invocations own 4-pixel blocks). */
const MATMUL_TILE_PIXELS = 16;
/** Most output vec4s per workgroup of the column-tiled matrix kernels. */
const MATMUL_MAX_COLUMNS4 = 16;
/** Fused MLP: candidate pixels per workgroup, largest (most weight reuse) first. */
const MLP_TILE_PIXELS = [32, 16, 8];
/** Interleaved pixel slices of each image the GRN sums of squares are split into (one workgroup row each). */
const GRN_SLICES = 16;
/** Pixels per register block of the fused MLP (tile sizes are multiples of it). */
const MLP_BLOCK_ROWS = 8;
/**
 * Subgroup matrix kernels: invocations per subgroup they assume, output columns per workgroup (grid
 * y; a multiple of every pass width), and per precision the pixels and columns each invocation owns.
 * 32 accumulators per invocation is what fits the registers: measured on lavapipe (3136 x 96 x 384
 * f32 GEMM, 2026-11-30) 4 pixels x 8 columns ran 7.6 GMAC/s; 2 x 8: 5.2, 3 x 8: 6.6, 6 x 8: 6.7,
 * 8 x 8: 4.3 and 4 x 16: 3.4 (spills). f16 takes two columns per weight load (one u32), so 2 x 16.
 */
export const SUBGROUP_LANES = 8;
const SUBGROUP_TILE_COLUMNS = 64;
const SUBGROUP_SHAPE = { f32: { pixelsPerLane: 4, columnsPerLane: 1 }, f16: { pixelsPerLane: 2, columnsPerLane: 2 } } as const;
/** One subgroup per workgroup: 8 invocations ran 1.1x faster than 32 and 1.5x faster than 64 (ConvNeXt-T on lavapipe). */
const SUBGROUP_WORKGROUP = SUBGROUP_LANES;

const QUAD = [0, 1, 2, 3];
/** Constants every template may use: they have one source, in config.ts. */
const TEMPLATE_CONSTANTS = { dwKernel: DWCONV_KERNEL, dwPadding: DWCONV_PADDING, grnEps: GRN_EPS };

export type WebGpuPrecision = 'f32' | 'f16';

export interface WebGpuRenderOptions {
  /**
   * 'f16' adds a second program beside the float32 one (the runtime picks it where the adapter has
   * shader-f16): weights, the normalized block input, V2's GRN hidden activations and the MLP's
   * hidden tile stored as f16; every mean, variance, GRN norm and GEMM accumulation in f32, and the
   * residual stream in f32. Default 'f32': the float32 program only.
   */
  precision?: WebGpuPrecision;
}

/**
 * How a program computes the blocks' pointwise convolutions. Every package has the 'tiles' program
 * (the fused MLP kernel, its hidden tile in workgroup memory), which runs everywhere. Beside it,
 * `WebGpuProgram.subgroups` carries variants that use subgroup operations, for the CPU Vulkan
 * drivers, where every storage or workgroup load inside a loop is a per-lane scalar load with a
 * bounds check, so that loads, not FMAs, decide the speed:
 *   'split'   pwconv1 + activation and pwconv2 + residual as two matrix kernels through the
 *             `hidden` buffer, each invocation 4 pixels (f16: 2) x 8 columns (f16: 16), the 8
 *             invocations of a subgroup sharing their weight loads with subgroupBroadcast
 *             (templates/wgsl/matmul-subgroup); float weights, subgroups of 8 or more;
 *   'shared'  the fused MLP, with the invocations of a subgroup (exactly `shareRows` of them, as
 *             consecutive invocation indices form them on these drivers) sharing their activation
 *             row loads (templates/wgsl/block-mlp); every weights dtype.
 * Measured on ConvNeXt-T f32 (2026-11-30, 2-core Zen 5 VM, medians): lavapipe tiles 1.6-1.9 s,
 * shared (8) 0.94 s, split 0.82-0.86 s (f16 split 0.62 s); SwiftShader tiles 5.3 s, shared (4) 4.0 s.
 * load() picks the first runnable variant on fallback (CPU) adapters; GPUs keep 'tiles' (the
 * variants were not measured on a GPU).
 */
export type MatmulStyle = { kind: 'tiles' } | { kind: 'split' } | { kind: 'shared'; shareRows: number };

/** The subgroup variants a package carries, best first (see MatmulStyle). */
function subgroupVariants(precision: WebGpuPrecision, quantized: boolean): MatmulStyle[] {
  // Split kernels read float weights; f16 programs need shader-f16, which SwiftShader (subgroups of 4) lacks.
  if (quantized) return [{ kind: 'shared', shareRows: 8 }, { kind: 'shared', shareRows: 4 }];
  return precision === 'f16' ? [{ kind: 'split' }] : [{ kind: 'split' }, { kind: 'shared', shareRows: 4 }];
}

export function renderWebGpu(plan: KernelPlan, layout: WeightLayout, options: WebGpuRenderOptions = {}): WebGpuProgram {
  const { packing } = layout;
  if (options.precision === 'f16' && (packing.dtype === 'q8' || packing.dtype === 'q4')) {
    // The f16 program stores every weight as a half: packed integers would be read as numbers.
    throw new CxcError(`--precision f16 does not combine with --weights-dtype ${packing.dtype}: the ${packing.dtype} kernels keep the weights packed and compute in f32`, {
      hint: `build with --precision f32 (already ${packing.dtype === 'q8' ? 'a quarter' : 'an eighth'} of the f32 weight bytes), or --weights-dtype f16 --precision f16`,
    });
  }
  if (packing.channelAlign !== WEBGPU_PACKING.channelAlign || packing.panelWidth !== WEBGPU_PACKING.panelWidth) {
    throw new Error(`internal: the WebGPU kernels need weights packed with WEBGPU_PACKING, got ${JSON.stringify(packing)}`);
  }
  const quantized = packing.dtype === 'q8' || packing.dtype === 'q4';
  const withSubgroups = (precision: WebGpuPrecision): WebGpuProgram => ({
    ...renderProgram(plan, layout, precision, { kind: 'tiles' }),
    subgroups: subgroupVariants(precision, quantized).map((style) => renderProgram(plan, layout, precision, style)),
  });
  return { ...withSubgroups('f32'), ...(options.precision === 'f16' ? { f16: withSubgroups('f16') } : {}) };
}

function renderProgram(plan: KernelPlan, layout: WeightLayout, precision: WebGpuPrecision, matmul: MatmulStyle): WebGpuProgram {
  const builder = new ProgramBuilder(plan, layout, precision, matmul);
  plan.steps.forEach((step) => builder.addStep(step));
  return builder.finish();
}

/** Activation buffers an f16 program stores as f16 (the residual stream act0, act1, ... stays f32). */
const HALF_BUFFERS: WebGpuBufferName[] = ['normed', 'hidden'];

/** What every kernel of one block shares. */
interface BlockKernels {
  step: Extract<PlanStep, { op: 'block' }>;
  name: string;
  channels4: number;
  hidden4: number;
  src: WebGpuBufferName;
  dst: ActivationBufferName;
  common: { level: number; inLevel: null };
  activationCode: string;
  pw1: WeightWindow;
  pw2: WeightWindow;
}

/**
 * A kernel's bound window of weight fields (see ProgramBuilder.weights). `bits` is 8 or 4 when it
 * holds a quantized matrix: the kernel then binds it as packed words, vec4<u32> (q8) or vec2<u32>
 * (q4), one per 4 k x 4 columns, and `fields` count those elements (q4: two per vec4).
 */
interface WeightWindow { resource: WebGpuResource; weightBase: number; fields: Record<string, number>; bits: 0 | 8 | 4; k4PerBlock: number }

/** Elements of a quantized window's binding per 4 floats (4-byte words). */
const ELEMENTS_PER_VEC4 = { 8: 1, 4: 2 } as const;

/** The quantization of a window's matrices: none, or one kind for all of them. */
function windowQuantization(key: string, fields: WeightField[]): { bits: 0 | 8 | 4; k4PerBlock: number } {
  const kinds = new Set(fields.map(quantizedStorage).filter((q) => q !== undefined).map((q) => `${q.bits}/${q.blockRows}/${q.kGroup}`));
  if (kinds.size === 0) return { bits: 0, k4PerBlock: 0 };
  const quantized = fields.map(quantizedStorage).find((q) => q !== undefined)!;
  if (kinds.size > 1) throw new Error(`internal: weight window of ${key} mixes quantizations ${[...kinds].join(', ')}`);
  if (quantized.kGroup !== WEBGPU_PACKING.kGroup || quantized.blockRows % quantized.kGroup !== 0) {
    throw new Error(`internal: quantized weights of ${key} need k-groups of ${WEBGPU_PACKING.kGroup} and blocks of whole k-groups, got ${JSON.stringify(quantized)}`);
  }
  return { bits: quantized.bits, k4PerBlock: quantized.blockRows / quantized.kGroup };
}

/**
 * What a matrix kernel's template needs to read its weights: float vec4s, or packed words
 * (templates/wgsl/partials/quantized-*.wgsl.hbs unpack them).
 */
function matrixAccess(precision: WebGpuPrecision, weights?: WeightWindow) {
  if (!weights?.bits) return { quantized: false, weightBits: 0, weightElement: `vec4<${precision}>`, k4PerBlock: 0 };
  return { quantized: true, weightBits: weights.bits, weightElement: weights.bits === 8 ? 'vec4<u32>' : 'vec2<u32>', k4PerBlock: weights.k4PerBlock };
}

/**
 * Sizes a kernel reads from Params.sizes at run time instead of as constants of its code
 * (templates/wgsl/partials/runtime-sizes): what the template declares, and the kernel's values.
 * Why: lavapipe compiles each distinct kernel at its first dispatch, seconds each; kernels that
 * differ only in these sizes (the blocks, downsamplings and output copies of different stages)
 * then share one WGSL source, one pipeline and one compile. Measured on ConvNeXt-T (2026-11-30, a
 * loaded 2-core VM): 18 -> 13 pipelines (MLP 4 -> 2, depthwise conv 4 -> 1) took the cold lavapipe
 * compile of all of them from 54.6 to 28.5 s; run times did not move (same-process A/B against
 * constant sizes, medians: lavapipe 5.07 vs 5.35 s over 10 runs, SwiftShader 16.7 vs 19.2 s over 5).
 */
function runtimeSizes(values: Record<string, number>) {
  const entries = Object.entries(values);
  if (entries.length > 4 * PARAMS_SIZE_VEC4S) throw new Error(`internal: ${entries.length} runtime sizes, Params holds ${4 * PARAMS_SIZE_VEC4S}`);
  const expressions = entries.map(([name], i) => [name, `params.sizes[${Math.floor(i / 4)}].${'xyzw'[i % 4]}`] as const);
  return {
    /** Template data: `let` declarations at the start of main, and the same expressions by name for functions outside it. */
    template: { runtimeSizes: expressions.map(([name, expression]) => ({ name, expression })), sizes: Object.fromEntries(expressions) },
    values: entries.map(([, value]) => value),
  };
}

/** Largest divisor of n that is at most max. */
function largestDivisorAtMost(n: number, max: number): number {
  for (let d = Math.min(n, max); d > 1; d--) if (n % d === 0) return d;
  return 1;
}

class ProgramBuilder {
  private readonly shaders: WebGpuShader[] = [];
  private readonly shaderIndex = new Map<string, number>();
  private readonly kernels: WebGpuKernel[] = [];
  private readonly outputs: WebGpuOutput[] = [];
  private readonly buffers: Record<Exclude<WebGpuBufferName, 'input'>, WebGpuBufferSize>;
  private readonly common = renderTemplate('wgsl/common.wgsl.hbs', { sizeVec4s: PARAMS_SIZE_VEC4S });

  private readonly half: boolean;

  constructor(
    private readonly plan: KernelPlan, private readonly layout: WeightLayout, private readonly precision: WebGpuPrecision,
    private readonly matmul: MatmulStyle,
  ) {
    this.half = precision === 'f16';
    const levels = plan.levels.length;
    const empty = (): WebGpuBufferSize => ({ floatsPerPixel: new Array(levels).fill(0), floatsPerImage: 0 });
    const activations = Object.fromEntries(plan.activationBuffers.map((buffer) => [buffer.name, empty()]));
    this.buffers = { ...activations, normed: empty(), hidden: empty(), grnPartial: empty(), grnScale: empty(), pooled: empty() };
  }

  finish(): WebGpuProgram {
    const { spec } = this.plan;
    return {
      format: 'cxc-webgpu-1',
      shaders: this.shaders,
      kernels: this.kernels,
      buffers: this.buffers,
      // Hidden-states-only outputs first: a run without them reads back one contiguous tail.
      outputs: [...this.outputs.filter((o) => o.onlyWithHiddenStates), ...this.outputs.filter((o) => !o.onlyWithHiddenStates)],
      inputChannels: spec.numChannels,
      patchSize: spec.patchSize,
      levels: this.plan.levels.length,
      weightFloats: this.layout.floats,
      precision: this.precision,
      halfBuffers: this.half ? HALF_BUFFERS : [],
      requiredFeatures: [...(this.half ? ['shader-f16'] : []), ...(this.matmul.kind === 'tiles' ? [] : ['subgroups'])],
      ...this.matmulDescription(),
    };
  }

  /**
   * Invocations of a subgroup that the depthwise conv shares its tap loads across (0: none): the
   * variant's guaranteed subgroup size where that is 8 or more. Measured on ConvNeXt-T (2026-11-30):
   * lavapipe 93 -> 59 ms a run; SwiftShader with 4 lanes 269 -> 386 ms (zeroing rows outside the
   * image instead of skipping them costs more there than 4-way sharing saves), so not there.
   */
  private dwconvTapSharing(): number {
    const size = this.matmul.kind === 'split' ? SUBGROUP_LANES : this.matmul.kind === 'shared' ? this.matmul.shareRows : 0;
    return size >= 8 ? size : 0;
  }

  /** What the runtime needs to know of this program's matrix kernels: which adapters can run them, and how to name them. */
  private matmulDescription(): Pick<WebGpuProgram, 'subgroupSizes' | 'consecutiveSubgroups' | 'kernelsNote'> {
    switch (this.matmul.kind) {
      case 'tiles': return {};
      // One workgroup is one subgroup of 8 (or part of a bigger one): any subgroup size from 8 up.
      case 'split': return { subgroupSizes: { min: SUBGROUP_LANES, max: 1024 }, kernelsNote: 'subgroup kernels' };
      case 'shared': {
        const n = this.matmul.shareRows;
        return { subgroupSizes: { min: n, max: n }, consecutiveSubgroups: n, kernelsNote: `subgroup kernels (MLP rows shared by ${n})` };
      }
    }
  }

  addStep(step: PlanStep): void {
    switch (step.op) {
      case 'stem': return this.stem(step);
      case 'downsample': return this.downsample(step);
      case 'block': return this.block(step);
      case 'output': return this.output(step);
      case 'featureMap': return this.featureMap(step);
      case 'pool': return this.pool(step);
      case 'classifier': return this.classifier(step);
    }
  }

  // ---- helpers ------------------------------------------------------------------------------------

  /**
   * The bound window for some fields of a weight group (default: all of them): it starts at the
   * 256-byte boundary at or below the first of them, `weightBase` is that field's vec4 offset in
   * the window and `fields` each field's vec4 offset from it. Binding only what a kernel reads
   * keeps every window under maxStorageBufferBindingSize (128 MiB on lavapipe) even for
   * ConvNeXt V2-huge, whose pwconv1 and pwconv2 are 121 MiB each.
   */
  private weights(group: WeightGroup, names = Object.keys(group.fields)): WeightWindow {
    const chosen = names.map((name) => {
      const field = group.fields[name];
      if (!field) throw new Error(`internal: weight group ${group.key} has no field ${name}`);
      return [name, field] as const;
    });
    // A quantized matrix's scales lie at their own offset, outside [offset, offset + length): the window covers them too.
    const ranges = chosen.flatMap(([name, f]) => {
      const scales = quantizedStorage(f)?.scales;
      return [[name, f.offset, f.length], ...(scales ? [[`${name}Scales`, scales.offset, scales.words] as const] : [])] as const;
    });
    const base = Math.min(...ranges.map(([, offset]) => offset));
    const align = WEIGHT_WINDOW_BYTES / (this.half ? 2 : 4);
    const start = Math.floor(base / align) * align;
    const end = alignUp(Math.max(...ranges.map(([, offset, length]) => offset + length)), 4);
    ranges.forEach(([name, offset]) => {
      if (offset % 4 !== 0) throw new Error(`internal: weight field ${group.key}.${name} is not vec4-aligned`);
    });
    const { bits, k4PerBlock } = windowQuantization(group.key, chosen.map(([, f]) => f));
    const perVec4 = bits ? ELEMENTS_PER_VEC4[bits] : 1;
    const fields = Object.fromEntries(ranges.map(([name, offset]) => [name, ((offset - base) / 4) * perVec4]));
    return { resource: { kind: 'weights', offset: start, floats: end - start }, weightBase: (base - start) / 4, fields, bits, k4PerBlock };
  }

  /** Renders (or reuses) a kernel; `weights` is the window its matrix is read from, where it has one (it decides the weight binding's type). */
  private shader(
    label: string, template: string, data: Record<string, unknown>, workgroupSize: number, workgroupStorageBytes: number, storageBuffers: number,
    weights?: WeightWindow,
    enable: string[] = [],
    diagnosticsOff: string[] = [],
  ): number {
    if (workgroupSize > MAX_WORKGROUP || workgroupStorageBytes > MAX_WORKGROUP_STORAGE) {
      throw new Error(`internal: kernel ${label} exceeds WebGPU's default limits`);
    }
    const types = { half: this.half, weightType: this.precision, halfType: this.precision, ...matrixAccess(this.precision, weights) };
    const rendered = renderTemplate(`wgsl/${template}.wgsl.hbs`, { ...TEMPLATE_CONSTANTS, ...data, ...types, label, common: this.common, workgroupSize, quad: QUAD });
    const code = [...(this.half ? ['f16'] : []), ...enable].map((extension) => `enable ${extension};\n`).join('') +
      diagnosticsOff.map((rule) => `diagnostic(off, ${rule});\n`).join('') + rendered;
    const existing = this.shaderIndex.get(code);
    if (existing !== undefined) return existing;
    this.shaders.push({ label, code, workgroupSize, workgroupStorageBytes, storageBuffers });
    this.shaderIndex.set(code, this.shaders.length - 1);
    return this.shaders.length - 1;
  }

  private kernel(kernel: Omit<WebGpuKernel, 'onlyWithHiddenStates'> & { onlyWithHiddenStates?: boolean }): void {
    this.kernels.push({ onlyWithHiddenStates: false, ...kernel });
  }

  private usePerPixel(buffer: Exclude<WebGpuBufferName, 'input'>, level: number, floats: number): void {
    const size = this.buffers[buffer];
    size.floatsPerPixel[level] = Math.max(size.floatsPerPixel[level], floats);
  }

  private usePerImage(buffer: Exclude<WebGpuBufferName, 'input'>, floats: number): void {
    this.buffers[buffer].floatsPerImage = Math.max(this.buffers[buffer].floatsPerImage, floats);
  }

  private activationCode(activation: Activation): string {
    const { formula, uses } = activationEntry(activation);
    return renderTemplate('wgsl/activation.wgsl.hbs', {
      activation, formula, activationPartial: activationPartial(activation, 'wgsl'),
      needsErfc: uses.includes('erf'), needsTanh: uses.includes('tanh'), needsSigmoid: uses.includes('sigmoid'),
    });
  }

  // ---- steps --------------------------------------------------------------------------------------

  private stem(step: Extract<PlanStep, { op: 'stem' }>): void {
    const group = step.weights;
    const weights = this.weights(group);
    const shader = this.shader(`stem (${step.out.real} channels)`, 'stem', {
      channels4: step.out.padded / 4, realChannels: step.out.real, inChannels: step.inChannels, patch: step.patch,
      eps: step.eps, fields: weights.fields,
    }, SIMPLE_WORKGROUP, 0, 3);
    this.usePerPixel(step.dst, 0, step.out.padded);
    this.kernel({
      label: 'stem', shader, level: 0, inLevel: -1, weightBase: weights.weightBase,
      grid: { unit: 'pixels', perWorkgroup: SIMPLE_WORKGROUP, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: weights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'input' } },
        { binding: 3, resource: { kind: 'buffer', buffer: step.dst as WebGpuBufferName } },
      ],
    });
  }

  private downsample(step: Extract<PlanStep, { op: 'downsample' }>): void {
    const group = step.weights;
    const weights = this.weights(group);
    const out4 = step.out.padded / 4;
    const columns4 = largestDivisorAtMost(out4, MATMUL_MAX_COLUMNS4);
    const workgroupSize = (MATMUL_TILE_PIXELS / 4) * columns4;
    const tapCount = MATMUL_TILE_PIXELS * 4;
    const { fields } = weights;
    const sizes = runtimeSizes({
      IN4: step.in.padded / 4, IN_REAL: step.in.real, OUT4: out4, COLUMNS4: columns4, CONV_WEIGHT: fields.weight, CONV_BIAS: fields.bias,
      ...(weights.bits ? { CONV_SCALES: fields.weightScales } : {}),
    });
    const shader = this.shader('downsample: LayerNorm + 2x2 stride-2 conv', 'downsample', {
      eps: step.eps, tilePixels: MATMUL_TILE_PIXELS, tapCount, ...sizes.template,
    }, workgroupSize, tapCount * 8, 3, weights);
    this.usePerPixel(step.dst, step.level, step.out.padded);
    this.kernel({
      label: `stages.${step.level}.downsample`, shader, level: step.level, inLevel: step.level - 1, weightBase: weights.weightBase, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: MATMUL_TILE_PIXELS, columnTiles: out4 / columns4 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: weights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: step.src as WebGpuBufferName } },
        { binding: 3, resource: { kind: 'buffer', buffer: step.dst as WebGpuBufferName } },
      ],
    });
  }

  private block(step: Extract<PlanStep, { op: 'block' }>): void {
    const block: BlockKernels = {
      step,
      name: `stages.${step.stage}.blocks.${step.index}`,
      channels4: step.channels.padded / 4,
      hidden4: step.hidden.padded / 4,
      src: step.src,
      dst: step.dst,
      common: { level: step.level, inLevel: null },
      activationCode: this.activationCode(step.activation),
      // Each kernel binds only the fields it reads (see weights()).
      pw1: this.weights(step.weights, ['pw1Weight', 'pw1Bias']),
      pw2: this.weights(step.weights, ['pw2Weight', 'pw2Bias']),
    };
    if (block.src === block.dst) throw new Error(`internal: block ${block.name} reads and writes the same buffer`);
    this.blockDwconv(block);
    if (this.matmul.kind === 'split') this.subgroupBlockMlp(block);
    else if (step.grn) this.grnBlockMlp(block);
    else this.blockMlp(block);
  }

  /**
   * The MLP as two subgroup matrix kernels through the `hidden` buffer (ConvNeXt V2: GRN's
   * statistics between them, its scale applied as pwconv2 reads `hidden`).
   */
  private subgroupBlockMlp(block: BlockKernels): void {
    const { step, name, channels4, hidden4, src, dst, common, activationCode, pw1, pw2 } = block;
    if (pw1.bits || pw2.bits) throw new Error('internal: the subgroup kernels read float weights');
    this.usePerPixel('hidden', step.level, step.hidden.padded);
    this.matmulSubgroup({
      label: `${name}: pwconv1 + activation`, common, weights: pw1, weight: pw1.fields.pw1Weight, bias: pw1.fields.pw1Bias,
      in4: channels4, out4: hidden4, activation: step.activation, activationCode,
      bindings: { src: 'normed', dst: 'hidden' },
    });
    if (step.grn) this.grnStatistics(block);
    this.matmulSubgroup({
      label: `${name}: ${step.grn ? 'GRN + ' : ''}pwconv2 + residual`, common, weights: pw2, weight: pw2.fields.pw2Weight, bias: pw2.fields.pw2Bias,
      in4: hidden4, out4: channels4, bindings: { src: 'hidden', dst, residual: src, ...(step.grn ? { scale: 'grnScale' } : {}) },
    });
  }

  /** One subgroup matrix kernel (templates/wgsl/matmul-subgroup): pwconv1 + activation, or pwconv2 + residual. */
  private matmulSubgroup(k: {
    label: string; common: BlockKernels['common']; weights: WeightWindow; weight: number; bias: number; in4: number; out4: number;
    activation?: Activation; activationCode?: string;
    bindings: { src: WebGpuBufferName; dst: WebGpuBufferName; residual?: WebGpuBufferName; scale?: WebGpuBufferName };
  }): void {
    const sizes = runtimeSizes({ K4: k.in4, N4: k.out4, WEIGHT: k.weight, BIAS: k.bias });
    const epilogue = k.activation ? `+ ${k.activation}` : k.bindings.scale ? '(GRN-scaled input) + residual' : '+ residual';
    const shape = this.half ? SUBGROUP_SHAPE.f16 : SUBGROUP_SHAPE.f32;
    const lanes = Array.from({ length: SUBGROUP_LANES }, (_, i) => i);
    const columnCount = SUBGROUP_LANES * shape.columnsPerLane;
    // Lane i holds column i of the pass (f32), or columns 2i and 2i + 1 (f16: one u32 of two halves).
    const broadcasts = lanes.flatMap((lane) => (shape.columnsPerLane === 1
      ? [{ column: lane, source: 'w', lane }]
      : [{ column: 2 * lane, source: 'w.x', lane }, { column: 2 * lane + 1, source: 'w.y', lane }]));
    const columns = Array.from({ length: columnCount }, (_, c) => c);
    const shader = this.shader(`blocks: subgroup matmul ${epilogue}`, 'matmul-subgroup', {
      ...sizes.template, activation: k.activation !== undefined, activationCode: k.activationCode, inputScale: k.bindings.scale !== undefined,
      lanes: SUBGROUP_LANES, columnsPerLane: shape.columnsPerLane, columnCount, columns, broadcasts,
      vec4s: Array.from({ length: columnCount / 4 }, (_, index) => ({ index, offset: 4 * index, columns: columns.slice(4 * index, 4 * index + 4) })),
      pixelsPerLane: shape.pixelsPerLane, rows: Array.from({ length: shape.pixelsPerLane }, (_, i) => i),
      tilePixels: SUBGROUP_WORKGROUP * shape.pixelsPerLane, tileColumns: SUBGROUP_TILE_COLUMNS,
    }, SUBGROUP_WORKGROUP, 0, k.bindings.scale ? 5 : k.bindings.residual ? 4 : 3, undefined, ['subgroups']);
    const buffer = (name: WebGpuBufferName): WebGpuResource => ({ kind: 'buffer', buffer: name });
    this.kernel({
      ...k.common, label: k.label, shader, weightBase: k.weights.weightBase, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: SUBGROUP_WORKGROUP * shape.pixelsPerLane, columnTiles: Math.ceil((k.out4 * 4) / SUBGROUP_TILE_COLUMNS) },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: k.weights.resource },
        { binding: 2, resource: buffer(k.bindings.src) },
        { binding: 3, resource: buffer(k.bindings.dst) },
        ...(k.bindings.residual ? [{ binding: 4, resource: buffer(k.bindings.residual) }] : []),
        ...(k.bindings.scale ? [{ binding: 5, resource: buffer(k.bindings.scale) }] : []),
      ],
    });
  }

  /** 7x7 depthwise conv + LayerNorm into `normed` (f16: the raw convolution goes to the block output first). */
  private blockDwconv({ step, name, channels4, src, dst, common }: BlockKernels): void {
    const dwWeights = this.weights(step.weights, ['dwWeight', 'dwBias']);
    const sizes = runtimeSizes({ C4: channels4, REAL: step.channels.real, DW_WEIGHT: dwWeights.fields.dwWeight, DW_BIAS: dwWeights.fields.dwBias });
    const shareTaps = this.dwconvTapSharing();
    const dwconv = this.shader(`blocks: depthwise conv + LayerNorm${shareTaps ? `, taps shared by ${shareTaps} lanes` : ''}`, 'block-dwconv', {
      eps: step.eps, ...sizes.template, shareTaps, lastTap: DWCONV_KERNEL - 1,
      tapLoads: Array.from({ length: shareTaps ? Math.ceil(DWCONV_KERNEL / shareTaps) : 0 }, (_, m) => m),
      tapBroadcasts: Array.from({ length: shareTaps ? DWCONV_KERNEL : 0 }, (_, tap) => ({ tap, load: Math.floor(tap / shareTaps), lane: tap % shareTaps })),
      // the input pixels a run of 4 outputs reads in one kernel row, and the taps of that row
      window: Array.from({ length: QUAD.length + DWCONV_KERNEL - 1 }, (_, i) => i), taps: Array.from({ length: DWCONV_KERNEL }, (_, i) => i),
    }, SIMPLE_WORKGROUP, 0, this.half ? 4 : 3, undefined, shareTaps ? ['subgroups'] : []);
    this.usePerPixel('normed', step.level, step.channels.padded);
    this.usePerPixel(dst, step.level, step.channels.padded);
    this.kernel({
      ...common, label: `${name}: depthwise conv + LayerNorm`, shader: dwconv, weightBase: dwWeights.weightBase, sizes: sizes.values,
      grid: { unit: 'rowQuads', perWorkgroup: SIMPLE_WORKGROUP, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: dwWeights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: src } },
        { binding: 3, resource: { kind: 'buffer', buffer: 'normed' } },
        // f16: the raw convolution goes to the (still free) block output, in f32.
        ...(this.half ? [{ binding: 4, resource: { kind: 'buffer', buffer: dst } as WebGpuResource }] : []),
      ],
    });
  }

  /** pwconv1 + activation + pwconv2 + residual in one kernel, the hidden tile in workgroup memory. */
  private blockMlp({ step, name, channels4, hidden4, src, dst, common, activationCode, pw1, pw2 }: BlockKernels): void {
    if (pw1.bits !== pw2.bits) throw new Error(`internal: block ${name} has pwconv1 and pwconv2 quantized differently`);
    const mlp = this.mlpShape(channels4, hidden4);
    const fields = { ...pw1.fields, ...pw2.fields };
    const sizes = runtimeSizes({
      C4: channels4, H4: hidden4, TILE_PIXELS: mlp.tilePixels, CHUNK4: mlp.chunk4, CHUNKS: mlp.chunks, OUT_BLOCKS: mlp.outBlocks,
      PW1_WEIGHT: fields.pw1Weight, PW1_BIAS: fields.pw1Bias, PW2_WEIGHT: fields.pw2Weight, PW2_BIAS: fields.pw2Bias,
      ...(pw1.bits ? { PW1_SCALES: fields.pw1WeightScales, PW2_SCALES: fields.pw2WeightScales } : {}),
    });
    // Row sharing needs every invocation of a subgroup on the same rows in both phases: their
    // phase A column and phase B output column runs must be whole subgroups. Where a stage's
    // shapes do not line up, its kernel loads its own rows (correct on any adapter).
    const shareRows = this.matmul.kind === 'shared' ? this.matmul.shareRows : 0;
    const sharing = shareRows && channels4 % shareRows === 0 && mlp.chunk4 % shareRows === 0 && mlp.workgroupSize % shareRows === 0 ? shareRows : 0;
    const label = `blocks: MLP (${step.activation}, ${mlp.blocksPerInvocation} output blocks per invocation${sharing ? `, rows shared by ${sharing} lanes` : ''})`;
    const shader = this.shader(label, 'block-mlp', {
      activationCode, ...sizes.template, blockRows: mlp.blockRows, rows: mlp.rows, blocks: mlp.blocks, tileVec4s: mlp.tileVec4s,
      shareRows: sharing, sharedLoads: Array.from({ length: sharing ? mlp.blockRows / sharing : 0 }, (_, m) => m),
      broadcastRows: mlp.rows.map((row) => ({ row, load: Math.floor(row / (sharing || 1)), lane: row % (sharing || 1) })),
    }, mlp.workgroupSize, mlp.tileVec4s * (this.half ? 8 : 16), 5, pw1, sharing ? ['subgroups'] : [], sharing ? ['subgroup_uniformity'] : []);
    // pwconv1 and pwconv2 are bound as two windows (ConvNeXt-XLarge's pair is just over 128 MiB).
    this.kernel({
      ...common, label: `${name}: MLP`, shader, weightBase: pw1.weightBase, weightBase2: pw2.weightBase, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: mlp.tilePixels, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: pw1.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'normed' } },
        { binding: 3, resource: { kind: 'buffer', buffer: src } },
        { binding: 4, resource: { kind: 'buffer', buffer: dst } },
        { binding: 5, resource: pw2.resource },
      ],
    });
  }

  /** ConvNeXt V2: GRN needs the whole image's hidden activations before pwconv2, so the MLP is split around it. */
  private grnBlockMlp(block: BlockKernels): void {
    const { step, name, channels4, hidden4, common, activationCode, pw1 } = block;
    this.usePerPixel('hidden', step.level, step.hidden.padded);
    const expandColumns4 = largestDivisorAtMost(hidden4, MATMUL_MAX_COLUMNS4);
    const sizes = runtimeSizes({
      C4: channels4, H4: hidden4, PW1_WEIGHT: pw1.fields.pw1Weight, PW1_BIAS: pw1.fields.pw1Bias,
      ...(pw1.bits ? { PW1_SCALES: pw1.fields.pw1WeightScales } : {}),
    });
    const expand = this.shader(`blocks: pwconv1 + ${step.activation} (${expandColumns4} hidden vec4s per workgroup)`, 'grn-expand', {
      ...sizes.template, tilePixels: MATMUL_TILE_PIXELS, columns4: expandColumns4, activationCode,
    }, (MATMUL_TILE_PIXELS / 4) * expandColumns4, 0, 3, pw1);
    this.kernel({
      ...common, label: `${name}: pwconv1 + activation`, shader: expand, weightBase: pw1.weightBase, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: MATMUL_TILE_PIXELS, columnTiles: hidden4 / expandColumns4 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: pw1.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'normed' } },
        { binding: 3, resource: { kind: 'buffer', buffer: 'hidden' } },
      ],
    });
    this.grnStatistics(block);
    this.grnProject(block);
  }

  /**
   * GRN statistics in two kernels: sums of squares over pixel slices (GRN_SLICES x channel tiles
   * workgroups per image), then the per-image norm, mean and scale from the slices.
   */
  private grnStatistics({ step, name, hidden4, common }: BlockKernels): void {
    this.usePerImage('grnPartial', GRN_SLICES * step.hidden.padded);
    this.usePerImage('grnScale', step.hidden.padded);
    const channelTiles = Math.ceil(hidden4 / SIMPLE_WORKGROUP);
    const squaresSizes = runtimeSizes({ H4: hidden4, CHANNEL_TILES: channelTiles });
    const squares = this.shader('blocks: GRN sums of squares', 'grn-squares', {
      slices: GRN_SLICES, ...squaresSizes.template,
    }, SIMPLE_WORKGROUP, 0, 2);
    this.kernel({
      ...common, weightBase: 0, label: `${name}: GRN sums of squares`, shader: squares, sizes: squaresSizes.values,
      grid: { unit: 'images', perWorkgroup: 1, columnTiles: GRN_SLICES * channelTiles },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: { kind: 'buffer', buffer: 'hidden' } },
        { binding: 2, resource: { kind: 'buffer', buffer: 'grnPartial' } },
      ],
    });
    const grnWeights = this.weights(step.weights, ['grnGamma']);
    const reduceSizes = runtimeSizes({ H4: hidden4, HIDDEN_REAL: step.hidden.real, GRN_GAMMA: grnWeights.fields.grnGamma });
    const reduce = this.shader('blocks: GRN statistics', 'grn-reduce', {
      slices: GRN_SLICES, ...reduceSizes.template,
    }, SIMPLE_WORKGROUP, SIMPLE_WORKGROUP * 4, 3);
    this.kernel({
      ...common, label: `${name}: GRN statistics`, shader: reduce, weightBase: grnWeights.weightBase, sizes: reduceSizes.values,
      grid: { unit: 'images', perWorkgroup: 1, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: grnWeights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'grnPartial' } },
        { binding: 3, resource: { kind: 'buffer', buffer: 'grnScale' } },
      ],
    });
  }

  /** GRN scale + pwconv2 (+ the folded GRN bias) + residual. */
  private grnProject({ step, name, channels4, hidden4, src, dst, common, pw2 }: BlockKernels): void {
    const projectColumns4 = largestDivisorAtMost(channels4, MATMUL_MAX_COLUMNS4);
    const sizes = runtimeSizes({
      C4: channels4, H4: hidden4, PW2_WEIGHT: pw2.fields.pw2Weight, PW2_BIAS: pw2.fields.pw2Bias,
      ...(pw2.bits ? { PW2_SCALES: pw2.fields.pw2WeightScales } : {}),
    });
    const project = this.shader(`blocks: GRN + pwconv2 + residual (${projectColumns4} output vec4s per workgroup)`, 'grn-project', {
      ...sizes.template, tilePixels: MATMUL_TILE_PIXELS, columns4: projectColumns4,
    }, (MATMUL_TILE_PIXELS / 4) * projectColumns4, 0, 5, pw2);
    this.kernel({
      ...common, label: `${name}: GRN + pwconv2 + residual`, shader: project, weightBase: pw2.weightBase, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: MATMUL_TILE_PIXELS, columnTiles: channels4 / projectColumns4 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: pw2.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'hidden' } },
        { binding: 3, resource: { kind: 'buffer', buffer: 'grnScale' } },
        { binding: 4, resource: { kind: 'buffer', buffer: src } },
        { binding: 5, resource: { kind: 'buffer', buffer: dst } },
      ],
    });
  }

  /**
   * Tile shape of the fused MLP. Measured on SwiftShader (the CPU adapter CI has; every load there
   * is a gather, so loads per FMA decide the speed):
   *   - 8-pixel register blocks beat 4-pixel ones by 25-35% (each weight vec4 feeds 8 pixels);
   *   - workgroups of 192-256 invocations ran up to 2x slower and compiled 3-5x slower than 64;
   *   - more than 2-3 output blocks per invocation (16-24 live accumulator vec4s) lost to register spills.
   * So: 64 invocations, each computing one 8 x 4 hidden block per chunk (phase A) and at most 2
   * (else 3) 8 x 4 output blocks (phase B), with as many pixels per tile as that allows (weight reuse).
   */
  private mlpShape(channels4: number, hidden4: number) {
    const blockRows = MLP_BLOCK_ROWS;
    const shape = (tilePixels: number, invocations: number) => {
      const rowBlocks = tilePixels / blockRows;
      const maxChunk4 = Math.min(Math.floor(invocations / rowBlocks), Math.floor(MAX_WORKGROUP_STORAGE / (tilePixels * 16)));
      const chunk4 = largestDivisorAtMost(hidden4, maxChunk4);
      const workgroupSize = rowBlocks * chunk4;
      const outBlocks = rowBlocks * channels4;
      return { tilePixels, chunk4, workgroupSize, outBlocks, blocksPerInvocation: Math.ceil(outBlocks / workgroupSize) };
    };
    // In order of preference; very wide models (thousands of channels) fall through to bigger workgroups.
    const preferences: Array<[invocations: number, maxBlocks: number]> = [[64, 2], [64, 3], [128, 3], [MAX_WORKGROUP, 3]];
    let chosen = shape(MLP_TILE_PIXELS[MLP_TILE_PIXELS.length - 1], MAX_WORKGROUP);
    search: for (const [invocations, maxBlocks] of preferences) {
      for (const tilePixels of MLP_TILE_PIXELS) {
        const candidate = shape(tilePixels, invocations);
        if (candidate.blocksPerInvocation <= maxBlocks) {
          chosen = candidate;
          break search;
        }
      }
    }
    const blocks = Array.from({ length: chosen.blocksPerInvocation }, (_, index) => ({
      index,
      // Only blocks past the last full round need a bounds check.
      guarded: (index + 1) * chosen.workgroupSize > chosen.outBlocks,
    }));
    return {
      ...chosen, blockRows, rows: Array.from({ length: blockRows }, (_, i) => i),
      chunks: hidden4 / chosen.chunk4, blocks, tileVec4s: chosen.tilePixels * chosen.chunk4,
    };
  }

  private output(step: Extract<PlanStep, { op: 'output' }>): void {
    const sizes = runtimeSizes({ C4: step.channels.padded / 4, REAL: step.channels.real });
    const shader = this.shader('output copy', 'output', sizes.template, SIMPLE_WORKGROUP, 0, 2);
    this.outputs.push({ name: step.name, level: step.level, channels: step.channels.real, onlyWithHiddenStates: step.onlyWithHiddenStates });
    this.kernel({
      label: step.name, shader, level: step.level, inLevel: null, weightBase: 0, onlyWithHiddenStates: step.onlyWithHiddenStates, sizes: sizes.values,
      grid: { unit: 'pixels', perWorkgroup: SIMPLE_WORKGROUP, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: { kind: 'buffer', buffer: step.src as WebGpuBufferName } },
        { binding: 2, resource: { kind: 'output', name: step.name } },
      ],
    });
  }

  private featureMap(step: Extract<PlanStep, { op: 'featureMap' }>): void {
    const group = step.weights;
    const weights = this.weights(group);
    const shader = this.shader(`feature map LayerNorm (${step.channels.real} channels)`, 'feature-map', {
      channels4: step.channels.padded / 4, realChannels: step.channels.real, eps: step.eps, fields: weights.fields,
    }, SIMPLE_WORKGROUP, 0, 3);
    this.outputs.push({ name: step.name, level: step.level, channels: step.channels.real, onlyWithHiddenStates: false });
    this.kernel({
      label: step.name, shader, level: step.level, inLevel: null, weightBase: weights.weightBase,
      grid: { unit: 'pixels', perWorkgroup: SIMPLE_WORKGROUP, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: weights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: step.src as WebGpuBufferName } },
        { binding: 3, resource: { kind: 'output', name: step.name } },
      ],
    });
  }

  private pool(step: Extract<PlanStep, { op: 'pool' }>): void {
    const group = step.weights;
    const weights = this.weights(group);
    const shader = this.shader(`pooler (${step.channels.real} channels)`, 'pool', {
      channels4: step.channels.padded / 4, realChannels: step.channels.real, eps: step.eps, fields: weights.fields,
    }, SIMPLE_WORKGROUP, SIMPLE_WORKGROUP * 4, 4);
    this.usePerImage('pooled', step.channels.padded);
    this.outputs.push({ name: 'pooler_output', level: null, channels: step.channels.real, onlyWithHiddenStates: false });
    this.kernel({
      label: 'pooler', shader, level: step.level, inLevel: null, weightBase: weights.weightBase,
      grid: { unit: 'images', perWorkgroup: 1, columnTiles: 1 },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: weights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: step.src as WebGpuBufferName } },
        { binding: 3, resource: { kind: 'buffer', buffer: 'pooled' } },
        { binding: 4, resource: { kind: 'output', name: 'pooler_output' } },
      ],
    });
  }

  private classifier(step: Extract<PlanStep, { op: 'classifier' }>): void {
    const group = step.weights;
    const weights = this.weights(group);
    const labels4 = step.labels.padded / 4;
    const shader = this.shader(`classifier (${step.in.real} -> ${step.labels.real})`, 'classifier', {
      channels4: step.in.padded / 4, labels4, labelsReal: step.labels.real, fields: weights.fields,
    }, SIMPLE_WORKGROUP, 0, 3, weights);
    this.outputs.push({ name: 'logits', level: null, channels: step.labels.real, onlyWithHiddenStates: false });
    this.kernel({
      label: 'classifier', shader, level: this.plan.levels.length - 1, inLevel: null, weightBase: weights.weightBase,
      grid: { unit: 'images', perWorkgroup: 1, columnTiles: Math.ceil(labels4 / SIMPLE_WORKGROUP) },
      bindings: [
        { binding: 0, resource: { kind: 'params' } },
        { binding: 1, resource: weights.resource },
        { binding: 2, resource: { kind: 'buffer', buffer: 'pooled' } },
        { binding: 3, resource: { kind: 'output', name: 'logits' } },
      ],
    });
  }
}
