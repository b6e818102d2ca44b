/** Reads the golden fixtures in place from ../shared/golden (never copied). */
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readSafetensors, type TensorEntry } from '../../compiler/safetensors.js';
import { compareToGolden, type Comparison } from '../../compiler/compare.js';
import type { ModelOutputs } from '../../runtime/types.js';

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

/** A run's outputs by their golden names (backbone feature maps as backbone.feature_maps.K). */
export function producedOutputs(out: ModelOutputs): Map<string, Float32Array> {
  const produced = new Map<string, Float32Array>();
  if (out.logits) produced.set('logits', out.logits);
  if (out.poolerOutput) produced.set('pooler_output', out.poolerOutput);
  produced.set('last_hidden_state', out.lastHiddenState);
  out.hiddenStates?.forEach((h, k) => produced.set(`hidden_states.${k}`, h));
  out.featureMaps?.forEach((f, k) => produced.set(`backbone.feature_maps.${k}`, f));
  return produced;
}

/**
 * The golden tensors a run is compared with, each beside the run's output of that name (undefined
 * when missing). The backbone's golden file is shared with the classification model: a backbone is
 * compared on its feature maps and hidden states only, a classifier on everything else.
 */
export function goldenPairs(golden: Map<string, TensorEntry>, out: ModelOutputs, isBackbone: boolean): Array<{ key: string; expected: TensorEntry; actual?: Float32Array }> {
  const produced = producedOutputs(out);
  return [...golden]
    .filter(([key]) => key !== 'pixel_values' && (isBackbone === key.startsWith('backbone.') || key.startsWith('hidden_states.')))
    .map(([key, expected]) => ({ key, expected, actual: produced.get(key) }));
}
