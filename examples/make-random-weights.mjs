#!/usr/bin/env node
// Writes RANDOM weights for the bundled ConvNeXt-T config, so the example runs offline.
// They are labelled as random in the file's metadata; the predictions they give mean nothing.
// For real predictions, point cxc at a checkpoint folder from the Hugging Face hub (see README).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { parseModelConfig } from '../dist/compiler/config.js';
import { expectedTensors } from '../dist/compiler/checkpoint.js';
import { writeSafetensors } from '../dist/compiler/safetensors.js';

const dir = new URL('./convnext-tiny-224/', import.meta.url);
const target = new URL('model.safetensors', dir);
if (existsSync(target) && !process.argv.includes('--force')) {
  console.log('examples/convnext-tiny-224/model.safetensors exists (random weights); --force to remake it');
  process.exit(0);
}
const config = JSON.parse(readFileSync(new URL('config.json', dir), 'utf8'));
const spec = parseModelConfig(config, 'examples/convnext-tiny-224/config.json');

// A seeded PRNG (mulberry32) and Box-Muller: the same file on every machine.
let seed = 20261127;
const uniform = () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());

// transformers' ConvNeXt init: weights ~ N(0, initializer_range), biases 0, LayerNorm 1/0, layer scale = init value.
const tensors = expectedTensors(spec).map(({ name, shape }) => {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const isNorm = /layernorm|downsampling_layer\.0|hidden_states_norms/.test(name);
  if (name.endsWith('layer_scale_parameter')) data.fill(config.layer_scale_init_value ?? 1e-6);
  else if (isNorm && name.endsWith('.weight')) data.fill(1);
  else if (name.endsWith('.weight')) for (let i = 0; i < data.length; i++) data[i] = normal() * (config.initializer_range ?? 0.02);
  return [name, { data, shape }];
});
writeFileSync(target, writeSafetensors(tensors, { format: 'pt', cxc: 'RANDOM weights made by examples/make-random-weights.mjs: for demonstration only' }));
console.log(`wrote RANDOM weights for ${spec.architecture} (${tensors.length} tensors) to examples/convnext-tiny-224/model.safetensors`);
