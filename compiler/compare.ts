/**
 * The golden bar every target must meet: max |out - golden| <= 1e-4 * max(1, max |golden|) for
 * float32 weights. Rounded weights are declared looser modes with bars of their own (relative to
 * the same max(1, max |golden|)), measured on the golden models (README, "Quantized packages"):
 * they never replace the float32 check. Used by `cxc check` and by the tests.
 */
import type { WeightsFileDtype } from '../runtime/types.js';

export interface Comparison { maxError: number; tolerance: number; maxGolden: number }

/**
 * Relative bars by weights dtype. f16: rounding every weight to 11 bits. q8: int8 per column costs
 * ConvNeXt-T ~1.2e-2 of max|logits| on the golden (uniform random) weights, whatever the kernels;
 * q4: ~0.15 (4 bits cannot keep these weights' top-5; real checkpoints fare better).
 */
export const WEIGHTS_DTYPE_BARS: Record<WeightsFileDtype, number> = { f32: 1e-4, f16: 1e-2, q8: 3e-2, q4: 0.35 };

export function compareToGolden(actual: Float32Array, golden: Float32Array, dtype: WeightsFileDtype = 'f32'): Comparison {
  if (actual.length !== golden.length) return { maxError: Infinity, tolerance: 0, maxGolden: NaN };
  let maxError = 0;
  let maxGolden = 0;
  for (let i = 0; i < golden.length; i++) {
    const error = Math.abs(actual[i] - golden[i]);
    // NaN must fail, not slip through a max()
    if (!(error <= maxError)) maxError = Number.isNaN(error) ? Infinity : error;
    maxGolden = Math.max(maxGolden, Math.abs(golden[i]));
  }
  return { maxError, tolerance: WEIGHTS_DTYPE_BARS[dtype] * Math.max(1, maxGolden), maxGolden };
}

/** Per image: whether its top 5 classes, in order, are the golden ones. */
export function keptTop5(actual: Float32Array, golden: Float32Array, classes: number): boolean[] {
  const [ours, theirs] = [topK(actual, classes, 5), topK(golden, classes, 5)];
  return ours.map((row, i) => row.join() === theirs[i].join());
}

/** Indices of the k largest values of each row of `rows` x `columns` logits, best first. */
export function topK(logits: Float32Array, columns: number, k: number): number[][] {
  const rows = logits.length / columns;
  return Array.from({ length: rows }, (_, r) => Array.from(logits.subarray(r * columns, (r + 1) * columns).keys())
    .sort((a, b) => logits[r * columns + b] - logits[r * columns + a]).slice(0, k));
}
