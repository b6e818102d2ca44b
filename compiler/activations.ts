/**
 * transformers' ACT2FN activations (those without learned parameters), as one table that both
 * targets render from. Names that compute the same function share a formula; each formula has
 * one template per target, templates/<target>/partials/activations/<formula>.<ext>.hbs, so a
 * formula that a target lacks fails the build loudly instead of rendering nothing.
 */
import type { Activation } from '../runtime/types.js';

export type ActivationFormula =
  | 'erf-gelu' | 'erf-gelu-clipped' | 'tanh-gelu' | 'fast-gelu' | 'quick-gelu' | 'laplace' | 'leaky-relu' | 'identity'
  | 'mish' | 'relu' | 'relu-squared' | 'relu6' | 'sigmoid' | 'silu' | 'tanh';

/** Special functions a formula calls, which a target may have to include. */
export type MathFunction = 'erf' | 'tanh' | 'sigmoid';

interface ActivationEntry { formula: ActivationFormula; uses: MathFunction[] }

/** Every ACT2FN name (the Record type makes a missing one a compile error). */
export const ACTIVATION_TABLE: Record<Activation, ActivationEntry> = {
  gelu: { formula: 'erf-gelu', uses: ['erf'] },
  gelu_python: { formula: 'erf-gelu', uses: ['erf'] },
  gelu_10: { formula: 'erf-gelu-clipped', uses: ['erf'] },
  gelu_new: { formula: 'tanh-gelu', uses: ['tanh'] },
  gelu_pytorch_tanh: { formula: 'tanh-gelu', uses: ['tanh'] },
  gelu_accurate: { formula: 'tanh-gelu', uses: ['tanh'] },
  gelu_fast: { formula: 'fast-gelu', uses: ['tanh'] },
  quick_gelu: { formula: 'quick-gelu', uses: ['sigmoid'] },
  laplace: { formula: 'laplace', uses: ['erf'] },
  leaky_relu: { formula: 'leaky-relu', uses: [] },
  linear: { formula: 'identity', uses: [] },
  mish: { formula: 'mish', uses: ['tanh'] },
  relu: { formula: 'relu', uses: [] },
  relu2: { formula: 'relu-squared', uses: [] },
  relu6: { formula: 'relu6', uses: [] },
  sigmoid: { formula: 'sigmoid', uses: ['sigmoid'] },
  silu: { formula: 'silu', uses: ['sigmoid'] },
  swish: { formula: 'silu', uses: ['sigmoid'] },
  tanh: { formula: 'tanh', uses: ['tanh'] },
};

export function activationEntry(activation: Activation): ActivationEntry {
  const entry = (ACTIVATION_TABLE as Record<string, ActivationEntry | undefined>)[activation];
  if (!entry || !Object.hasOwn(ACTIVATION_TABLE, activation)) throw new Error(`internal: no activation ${JSON.stringify(activation)} in the table`);
  return entry;
}

/** The partial that computes `activation` on `target`, used as {{> (lookup . "activationPartial") x=... y=...}}. */
export function activationPartial(activation: Activation, target: 'wasm' | 'wgsl'): string {
  return `${target}/activations/${activationEntry(activation).formula}`;
}
