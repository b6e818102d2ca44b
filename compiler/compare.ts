/**
 * The golden bar every target must meet: max |out - golden| <= 1e-4 * max(1, max |golden|).
 * Used by `cxc check` and by the tests.
 */
export interface Comparison { maxError: number; tolerance: number; maxGolden: number }

export function compareToGolden(actual: Float32Array, golden: Float32Array): Comparison {
  if (actual.length !== golden.length) return { maxError: Infinity, tolerance: 0, maxGolden: NaN };
  let maxError = 0;
  let maxGolden = 0;
  for (let i = 0; i < golden.length; i++) {
    const error = Math.abs(actual[i] - golden[i]);
    // NaN must fail, not slip through a max()
    if (!(error <= maxError)) maxError = Number.isNaN(error) ? Infinity : error;
    maxGolden = Math.max(maxGolden, Math.abs(golden[i]));
  }
  return { maxError, tolerance: 1e-4 * Math.max(1, maxGolden), maxGolden };
}
