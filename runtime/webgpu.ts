/**
 * The WebGPU backend: runs a compiled WebGpuProgram (WGSL kernels + dispatch list, made by
 * compiler/webgpu.ts) on a GPUDevice. This file is copied into generated packages: it imports
 * only other runtime files and nothing from node:*, and works in browsers (navigator.gpu) and in
 * Node (pass `create([])` of the `webgpu` package as `options.gpu`).
 *
 * Resources, all made once:
 *   - weights: uploaded at load, in as few buffers as the device's maxBufferSize allows; each
 *     kernel binds only its own weight group (a window starting on a 256-byte boundary);
 *   - pipelines: one per distinct WGSL source, created with createComputePipelineAsync at load and
 *     dispatched once there on the smallest input (some drivers compile at first dispatch);
 *   - activations: a fixed set of buffers (the plan's act0, act1, ..., the normalized block input, GRN
 *     scratch, the pooled vector, all outputs in one buffer) sized for the input shape of the
 *     run and reused until a larger shape needs them grown.
 * A run writes the input and the per-dispatch parameters, encodes every dispatch in one compute
 * pass and one command encoder, copies the outputs to a staging buffer, submits once and maps it.
 */
import type { ActivationBufferName, Backend, ModelManifest, RawOutputs } from './types.js';
import { floatsToHalves } from './half.js';

// ---- the program: compiled data, baked into generated modules as JSON ---------------------------

/** Activation buffers. `input` is the NCHW image batch; the rest are sized from WebGpuProgram.buffers. */
export type WebGpuBufferName = 'input' | ActivationBufferName | 'normed' | 'hidden' | 'grnPartial' | 'grnScale' | 'pooled';

/** How many floats a buffer needs: batch x max over levels of (pixels x floatsPerPixel[level]) + batch x floatsPerImage. */
export interface WebGpuBufferSize {
  floatsPerPixel: number[];
  floatsPerImage: number;
}

/** What one binding of a kernel is bound to. */
export type WebGpuResource =
  /** The kernel's slot of the per-dispatch uniform parameters (struct Params in the WGSL). */
  | { kind: 'params' }
  /**
   * 4-byte words [offset, offset + floats) of the weights file, copied to the GPU as they are (floats,
   * or a q8/q4 matrix's packed integers and scales, which its kernels read as u32 words); offset is a
   * multiple of 64 words (256 bytes).
   */
  | { kind: 'weights'; offset: number; floats: number }
  | { kind: 'buffer'; buffer: WebGpuBufferName }
  /** The window of the outputs buffer that holds the output tensor of this name. */
  | { kind: 'output'; name: string };

export interface WebGpuGrid {
  /** What the workgroups tile: pixels of the kernel's level, runs of 4 pixels along rows, or images. */
  unit: 'pixels' | 'rowQuads' | 'images';
  /** Units per workgroup. */
  perWorkgroup: number;
  /** Workgroups along y (column tiles of the output), fixed at compile time. */
  columnTiles: number;
}

export interface WebGpuKernel {
  /** Names the kernel in errors, e.g. "stages.1.blocks.0: MLP". */
  label: string;
  /** Index into WebGpuProgram.shaders. */
  shader: number;
  /** Resolution it computes at (Params.height/width). */
  level: number;
  /** Resolution it reads (Params.inHeight/inWidth): -1 = the input image, null = `level`. */
  inLevel: number | null;
  grid: WebGpuGrid;
  /** Params.weightBase: where the weight group starts in the bound window, in vec4s. */
  weightBase: number;
  /** Params.weightBase2: the same for a second weight window (the V1 MLP binds pwconv2 apart), else absent. */
  weightBase2?: number;
  /** Params.sizes, in order: the sizes a shared kernel reads at run time (at most 4 * PARAMS_SIZE_VEC4S); absent if none. */
  sizes?: number[];
  bindings: Array<{ binding: number; resource: WebGpuResource }>;
  /** Skipped unless hidden states were asked for. */
  onlyWithHiddenStates: boolean;
}

/** An output tensor: [batch, channels, H, W] of `level`, or [batch, channels] when level is null. */
export interface WebGpuOutput {
  name: string;
  level: number | null;
  channels: number;
  onlyWithHiddenStates: boolean;
}

export interface WebGpuShader {
  label: string;
  code: string;
  workgroupSize: number;
  workgroupStorageBytes: number;
  /** Storage buffers bound (for the maxStorageBuffersPerShaderStage check). */
  storageBuffers: number;
}

export interface WebGpuProgram {
  format: 'cxc-webgpu-1';
  /** Distinct WGSL sources; kernels with the same shapes share one (and one pipeline). */
  shaders: WebGpuShader[];
  /** The dispatch list, in order. */
  kernels: WebGpuKernel[];
  buffers: Record<Exclude<WebGpuBufferName, 'input'>, WebGpuBufferSize>;
  /** Output tensors in the order they sit in the outputs buffer (hidden-states-only ones first). */
  outputs: WebGpuOutput[];
  inputChannels: number;
  patchSize: number;
  /** Number of levels (stages): level 0 = floor(H / patch), each later level floors / 2. */
  levels: number;
  /** Floats the weights file must hold. */
  weightFloats: number;
  /** 'f16': weights and `halfBuffers` hold f16 (statistics and accumulations stay f32). */
  precision: 'f32' | 'f16';
  /** Activation buffers stored as f16 (2 bytes per float); the rest hold f32. */
  halfBuffers: WebGpuBufferName[];
  /** Adapter features the kernels need (none in f32 mode; shader-f16 in f16 mode; subgroups for the subgroup kernels). */
  requiredFeatures: string[];
  /** Subgroup kernels (compiler/webgpu.ts, MatmulStyle; absent: the tiled kernels): the adapter's subgroupMinSize and subgroupMaxSize must both lie in [min, max]. */
  subgroupSizes?: { min: number; max: number };
  /**
   * The kernels assume that each run of this many consecutive local invocation indices is one
   * subgroup (true on the CPU drivers, not promised by WebGPU): load() checks it with a probe
   * dispatch before it runs them.
   */
  consecutiveSubgroups?: number;
  /** How model.backend names these kernels (subgroup variants). */
  kernelsNote?: string;
  /** A build with --precision f16 carries its f16 program here; load() runs it where the adapter has shader-f16. */
  f16?: WebGpuProgram;
  /** Variants of this program with subgroup kernels, best first; load() runs the first the adapter can on CPU adapters (see the `matmul` option). */
  subgroups?: WebGpuProgram[];
}

// ---- errors ---------------------------------------------------------------------------------------

export type WebGpuErrorCode =
  | 'no-adapter'
  | 'missing-feature'
  | 'limit'
  | 'device-lost'
  | 'shader-compile'
  | 'gpu-error'
  | 'disposed';

/** Every failure of the WebGPU backend that is not a caller's programming error. */
export class WebGpuError extends Error {
  constructor(readonly code: WebGpuErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WebGpuError';
  }
}

const USE_WASM = 'build the model with --target wasm to run it on the CPU instead';

// The numeric flags of the WebGPU spec, spelled out so this file needs no GPUBufferUsage globals
// (Node's `webgpu` package only provides them after Object.assign(globalThis, globals)).
const BUFFER_MAP_READ = 0x0001;
const BUFFER_COPY_SRC = 0x0004;
const BUFFER_COPY_DST = 0x0008;
const BUFFER_UNIFORM = 0x0040;
const BUFFER_STORAGE = 0x0080;
const MAP_MODE_READ = 0x0001;

/** vec4<u32>s of Params.sizes (templates/wgsl/common.wgsl.hbs; the compiler renders the same count). */
export const PARAMS_SIZE_VEC4S = 3;
/** Params slots are 256 bytes apart: the largest minUniformBufferOffsetAlignment WebGPU allows. */
const PARAMS_STRIDE = 256;
const PARAMS_WORDS = 8 + 4 * PARAMS_SIZE_VEC4S;
/** Output windows and weight windows start on 256-byte (64-float) boundaries, the largest storage offset alignment. */
const WINDOW_ALIGN_FLOATS = 64;

/** Bytes of struct Params, the uniform binding of every kernel. */
export const PARAMS_BYTES = PARAMS_WORDS * 4;

/** The Params words of one dispatch (struct Params in templates/wgsl/common.wgsl.hbs, in order). */
export function kernelParams(kernel: WebGpuKernel, batch: number, level: { height: number; width: number }, source: { height: number; width: number }): number[] {
  return [batch, level.height, level.width, source.height, source.width, kernel.weightBase, kernel.weightBase2 ?? 0, 0, ...(kernel.sizes ?? [])];
}

const MIB = 1024 * 1024;
const mib = (bytes: number) => `${(bytes / MIB).toFixed(bytes < 10 * MIB ? 2 : 0)} MiB`;
const alignUp = (value: number, multiple: number) => Math.ceil(value / multiple) * multiple;

export interface WebGpuBackendOptions {
  /**
   * A device of your own. It is not destroyed by dispose(). In Node, keep the object that made it
   * (`create([])` of the `webgpu` package) alive as long as the device, or pass it as `gpu` too.
   */
  device?: GPUDevice;
  /** Where to get an adapter when no device is given (default: navigator.gpu). Kept alive as long as the device. */
  gpu?: GPU;
  /**
   * Which kernels run. Default: f16 where the package was built with `--precision f16` and the
   * adapter has shader-f16, else f32. 'f32' always works; 'f16' fails where it cannot run.
   */
  precision?: 'f32' | 'f16';
  /**
   * How the kernels compute the blocks' pointwise convolutions. 'auto' (default): subgroup kernels
   * on CPU adapters (isFallbackAdapter: lavapipe, SwiftShader), where they run 1.3-3x faster, the
   * first variant the adapter's subgroup size allows; else 'tiles'. 'subgroups' fails where no
   * variant can run; 'tiles' always works.
   */
  matmul?: 'auto' | 'tiles' | 'subgroups';
}

// ---- lifetimes ------------------------------------------------------------------------------------

/**
 * What a device depends on but does not keep reachable from JavaScript: the GPU entry point and
 * the adapter. Dawn's Node bindings (npm `webgpu`) free the native instance when the `create([])`
 * object is garbage-collected, even while a device made from it still runs; the device then uses
 * freed memory (hangs in InstanceBase::ProcessEvents, aborts, segfaults). A backend holds its
 * anchor for its whole life, and this set holds it on until the device is lost (dispose() destroys
 * it), so it outlives the device in Node and in browsers alike.
 */
interface DeviceAnchor { gpu?: GPU; adapter?: GPUAdapter }
const anchoredUntilLost = new Set<DeviceAnchor>();

function anchorUntilLost(device: GPUDevice, anchor: DeviceAnchor): void {
  if (!anchor.gpu && !anchor.adapter) return;
  anchoredUntilLost.add(anchor);
  const release = () => { anchoredUntilLost.delete(anchor); };
  device.lost.then(release, release);
}

// ---- load -----------------------------------------------------------------------------------------

export async function createWebGpuBackend(
  manifest: ModelManifest,
  program: WebGpuProgram,
  weights: Float32Array,
  options: WebGpuBackendOptions = {},
): Promise<Backend> {
  if (program.format !== 'cxc-webgpu-1') throw new Error(`cxc: unknown WebGPU program format ${JSON.stringify(program.format)}`);
  if (weights.length < program.weightFloats) {
    throw new Error(`cxc: the weights hold ${weights.length} floats, ${manifest.name} needs ${program.weightFloats}`);
  }
  const acquiredDevice = await acquireDevice(program, options);
  anchorUntilLost(acquiredDevice.device, acquiredDevice.anchor);
  try {
    const acquired = await checkSubgroupLayout(acquiredDevice);
    return await WebGpuBackendImpl.create(manifest, acquired.program, weights, acquired);
  } catch (error) {
    if (acquiredDevice.ownsDevice) acquiredDevice.device.destroy();
    throw error;
  }
}

// ---- precision ------------------------------------------------------------------------------------

const F16_NOTE = 'f16 (statistics and accumulation in f32)';

/** What decides whether a program runs on an adapter (or a caller's device). */
interface AdapterTraits { features: ReadonlySet<string>; info?: GPUAdapterInfo; what: string }

/** Why a program cannot run on an adapter, or undefined when it can. */
function unrunnable(program: WebGpuProgram, adapter: AdapterTraits): string | undefined {
  const missing = program.requiredFeatures.filter((f) => !adapter.features.has(f));
  if (missing.length > 0) return `this ${adapter.what} lacks the feature(s) ${missing.join(', ')}`;
  const sizes = program.subgroupSizes;
  if (sizes) {
    const info = adapter.info as { subgroupMinSize?: number; subgroupMaxSize?: number } | undefined;
    const [min, max] = [info?.subgroupMinSize ?? 0, info?.subgroupMaxSize ?? 0];
    if (min < sizes.min || max > sizes.max || min > max) {
      const have = min === 0 ? 'an unknown number of' : min === max ? `${min}` : `${min} to ${max}`;
      const need = sizes.min === sizes.max ? `exactly ${sizes.min}` : `${sizes.min} or more`;
      return `this ${adapter.what}'s subgroups hold ${have} invocations, these subgroup kernels need ${need}`;
    }
  }
  return undefined;
}

/** A program to run and how model.backend describes it. */
interface ProgramChoice { program: WebGpuProgram; precision: string }

/**
 * The program a load runs, as the options and the adapter allow, and how to describe the choice;
 * with `fallback`, what to run instead should the subgroup layout check fail (see consecutiveSubgroups).
 */
function chooseProgram(built: WebGpuProgram, options: WebGpuBackendOptions, adapter: AdapterTraits): ProgramChoice & { fallback?: ProgramChoice } {
  if (options.precision !== undefined && options.precision !== 'f32' && options.precision !== 'f16') {
    throw new TypeError(`cxc: precision must be 'f32' or 'f16', got ${JSON.stringify(options.precision)}`);
  }
  const matmul = options.matmul ?? 'auto';
  if (matmul !== 'auto' && matmul !== 'tiles' && matmul !== 'subgroups') {
    throw new TypeError(`cxc: matmul must be 'auto', 'tiles' or 'subgroups', got ${JSON.stringify(options.matmul)}`);
  }
  // Precision first: f16 where built and runnable (or asked for), else f32.
  let base = built;
  let precision = 'f32';
  if (options.precision === 'f16') {
    if (!built.f16) throw new WebGpuError('missing-feature', "cxc: this package has no f16 kernels: build it with `cxc build --precision f16`, or load it with { precision: 'f32' }");
    const why = unrunnable(built.f16, adapter);
    if (why) throw new WebGpuError('missing-feature', `cxc: ${why} the f16 kernels need: load with { precision: 'f32' } (the CLI: \`cxc build --precision f32\`), or ${USE_WASM}`);
    [base, precision] = [built.f16, F16_NOTE];
  } else if (options.precision === undefined && built.f16) {
    if (unrunnable(built.f16, adapter)) precision = `f32 (no ${built.f16.requiredFeatures.join(', ')} on this ${adapter.what})`;
    else [base, precision] = [built.f16, F16_NOTE];
  }
  const why = unrunnable(base, adapter);
  if (why) throw new WebGpuError('missing-feature', `cxc: ${why} the kernels need; ${USE_WASM}`);
  // Then the matrix kernels of that precision: the first subgroup variant the adapter can run.
  const variants = base.subgroups ?? [];
  const runnable = variants.find((variant) => !unrunnable(variant, adapter));
  const subgroups = runnable && { program: runnable, precision: `${precision}, ${runnable.kernelsNote ?? 'subgroup kernels'}` };
  if (matmul === 'subgroups') {
    if (variants.length === 0) throw new WebGpuError('missing-feature', "cxc: this package has no subgroup kernels; load it with { matmul: 'tiles' }");
    if (!subgroups) {
      const reasons = [...new Set(variants.map((variant) => unrunnable(variant, adapter)))].join('; ');
      throw new WebGpuError('missing-feature', `cxc: no subgroup kernels of this package run here (${reasons}): load with { matmul: 'tiles' } (runs everywhere), or ${USE_WASM}`);
    }
    return subgroups;
  }
  const cpuAdapter = (adapter.info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter === true;
  if (matmul === 'auto' && cpuAdapter && subgroups) return { ...subgroups, fallback: { program: base, precision } };
  return { program: base, precision };
}

interface ProgramNeeds {
  largestWeightWindowBytes: number;
  workgroupStorageBytes: number;
  workgroupSize: number;
  storageBuffers: number;
}

function programNeeds(program: WebGpuProgram): ProgramNeeds {
  let largestWeightWindowBytes = 0;
  for (const kernel of program.kernels) {
    for (const { resource } of kernel.bindings) {
      if (resource.kind === 'weights') largestWeightWindowBytes = Math.max(largestWeightWindowBytes, resource.floats * 4);
    }
  }
  return {
    largestWeightWindowBytes,
    workgroupStorageBytes: Math.max(0, ...program.shaders.map((s) => s.workgroupStorageBytes)),
    workgroupSize: Math.max(1, ...program.shaders.map((s) => s.workgroupSize)),
    storageBuffers: Math.max(0, ...program.shaders.map((s) => s.storageBuffers)),
  };
}

/** Checks a device's (or adapter's) limits against what the program needs at load time. */
function checkLimits(limits: GPUSupportedLimits, needs: ProgramNeeds, what: string): void {
  const problems: string[] = [];
  const check = (name: keyof GPUSupportedLimits, needed: number, show: (value: number) => string = String) => {
    const have = limits[name] as number;
    if (needed > have) problems.push(`${name}: needs ${show(needed)}, ${what} has ${show(have)}`);
  };
  check('maxStorageBufferBindingSize', needs.largestWeightWindowBytes, mib);
  check('maxBufferSize', needs.largestWeightWindowBytes, mib);
  check('maxComputeWorkgroupStorageSize', needs.workgroupStorageBytes);
  check('maxComputeInvocationsPerWorkgroup', needs.workgroupSize);
  check('maxComputeWorkgroupSizeX', needs.workgroupSize);
  check('maxStorageBuffersPerShaderStage', needs.storageBuffers);
  if (limits.minStorageBufferOffsetAlignment > PARAMS_STRIDE || limits.minUniformBufferOffsetAlignment > PARAMS_STRIDE) {
    problems.push(`buffer offset alignment above ${PARAMS_STRIDE} bytes`);
  }
  if (problems.length > 0) {
    throw new WebGpuError('limit', `cxc: this model's kernels exceed the limits of the ${what}:\n  - ${problems.join('\n  - ')}\n${USE_WASM}`);
  }
}

function describeAdapter(info: GPUAdapterInfo | undefined): string {
  if (!info) return 'WebGPU';
  const parts = [info.vendor, info.architecture, info.description].filter((p) => typeof p === 'string' && p.length > 0);
  return parts.length > 0 ? `WebGPU (${parts.join(', ')})` : 'WebGPU';
}

interface AcquiredDevice {
  /** The program chosen for this device (f16 or f32). */
  program: WebGpuProgram;
  device: GPUDevice;
  ownsDevice: boolean;
  description: string;
  anchor: DeviceAnchor;
  /** What to run instead should the program's subgroup layout check fail, and its description. */
  fallback?: { program: WebGpuProgram; description: string };
}

async function acquireDevice(built: WebGpuProgram, options: WebGpuBackendOptions): Promise<AcquiredDevice> {
  if (options.device) {
    const device = options.device;
    const info = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo;
    const choice = chooseProgram(built, options, { features: device.features as ReadonlySet<string>, info, what: 'given GPUDevice' });
    checkLimits(device.limits, programNeeds(choice.program), 'given GPUDevice');
    return { ...described(choice, (note) => `${describeAdapter(info)}, ${note}, caller's device`), device, ownsDevice: false, anchor: { gpu: options.gpu } };
  }

  const gpu = options.gpu ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) {
    throw new WebGpuError(
      'no-adapter',
      'cxc: WebGPU is not available here (no navigator.gpu). In Node, pass { gpu: create([]) } from the "webgpu" package; ' +
        `in a browser, use one with WebGPU enabled (a secure context is required); or ${USE_WASM}`,
    );
  }
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter();
  } catch (error) {
    throw new WebGpuError('no-adapter', `cxc: requesting a WebGPU adapter failed (${(error as Error)?.message ?? error}); ${USE_WASM}`, { cause: error });
  }
  if (!adapter) {
    throw new WebGpuError(
      'no-adapter',
      'cxc: no WebGPU adapter is available (requestAdapter() returned null): no usable GPU or driver was found, or WebGPU is ' +
        `disabled in this browser; ${USE_WASM}`,
    );
  }
  const choice = chooseProgram(built, options, { features: adapter.features as ReadonlySet<string>, info: adapter.info, what: 'GPU adapter' });
  const { program } = choice;
  const needs = programNeeds(program);
  const features = program.requiredFeatures as GPUFeatureName[];
  checkLimits(adapter.limits, needs, 'GPU adapter');
  // Ask for the adapter's largest buffers, so that big inputs fit where the hardware allows it;
  // the kernel-shape limits only as high as the program needs.
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
    maxComputeWorkgroupStorageSize: Math.max(needs.workgroupStorageBytes, 16384),
    maxComputeInvocationsPerWorkgroup: Math.max(needs.workgroupSize, 256),
    maxComputeWorkgroupSizeX: Math.max(needs.workgroupSize, 256),
    maxStorageBuffersPerShaderStage: Math.max(needs.storageBuffers, 8),
  };
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ label: 'cxc', requiredFeatures: features, requiredLimits });
  } catch (error) {
    throw new WebGpuError('no-adapter', `cxc: the WebGPU adapter refused to create a device (${(error as Error)?.message ?? error}); ${USE_WASM}`, { cause: error });
  }
  return { ...described(choice, (note) => `${describeAdapter(adapter.info)}, ${note}`), device, ownsDevice: true, anchor: { gpu, adapter } };
}

/** A choice (and its fallback) with model.backend's description of each. */
function described(choice: ReturnType<typeof chooseProgram>, describe: (note: string) => string): Pick<AcquiredDevice, 'program' | 'description' | 'fallback'> {
  const { program, precision, fallback } = choice;
  return { program, description: describe(precision), ...(fallback ? { fallback: { program: fallback.program, description: describe(fallback.precision) } } : {}) };
}

/**
 * Whether each run of `size` consecutive local invocation indices of a workgroup is one subgroup of
 * `size` invocations on this device: one dispatch of a 64-invocation probe, read back.
 */
/** The probe's pipeline label (bench/webgpu-kernels.mjs lets it run while it records a load). */
export const SUBGROUP_PROBE_LABEL = 'cxc subgroup layout probe';

export async function probeConsecutiveSubgroups(device: GPUDevice, size: number): Promise<boolean> {
  const invocations = 64;
  const code = `enable subgroups;
@group(0) @binding(0) var<storage, read_write> result: array<u32, ${invocations}>;
@compute @workgroup_size(${invocations})
fn main(@builtin(local_invocation_index) index: u32, @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) subgroupSize: u32) {
  result[index] = select(0u, 1u, subgroupSize == ${size}u && lane == index % ${size}u);
}`;
  device.pushErrorScope('validation');
  const pipeline = device.createComputePipeline({ label: SUBGROUP_PROBE_LABEL, layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  // A device that cannot even build the probe does not run the kernels either.
  if (await device.popErrorScope()) return false;
  const result = device.createBuffer({ size: invocations * 4, usage: BUFFER_STORAGE | BUFFER_COPY_SRC });
  const readback = device.createBuffer({ size: invocations * 4, usage: BUFFER_COPY_DST | BUFFER_MAP_READ });
  try {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: result } }] }));
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(result, 0, readback, 0, invocations * 4);
    device.queue.submit([encoder.finish()]);
    await readback.mapAsync(MAP_MODE_READ);
    const ok = new Uint32Array(readback.getMappedRange()).every((v) => v === 1);
    readback.unmap();
    return ok;
  } finally {
    result.destroy();
    readback.destroy();
  }
}

/**
 * The acquired program, or its fallback where the device does not lay subgroups out as the
 * program's kernels assume (a forced choice without a fallback fails, naming why).
 */
async function checkSubgroupLayout(acquired: AcquiredDevice): Promise<AcquiredDevice> {
  const size = acquired.program.consecutiveSubgroups;
  if (size === undefined || (await probeConsecutiveSubgroups(acquired.device, size))) return acquired;
  if (acquired.fallback) return { ...acquired, ...acquired.fallback, description: `${acquired.fallback.description} (subgroup layout check failed)` };
  throw new WebGpuError(
    'missing-feature',
    `cxc: this device does not form subgroups of ${size} from consecutive invocations, as the row-sharing kernels assume: load with { matmul: 'tiles' }, or ${USE_WASM}`,
  );
}

// ---- the backend ----------------------------------------------------------------------------------

export interface WeightChunk { start: number; end: number; buffer?: GPUBuffer }
export interface WeightBinding { chunk: number; byteOffset: number; bytes: number }

/** Per-level spatial sizes of one input shape. */
interface Shape { batch: number; height: number; width: number; levels: Array<{ height: number; width: number }> }

/** The buffers, bind groups and parameters for one input shape. */
interface ShapeState {
  key: string;
  shape: Shape;
  bindGroups: GPUBindGroup[];
  dispatches: Array<[number, number, number]>;
  /** Float offset of each output in the outputs buffer. */
  outputOffsets: Map<string, number>;
  outputFloats: number;
  /** First float of the outputs that every run reads back (hidden-states-only outputs come before it). */
  alwaysFrom: number;
}

class WebGpuBackendImpl implements Backend {
  readonly name = 'webgpu' as const;
  private readonly buffers = new Map<WebGpuBufferName | 'outputs' | 'staging', GPUBuffer>();
  private shapeState?: ShapeState;
  private lost?: WebGpuError;
  private disposed = false;
  /** Runs share buffers: each waits for the one before it. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Rejects when the device is lost; every wait on the GPU races against it, so no run can hang. */
  private readonly lostSignal: Promise<never>;

  private readonly device: GPUDevice;
  private readonly ownsDevice: boolean;
  readonly description: string;
  /** The GPU entry point and adapter the device was made from: held for this backend's whole life. */
  private readonly anchor: DeviceAnchor;

  private constructor(
    private readonly manifest: ModelManifest,
    private readonly program: WebGpuProgram,
    acquired: AcquiredDevice,
    private readonly pipelines: GPUComputePipeline[],
    private readonly weightChunks: WeightChunk[],
    private readonly weightBindings: Map<string, WeightBinding>,
    private readonly paramsBuffer: GPUBuffer,
  ) {
    ({ device: this.device, ownsDevice: this.ownsDevice, description: this.description, anchor: this.anchor } = acquired);
    const { device } = this;
    this.lostSignal = device.lost.then((info) => {
      this.lost = this.disposed
        ? new WebGpuError('disposed', 'cxc: this model was disposed; call load() again')
        : new WebGpuError('device-lost', `cxc: the WebGPU device was lost (${info.reason}): ${info.message || 'no message'}. Load the model again to continue; if it keeps happening, ${USE_WASM}`);
      throw this.lost;
    });
    this.lostSignal.catch(() => undefined);
  }

  static async create(
    manifest: ModelManifest,
    program: WebGpuProgram,
    weights: Float32Array,
    acquired: AcquiredDevice,
  ): Promise<WebGpuBackendImpl> {
    const { device } = acquired;
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    let uploaded: ReturnType<typeof uploadWeights>;
    try {
      uploaded = uploadWeights(device, program, weights);
    } catch (error) {
      void device.popErrorScope().catch(() => undefined);
      void device.popErrorScope().catch(() => undefined);
      throw error;
    }
    const { chunks, bindings } = uploaded;
    const paramsBuffer = device.createBuffer({
      label: 'cxc params',
      size: Math.max(1, program.kernels.length) * PARAMS_STRIDE,
      usage: BUFFER_UNIFORM | BUFFER_COPY_DST,
    });
    try {
      const validation = await device.popErrorScope();
      const memory = await device.popErrorScope();
      if (memory) throw new WebGpuError('limit', `cxc: out of GPU memory uploading ${mib(weights.byteLength)} of weights (${memory.message}); ${USE_WASM}`);
      if (validation) throw new WebGpuError('gpu-error', `cxc: uploading the weights failed: ${validation.message}`);
      const pipelines = await compilePipelines(device, program);
      const backend = new WebGpuBackendImpl(manifest, program, acquired, pipelines, chunks, bindings, paramsBuffer);
      try {
        await backend.warmUp();
      } catch (error) {
        backend.dispose();
        throw error;
      }
      return backend;
    } catch (error) {
      // A caller's device outlives this failure: give back what was made on it.
      for (const chunk of chunks) chunk.buffer?.destroy();
      paramsBuffer.destroy();
      throw error;
    }
  }

  /**
   * Dispatches every kernel once on the smallest input, inside load(): drivers that compile a
   * pipeline only at its first dispatch (Mesa's lavapipe) do it here, not in the first real run.
   */
  private async warmUp(): Promise<void> {
    const size = this.manifest.minInputSize;
    await this.runNow(new Float32Array(this.program.inputChannels * size * size), 1, size, size, true);
  }

  run(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    const result = this.queue.then(() => this.runNow(input, batch, height, width, withHiddenStates));
    this.queue = result.catch(() => undefined);
    return result;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const buffer of this.buffers.values()) buffer.destroy();
    this.buffers.clear();
    for (const chunk of this.weightChunks) chunk.buffer?.destroy();
    this.paramsBuffer.destroy();
    if (this.ownsDevice) this.device.destroy();
  }

  private async runNow(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    if (this.disposed) throw new WebGpuError('disposed', 'cxc: this model was disposed; call load() again');
    if (this.lost) throw this.lost;
    const expected = batch * this.program.inputChannels * height * width;
    if (input.length !== expected) {
      throw new RangeError(`cxc: input holds ${input.length} floats, batch ${batch} x ${this.program.inputChannels} x ${height} x ${width} needs ${expected}`);
    }
    const { device } = this;
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    let state: ShapeState;
    try {
      state = this.prepareShape(batch, height, width);
    } catch (error) {
      void device.popErrorScope().catch(() => undefined);
      void device.popErrorScope().catch(() => undefined);
      throw error;
    }
    device.queue.writeBuffer(this.buffers.get('input')!, 0, input as Float32Array<ArrayBuffer>);
    const encoder = device.createCommandEncoder({ label: 'cxc run' });
    const pass = encoder.beginComputePass({ label: 'cxc forward' });
    this.program.kernels.forEach((kernel, i) => {
      if (kernel.onlyWithHiddenStates && !withHiddenStates) return;
      pass.setPipeline(this.pipelines[kernel.shader]);
      pass.setBindGroup(0, state.bindGroups[i]);
      pass.dispatchWorkgroups(...state.dispatches[i]);
    });
    pass.end();
    const readFrom = withHiddenStates ? 0 : state.alwaysFrom;
    const readBytes = (state.outputFloats - readFrom) * 4;
    const staging = this.buffers.get('staging')!;
    if (readBytes > 0) encoder.copyBufferToBuffer(this.buffers.get('outputs')!, readFrom * 4, staging, readFrom * 4, readBytes);
    device.queue.submit([encoder.finish()]);
    // (Rejecting only on a scope-stack mismatch, which cannot happen here; the catch keeps an
    // early throw below from leaving an unhandled rejection.)
    const validation = device.popErrorScope().catch(() => null);
    const memory = device.popErrorScope().catch(() => null);

    // Every wait races the device-lost signal: a lost device rejects the run instead of hanging it.
    let mapError: unknown;
    try {
      await Promise.race([staging.mapAsync(MAP_MODE_READ, readFrom * 4, readBytes), this.lostSignal]);
    } catch (error) {
      mapError = error;
    }
    if (this.lost) throw this.lost;
    if (this.disposed) throw new WebGpuError('disposed', 'cxc: this model was disposed while it was running');
    const [validationError, memoryError] = await Promise.race([Promise.all([validation, memory]), this.lostSignal]);
    if (validationError || memoryError || mapError !== undefined) {
      if (mapError === undefined) staging.unmap();
      // Buffers made for this shape may be invalid: make them again next time.
      this.forgetShape();
      if (memoryError) throw new WebGpuError('limit', `cxc: out of GPU memory running batch ${batch} at ${height}x${width} (${memoryError.message}); try a smaller batch or ${USE_WASM}`);
      if (validationError) throw new WebGpuError('gpu-error', `cxc: the GPU rejected a command (an internal error of cxc; please report it): ${validationError.message}`);
      throw new WebGpuError('gpu-error', `cxc: reading the results back failed: ${(mapError as Error)?.message ?? mapError}`, { cause: mapError });
    }

    const mapped = new Float32Array(staging.getMappedRange(readFrom * 4, readBytes));
    const outputs: RawOutputs = new Map();
    const { shape } = state;
    for (const output of this.program.outputs) {
      if (output.onlyWithHiddenStates && !withHiddenStates) continue;
      const dims = output.level === null
        ? [batch, output.channels]
        : [batch, output.channels, shape.levels[output.level].height, shape.levels[output.level].width];
      const floats = dims.reduce((a, b) => a * b, 1);
      const start = state.outputOffsets.get(output.name)! - readFrom;
      outputs.set(output.name, { data: mapped.slice(start, start + floats), shape: dims });
    }
    staging.unmap();
    return outputs;
  }

  private forgetShape(): void {
    this.shapeState = undefined;
    for (const buffer of this.buffers.values()) buffer.destroy();
    this.buffers.clear();
  }

  /** Makes (or reuses) the buffers, bind groups and parameters of an input shape. */
  private prepareShape(batch: number, height: number, width: number): ShapeState {
    const key = `${batch}x${height}x${width}`;
    if (this.shapeState?.key === key) return this.shapeState;
    const { program, device } = this;
    const shape = shapeOf(program, batch, height, width);
    if (shape.levels.some((l) => l.height < 1 || l.width < 1)) {
      throw new RangeError(`cxc: input ${height}x${width} is too small: every stage needs at least one pixel (at least ${this.manifest.minInputSize}x${this.manifest.minInputSize})`);
    }

    // Sizes of every buffer for this shape; check them all before replacing any.
    const sizes = new Map<WebGpuBufferName | 'outputs' | 'staging', number>();
    sizes.set('input', batch * program.inputChannels * height * width * 4);
    for (const [name, size] of Object.entries(program.buffers) as Array<[WebGpuBufferName, WebGpuBufferSize]>) {
      let floats = 0;
      size.floatsPerPixel.forEach((perPixel, level) => {
        if (perPixel > 0) floats = Math.max(floats, batch * shape.levels[level].height * shape.levels[level].width * perPixel);
      });
      floats += batch * size.floatsPerImage;
      if (floats > 0) sizes.set(name, floats * (program.halfBuffers.includes(name) ? 2 : 4));
    }
    const outputOffsets = new Map<string, number>();
    let outputFloats = 0;
    let alwaysFrom = -1;
    for (const output of program.outputs) {
      if (!output.onlyWithHiddenStates && alwaysFrom < 0) alwaysFrom = outputFloats;
      outputOffsets.set(output.name, outputFloats);
      const level = output.level === null ? { height: 1, width: 1 } : shape.levels[output.level];
      outputFloats = alignUp(outputFloats + batch * output.channels * level.height * level.width, WINDOW_ALIGN_FLOATS);
    }
    if (alwaysFrom < 0) alwaysFrom = outputFloats;
    sizes.set('outputs', outputFloats * 4);
    sizes.set('staging', outputFloats * 4);

    const limits = device.limits;
    for (const [name, bytes] of sizes) {
      const limit = name === 'staging' ? limits.maxBufferSize : Math.min(limits.maxBufferSize, limits.maxStorageBufferBindingSize);
      if (bytes > limit) {
        throw new WebGpuError(
          'limit',
          `cxc: batch ${batch} at ${height}x${width} needs a ${mib(bytes)} "${name}" buffer, over this GPU's limit of ${mib(limit)} ` +
            `(maxStorageBufferBindingSize / maxBufferSize); use a smaller batch or input, or ${USE_WASM}`,
        );
      }
    }

    // (Out-of-memory here is caught by the error scopes of the run that asked for this shape.)
    for (const [name, bytes] of sizes) {
      const current = this.buffers.get(name);
      if (current && current.size >= bytes) continue;
      current?.destroy();
      const usage = name === 'staging' ? BUFFER_MAP_READ | BUFFER_COPY_DST
        : name === 'outputs' ? BUFFER_STORAGE | BUFFER_COPY_SRC
          : BUFFER_STORAGE | BUFFER_COPY_DST;
      this.buffers.set(name, device.createBuffer({ label: `cxc ${name}`, size: alignUp(Math.max(bytes, 16), 16), usage }));
    }

    // Per-dispatch parameters and grids.
    const params = new Uint32Array((program.kernels.length * PARAMS_STRIDE) / 4);
    const maxPerDimension = limits.maxComputeWorkgroupsPerDimension;
    const dispatches = program.kernels.map((kernel, i): [number, number, number] => {
      const level = shape.levels[kernel.level];
      const source = kernel.inLevel === null ? level : kernel.inLevel < 0 ? { height, width } : shape.levels[kernel.inLevel];
      params.set(kernelParams(kernel, batch, level, source), (i * PARAMS_STRIDE) / 4);
      const units = kernel.grid.unit === 'images' ? batch
        : kernel.grid.unit === 'pixels' ? batch * level.height * level.width
          : batch * level.height * Math.ceil(level.width / 4);
      const tiles = Math.ceil(units / kernel.grid.perWorkgroup);
      const x = Math.min(tiles, maxPerDimension);
      const z = Math.ceil(tiles / x);
      if (z > maxPerDimension) throw new WebGpuError('limit', `cxc: batch ${batch} at ${height}x${width} needs more workgroups than this GPU dispatches; use a smaller input`);
      return [x, kernel.grid.columnTiles, z];
    });
    device.queue.writeBuffer(this.paramsBuffer, 0, params);

    const bindGroups = program.kernels.map((kernel, i) => device.createBindGroup({
      label: kernel.label,
      layout: this.pipelines[kernel.shader].getBindGroupLayout(0),
      entries: kernel.bindings.map(({ binding, resource }): GPUBindGroupEntry => {
        switch (resource.kind) {
          case 'params':
            return { binding, resource: { buffer: this.paramsBuffer, offset: i * PARAMS_STRIDE, size: PARAMS_BYTES } };
          case 'weights': {
            const window = this.weightBindings.get(weightKey(resource))!;
            return { binding, resource: { buffer: this.weightChunks[window.chunk].buffer!, offset: window.byteOffset, size: window.bytes } };
          }
          case 'buffer':
            return { binding, resource: { buffer: this.buffers.get(resource.buffer)!, size: sizes.get(resource.buffer)! } };
          case 'output': {
            const output = program.outputs.find((o) => o.name === resource.name)!;
            const level = output.level === null ? { height: 1, width: 1 } : shape.levels[output.level];
            const floats = batch * output.channels * level.height * level.width;
            return { binding, resource: { buffer: this.buffers.get('outputs')!, offset: outputOffsets.get(resource.name)! * 4, size: floats * 4 } };
          }
        }
      }),
    }));

    this.shapeState = { key, shape, bindGroups, dispatches, outputOffsets, outputFloats, alwaysFrom };
    return this.shapeState;
  }
}

function shapeOf(program: WebGpuProgram, batch: number, height: number, width: number): Shape {
  const levels = [{ height: Math.floor(height / program.patchSize), width: Math.floor(width / program.patchSize) }];
  for (let level = 1; level < program.levels; level++) {
    levels.push({ height: Math.floor(levels[level - 1].height / 2), width: Math.floor(levels[level - 1].width / 2) });
  }
  return { batch, height, width, levels };
}

const weightKey = (resource: { offset: number; floats: number }) => `${resource.offset}+${resource.floats}`;

/**
 * Splits the weights into as few buffers as `maxBufferBytes` allows. Every kernel's window lies
 * whole inside one buffer, starting at a 256-byte aligned offset of it, so it can be bound alone
 * (windows themselves are at most maxStorageBufferBindingSize: checkLimits sees to that).
 */
export function planWeightChunks(program: WebGpuProgram, maxBufferBytes: number): { chunks: WeightChunk[]; bindings: Map<string, WeightBinding> } {
  const windows = new Map<string, { offset: number; floats: number }>();
  for (const kernel of program.kernels) {
    for (const { resource } of kernel.bindings) if (resource.kind === 'weights') windows.set(weightKey(resource), resource);
  }
  const sorted = [...windows.values()].sort((a, b) => a.offset - b.offset);
  const bytesPerWeight = program.precision === 'f16' ? 2 : 4;
  const chunkFloats = Math.floor(maxBufferBytes / bytesPerWeight);
  const chunks: WeightChunk[] = [];
  const bindings = new Map<string, WeightBinding>();
  for (const window of sorted) {
    let chunk = chunks[chunks.length - 1];
    if (!chunk || window.offset + window.floats - chunk.start > chunkFloats) {
      chunk = { start: window.offset, end: window.offset };
      chunks.push(chunk);
    }
    chunk.end = Math.max(chunk.end, window.offset + window.floats);
    bindings.set(weightKey(window), { chunk: chunks.length - 1, byteOffset: (window.offset - chunk.start) * bytesPerWeight, bytes: window.floats * bytesPerWeight });
  }
  return { chunks, bindings };
}

/** Uploads the weights in the buffers planWeightChunks chose. */
function uploadWeights(device: GPUDevice, program: WebGpuProgram, weights: Float32Array): { chunks: WeightChunk[]; bindings: Map<string, WeightBinding> } {
  const { chunks, bindings } = planWeightChunks(program, device.limits.maxBufferSize);
  const bytesPerWeight = program.precision === 'f16' ? 2 : 4;
  for (const [i, chunk] of chunks.entries()) {
    const bytes = alignUp((chunk.end - chunk.start) * bytesPerWeight, 16);
    chunk.buffer = device.createBuffer({ label: `cxc weights ${i}`, size: bytes, usage: BUFFER_STORAGE | BUFFER_COPY_DST, mappedAtCreation: true });
    const source = weights.subarray(chunk.start, chunk.end);
    if (bytesPerWeight === 4) new Float32Array(chunk.buffer.getMappedRange()).set(source);
    else {
      const outOfRange = floatsToHalves(source, new Uint16Array(chunk.buffer.getMappedRange()));
      if (outOfRange >= 0) {
        for (const made of chunks) made.buffer?.destroy();
        throw new WebGpuError('limit', `cxc: weight ${source[outOfRange]} (packed index ${chunk.start + outOfRange}) is outside the f16 range; load with { precision: 'f32' }`);
      }
    }
    chunk.buffer.unmap();
  }
  return { chunks, bindings };
}

/** Compiles every shader, reporting the compiler's own messages on failure, then makes the pipelines. */
async function compilePipelines(device: GPUDevice, program: WebGpuProgram): Promise<GPUComputePipeline[]> {
  const modules = program.shaders.map((shader) => device.createShaderModule({ label: shader.label, code: shader.code }));
  const infos = await Promise.all(modules.map((m) => (typeof m.getCompilationInfo === 'function' ? m.getCompilationInfo() : Promise.resolve(undefined))));
  const describe = (index: number, info: GPUCompilationInfo | undefined, only?: GPUCompilationMessageType) => {
    const lines = program.shaders[index].code.split('\n');
    return (info?.messages ?? [])
      .filter((m) => !only || m.type === only)
      .map((m) => `  ${m.type} at line ${m.lineNum}:${m.linePos}: ${m.message}${lines[m.lineNum - 1] !== undefined ? `\n    | ${lines[m.lineNum - 1].trim()}` : ''}`)
      .join('\n');
  };
  infos.forEach((info, index) => {
    const errors = describe(index, info, 'error');
    if (errors) throw new WebGpuError('shader-compile', `cxc: the WGSL of kernel "${program.shaders[index].label}" did not compile on this device:\n${errors}`);
  });
  return Promise.all(modules.map(async (module, index) => {
    try {
      return await device.createComputePipelineAsync({ label: program.shaders[index].label, layout: 'auto', compute: { module, entryPoint: 'main' } });
    } catch (error) {
      const messages = describe(index, infos[index]);
      throw new WebGpuError(
        'shader-compile',
        `cxc: creating the pipeline of kernel "${program.shaders[index].label}" failed: ${(error as Error)?.message ?? error}${messages ? `\n${messages}` : ''}`,
        { cause: error },
      );
    }
  }));
}
