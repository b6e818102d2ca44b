/**
 * The contract between the WASM renderer (compiler/wasm.ts) and the WASM backend (wasm.ts),
 * written as data: which arena buffers a run needs and how big they are, and for every plan
 * step the kernel calls with their arguments by role. The backend walks this list and knows
 * no kernel's argument order. This file is copied into generated packages: no imports beyond
 * other runtime files.
 */
import type { Channels } from './types.js';

/** A resolution: a plan level (0 = stem output, s = stage s), or the NCHW input image. */
export type WasmLevel = number | 'input';

/**
 * A buffer of the run's arena, sized when the spatial size is known: per image, the largest of
 * (pixels at level x floats) over its `perPixel` entries, plus `perImage` floats.
 */
export interface WasmBufferSpec {
  name: string;
  perPixel: Array<{ level: WasmLevel; floats: number }>;
  perImage: number;
  /** 'batch': room for every image of the run; 'one': one image, reused image by image. */
  images: 'batch' | 'one';
  /** One copy per thread (tile scratch, partial sums): each thread's argument points at its own. */
  perThread: boolean;
}

/** One kernel argument, by role. */
export type WasmArg =
  /**
   * The address of an arena buffer; inside a step's per-image ops, advanced to the current image
   * by `imageStride` (pixels at `level` x `floats` floats, or just `floats` when level is null).
   */
  | { kind: 'buffer'; buffer: string; imageStride?: { level: WasmLevel | null; floats: number } }
  /** The address of a weight group (its float offset in the weights). */
  | { kind: 'weights'; offset: number }
  | { kind: 'height' | 'width'; level: WasmLevel }
  /** Pixels at a level: of one image, or of the whole batch (pixels numbered across images). */
  | { kind: 'pixels'; level: number; wholeBatch: boolean }
  /** The first of a [start, end) pixel range: 0 here; threads get slices. The next argument is the end. */
  | { kind: 'rangeStart' };

export type WasmOp =
  /** Call an exported kernel; with `split`, its pixel range is divided between the threads. */
  | { op: 'call'; kernel: string; args: WasmArg[]; split: boolean }
  /** Zero a buffer (every thread's copy). */
  | { op: 'clear'; buffer: string }
  /** Add the first `floats` of every other thread's copy of a per-thread buffer into thread 0's. */
  | { op: 'sumThreads'; buffer: string; floats: number }
  /**
   * Output an NHWC buffer (padded channels) as NCHW (real channels): per image, the current image
   * from the buffer's start into its slot of the output; for the whole batch, every image.
   */
  | { op: 'readNchw'; output: string; buffer: string; level: number; channels: Channels }
  /** Output per-image rows of `channels.padded` floats as [batch, channels.real]. */
  | { op: 'readRows'; output: string; buffer: string; channels: Channels };

/** One plan step: its per-image ops run for each image in turn, then its whole-batch ops once. */
export interface WasmStep {
  label: string;
  eachImage: WasmOp[];
  wholeBatch: WasmOp[];
  /** Steps that only produce hidden_states outputs are skipped when they are not asked for. */
  onlyWithHiddenStates: boolean;
}

/** What the compiler decided for the WASM target, baked into the module as data. */
export interface WasmKernelInfo {
  /** Byte address of the weights in linear memory. */
  weightsBase: number;
  buffers: WasmBufferSpec[];
  /** The dispatch list, one entry per plan step. */
  steps: WasmStep[];
}

/** Every kernel the steps call, in first-use order. */
export function kernelNames(info: WasmKernelInfo): string[] {
  const names = new Set<string>();
  for (const step of info.steps) {
    for (const op of [...step.eachImage, ...step.wholeBatch]) if (op.op === 'call') names.add(op.kernel);
  }
  return [...names];
}
