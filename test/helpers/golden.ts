/** Reads the golden fixtures in place from ../shared/golden (never copied). */
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readSafetensors, type TensorEntry } from '../../compiler/safetensors.js';
import { compareToGolden, type Comparison } from '../../compiler/compare.js';

export const GOLDEN_ROOT = fileURLToPath(new URL('../../../shared/golden/', import.meta.url));
export const MODEL_CASES = ['micro', 'small-bf16', 'v2-micro', 'convnext-tiny-224'] as const;

export function goldenPath(...parts: string[]): string {
  return [GOLDEN_ROOT.replace(/\/$/, ''), ...parts].join('/');
}

export function hasGolden(): boolean {
  return existsSync(goldenPath('README.md'));
}

export function readGolden(...parts: string[]): Map<string, TensorEntry> {
  const path = goldenPath(...parts);
  return readSafetensors(new Uint8Array(readFileSync(path)), path);
}

export function floats(tensor: TensorEntry | undefined, name = 'tensor'): Float32Array {
  if (!tensor || !(tensor.data instanceof Float32Array)) throw new Error(`golden ${name} missing or not float`);
  return tensor.data;
}

/** max |a - b| and the golden bar 1e-4 * max(1, max |golden|); throws on a length mismatch. */
export function compare(actual: Float32Array, golden: Float32Array): Comparison {
  if (actual.length !== golden.length) throw new Error(`length ${actual.length} != golden ${golden.length}`);
  return compareToGolden(actual, golden);
}
