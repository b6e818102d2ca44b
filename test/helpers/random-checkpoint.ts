/** Checkpoints of random, non-trivial weights for any spec: tests of shapes no golden file covers. */
import { bindCheckpoint, expectedTensors, type CheckpointWeights } from '../../compiler/checkpoint.js';
import type { ModelSpec } from '../../compiler/config.js';
import type { TensorEntry } from '../../compiler/safetensors.js';

/** Deterministic uniform numbers in [-1, 1). */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 31 - 1;
  };
}

/** LayerNorm weights near 1, layer scales in [0.1, 1], GRN parameters and biases small but non-zero. */
export function randomCheckpoint(spec: ModelSpec, seed: number): CheckpointWeights {
  const next = random(seed);
  const tensors = new Map<string, TensorEntry>();
  for (const { name, shape } of expectedTensors(spec)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const isNormWeight = /(layernorm|norms?\.[a-z0-9]+|downsampling_layer\.0)\.weight$/.test(name);
    const value = isNormWeight ? () => 1 + 0.3 * next()
      : name.endsWith('layer_scale_parameter') ? () => 0.55 + 0.45 * next()
        : name.includes('grn.') ? () => 0.5 * next()
          : () => next() * (name.endsWith('bias') ? 0.3 : 0.6);
    tensors.set(name, { dtype: 'F32', shape, data: Float32Array.from({ length: count }, value) });
  }
  return bindCheckpoint(spec, tensors, 'synthetic');
}
