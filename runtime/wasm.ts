/**
 * The WASM backend: one linear memory holds the weights (at the offsets baked into
 * the kernels and the dispatch list) and an activation arena laid out per run.
 * The dispatch list is the plan's steps; each step calls the exports the compiler
 * named for it, once per image.
 */
import { levelSizes } from './shapes.js';
import type { Backend, ModelManifest, PlanStep, RawOutputs } from './types.js';

export interface WasmStepKernels {
  kind: 'stem' | 'downsample' | 'block' | 'blockGrn' | 'featureMap' | 'pool' | 'classifier' | 'output';
  /** Export names, in call order. */
  exports: string[];
}

/** What the compiler decided for the WASM target, baked into the module as data. */
export interface WasmKernelInfo {
  /** Byte address of the weights file in linear memory. */
  weightsBase: number;
  /** Per-call tile scratch. */
  scratchBytes: number;
  /** V2: widest hidden row of the GRN intermediate (floats), 0 without GRN. */
  midFloats: number;
  /** Widest padded hidden width (floats): GRN statistics and scales. */
  hiddenFloats: number;
  /** Kernels of each plan step, index-aligned with manifest.steps. */
  steps: WasmStepKernels[];
}

export interface WasmProgram extends WasmKernelInfo {
  simd: Uint8Array;
  relaxed: Uint8Array;
}

export interface WasmBackendOptions {
  /** Use relaxed-SIMD FMA kernels when the engine supports them (default true). */
  relaxedSimd?: boolean;
}

type Kernel = (...args: number[]) => void;

const PAGE = 65536;
const align = (bytes: number) => Math.ceil(bytes / 64) * 64;

export async function createWasmBackend(
  manifest: ModelManifest,
  info: WasmKernelInfo,
  binaries: { simd: Uint8Array; relaxed?: Uint8Array },
  weights: Float32Array,
  options: WasmBackendOptions = {},
): Promise<Backend> {
  if (info.steps.length !== manifest.steps.length) {
    throw new Error(`cxc: WASM dispatch list has ${info.steps.length} entries for ${manifest.steps.length} plan steps (corrupt module)`);
  }
  // Typed arrays over ArrayBufferLike are what file reads return; WebAssembly's typings want ArrayBuffer.
  const simd = binaries.simd as Uint8Array<ArrayBuffer>;
  const relaxed = binaries.relaxed as Uint8Array<ArrayBuffer> | undefined;
  const useRelaxed = options.relaxedSimd !== false && relaxed !== undefined && WebAssembly.validate(relaxed);
  if (!WebAssembly.validate(simd)) {
    throw new Error('cxc: this JavaScript engine has no WebAssembly SIMD128 support (Node >= 16.4, Chrome >= 91, Firefox >= 89, Safari >= 16.4 have it)');
  }
  const module = await WebAssembly.compile(useRelaxed ? relaxed! : simd);
  const weightBytes = weights.byteLength;
  const arenaBase = align(info.weightsBase + weightBytes);
  const memory = new WebAssembly.Memory({ initial: Math.ceil(arenaBase / PAGE) + 1, maximum: 65536 });
  const instance = await WebAssembly.instantiate(module, { env: { memory } });
  new Float32Array(memory.buffer, info.weightsBase, weights.length).set(weights);
  const kernels = instance.exports as Record<string, Kernel>;
  let disposed = false;

  function run(input: Float32Array, batch: number, height: number, width: number, withHiddenStates: boolean): Promise<RawOutputs> {
    if (disposed) return Promise.reject(new Error('cxc: this model was disposed; call load() again'));
    const levels = levelSizes(manifest, height, width);
    // Arena: input, two ping-pong activation buffers, tile scratch, GRN buffers, head outputs.
    const levelImageBytes = levels.map((l, i) => l.height * l.width * manifest.levels[i].padded * 4);
    const activationBytes = align(batch * Math.max(...levelImageBytes));
    const maxPixels = Math.max(...levels.map((l) => l.height * l.width));
    const lastChannels = manifest.levels[levels.length - 1].padded;
    const labelsPadded = Math.ceil(manifest.numLabels / 8) * 8;
    let cursor = arenaBase;
    const take = (bytes: number) => {
      const at = cursor;
      cursor += align(bytes);
      return at;
    };
    const buffers: Record<string, number> = {
      input: take(input.byteLength),
      a: take(activationBytes),
      b: take(activationBytes),
      pooled: take(batch * lastChannels * 4),
      logits: take(batch * labelsPadded * 4),
    };
    const scratch = take(info.scratchBytes);
    const mid = take(maxPixels * info.midFloats * 4);
    const sumsq = take(info.hiddenFloats * 4);
    const scale = take(info.hiddenFloats * 4);
    const featureTemp = take(Math.max(...levelImageBytes));
    const needed = Math.ceil(cursor / PAGE);
    const have = memory.buffer.byteLength / PAGE;
    if (needed > 65536) {
      return Promise.reject(new Error(`cxc: batch ${batch} at ${height}x${width} needs ${(cursor / 2 ** 30).toFixed(1)} GiB, over WebAssembly's 4 GiB; use a smaller batch`));
    }
    if (needed > have) memory.grow(needed - have);
    new Float32Array(memory.buffer, buffers.input, input.length).set(input);

    const outputs: RawOutputs = new Map();
    const weightsAt = (offset: number) => info.weightsBase + offset * 4;
    manifest.steps.forEach((step, index) => {
      const calls = info.steps[index].exports.map((name) => {
        const kernel = kernels[name];
        if (typeof kernel !== 'function') throw new Error(`cxc: WASM module lacks kernel ${name} (corrupt module)`);
        return kernel;
      });
      runStep(step, calls);
    });
    return Promise.resolve(outputs);

    function runStep(step: PlanStep, calls: Kernel[]): void {
      switch (step.op) {
        case 'stem': {
          const { height: h, width: w } = levels[0];
          const imageIn = manifest.numChannels * height * width * 4;
          for (let b = 0; b < batch; b++) {
            calls[0](buffers.input + b * imageIn, buffers[step.dst] + b * levelImageBytes[0], height, width, 0, h * w, weightsAt(step.weights));
          }
          break;
        }
        case 'downsample': {
          const from = levels[step.level - 1];
          const to = levels[step.level];
          for (let b = 0; b < batch; b++) {
            calls[0](buffers[step.src] + b * levelImageBytes[step.level - 1], buffers[step.dst] + b * levelImageBytes[step.level],
              from.height, from.width, 0, to.height * to.width, weightsAt(step.weights), scratch);
          }
          break;
        }
        case 'block': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          for (let b = 0; b < batch; b++) {
            const src = buffers[step.src] + b * stride;
            const dst = buffers[step.dst] + b * stride;
            if (step.grn) {
              new Float32Array(memory.buffer, sumsq, info.hiddenFloats).fill(0);
              calls[0](src, mid, h, w, 0, h * w, weightsAt(step.weights), scratch, sumsq);
              calls[1](sumsq, scale, weightsAt(step.weights));
              calls[2](src, dst, mid, 0, h * w, weightsAt(step.weights), scratch, scale);
            } else {
              calls[0](src, dst, h, w, 0, h * w, weightsAt(step.weights), scratch);
            }
          }
          break;
        }
        case 'output': {
          if (step.onlyWithHiddenStates && !withHiddenStates) break;
          outputs.set(step.name, toNchw(buffers[step.src], step.level, step.channels.real, step.channels.padded));
          break;
        }
        case 'featureMap': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          const data = new Float32Array(batch * step.channels.real * h * w);
          for (let b = 0; b < batch; b++) {
            calls[0](buffers[step.src] + b * stride, featureTemp, h * w, weightsAt(step.weights));
            const image = toNchw(featureTemp, step.level, step.channels.real, step.channels.padded, 1);
            data.set(image.data, b * image.data.length);
          }
          outputs.set(step.name, { data, shape: [batch, step.channels.real, h, w] });
          break;
        }
        case 'pool': {
          const { height: h, width: w } = levels[step.level];
          const stride = levelImageBytes[step.level];
          for (let b = 0; b < batch; b++) {
            calls[0](buffers[step.src] + b * stride, buffers.pooled + b * step.channels.padded * 4, h * w, weightsAt(step.weights));
          }
          outputs.set('pooler_output', rows(buffers.pooled, step.channels.real, step.channels.padded));
          break;
        }
        case 'classifier': {
          for (let b = 0; b < batch; b++) {
            calls[0](buffers.pooled + b * step.in.padded * 4, buffers.logits + b * step.labels.padded * 4, weightsAt(step.weights));
          }
          outputs.set('logits', rows(buffers.logits, step.labels.real, step.labels.padded));
          break;
        }
      }
    }

    /** [batch][real] from rows of `stride` floats. */
    function rows(address: number, real: number, stride: number) {
      const source = new Float32Array(memory.buffer, address, batch * stride);
      const data = new Float32Array(batch * real);
      for (let b = 0; b < batch; b++) data.set(source.subarray(b * stride, b * stride + real), b * real);
      return { data, shape: [batch, real] };
    }

    /** NHWC (padded channels) -> NCHW (real channels). */
    function toNchw(address: number, level: number, real: number, stride: number, images = batch) {
      const { height: h, width: w } = levels[level];
      const pixels = h * w;
      const source = new Float32Array(memory.buffer, address, images * pixels * stride);
      const data = new Float32Array(images * real * pixels);
      for (let b = 0; b < images; b++) {
        for (let p = 0; p < pixels; p++) {
          const from = (b * pixels + p) * stride;
          const to = b * real * pixels + p;
          for (let c = 0; c < real; c++) data[to + c * pixels] = source[from + c];
        }
      }
      return { data, shape: [images, real, h, w] };
    }
  }

  return {
    name: 'wasm',
    description: `WASM ${useRelaxed ? 'relaxed SIMD (FMA)' : 'SIMD128'}, 1 thread`,
    run,
    dispose() {
      disposed = true;
    },
  };
}
