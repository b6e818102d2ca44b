#!/usr/bin/env node
// Where a cxc WebGPU run spends its time, kernel by kernel, on one Vulkan driver (Dawn in Node).
// Each dispatch is replayed alone and timed from submit to onSubmittedWorkDone, which works on any
// adapter (SwiftShader and lavapipe both offer 'timestamp-query' too); on a CPU driver a dispatch
// takes milliseconds, so the submit overhead hardly counts.
//   1. load() with its warm-up dispatches recorded but not executed, then each warm-up dispatch
//      replayed alone on the smallest input: on a driver that compiles at first dispatch (lavapipe)
//      that time is the pipeline's compile (run with MESA_SHADER_CACHE_DISABLE=true for cold numbers);
//   2. whole runs on the golden input (logits checked), then every dispatch of one run replayed
//      alone `--repeats` times: median per kernel, summed per shader.
//   node bench/webgpu-kernels.mjs [--driver lavapipe] [--model DIR] [--precision f32|f16] [--matmul auto|tiles|subgroups] [--weights-dtype f32|q8|q4] [--repeats 3] [--runs 3] [--top 25]
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { goldenInput } from './golden-input.mjs';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const { values } = parseArgs({
  options: {
    driver: { type: 'string', default: 'lavapipe' },
    model: { type: 'string', default: here('../../shared/golden/models/convnext-tiny-224') },
    precision: { type: 'string', default: 'f32' },
    // The f32 kernels' pointwise convolutions: auto (subgroups on CPU adapters that can), tiles or subgroups.
    matmul: { type: 'string', default: 'auto' },
    'weights-dtype': { type: 'string', default: 'f32' },
    repeats: { type: 'string', default: '3' },
    runs: { type: 'string', default: '3' },
    top: { type: 'string', default: '25' },
    rebuild: { type: 'boolean', default: false },
    // Dawn toggles, e.g. disable_robustness (create(['enable-dawn-features=...'])).
    'dawn-features': { type: 'string' },
    // Replay only the warm-up dispatches of shaders whose label matches, and stop there (compile-time experiments).
    'compile-only': { type: 'string' },
  },
});
const dtype = values['weights-dtype'];
const moduleDir = here(`../out/profile-${values.model.split('/').filter(Boolean).pop()}-webgpu-${dtype}${values.precision === 'f16' ? '-f16' : ''}`);
if (values.rebuild || !existsSync(`${moduleDir}/index.js`)) {
  const { buildModule } = await import('../dist/compiler/build.js');
  await buildModule({ input: values.model, target: 'webgpu', outDir: moduleDir, force: true, precision: values.precision, weightsDtype: dtype });
}
const { nodeGpu } = await import('../dist/compiler/node-gpu.js');
const { WEIGHTS_DTYPE_BARS } = await import('../dist/compiler/compare.js');
const { SUBGROUP_PROBE_LABEL } = await import('../dist/runtime/webgpu.js');
let gpu = await nodeGpu({ driver: values.driver });
if (values['dawn-features']) gpu = (await import('webgpu')).create([`enable-dawn-features=${values['dawn-features']}`]);
const adapter = await gpu.requestAdapter();
const features = [...adapter.features].sort();
const device = await adapter.requestDevice({
  requiredFeatures: [...(values.precision === 'f16' ? ['shader-f16'] : []), ...(adapter.features.has('subgroups') ? ['subgroups'] : [])],
  requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize },
});

// Every compute pass the backend encodes is recorded: [pipeline, bind group, workgroups] per dispatch.
let recording = null;
let execute = true;
const realEncoder = device.createCommandEncoder.bind(device);
device.createCommandEncoder = (descriptor) => {
  const encoder = realEncoder(descriptor);
  return {
    beginComputePass(d) {
      const pass = encoder.beginComputePass(d);
      const current = {};
      return {
        setPipeline(p) { current.pipeline = p; pass.setPipeline(p); },
        setBindGroup(i, g) { current.bindGroup = g; pass.setBindGroup(i, g); },
        // load()'s subgroup layout probe always runs: its answer decides the program.
        dispatchWorkgroups(...grid) {
          const probe = current.pipeline?.label === SUBGROUP_PROBE_LABEL;
          if (!probe) recording?.push({ ...current, grid });
          if (execute || probe) pass.dispatchWorkgroups(...grid);
        },
        end() { pass.end(); },
      };
    },
    copyBufferToBuffer: (...args) => encoder.copyBufferToBuffer(...args),
    finish: (d) => encoder.finish(d),
  };
};

async function timeAlone(dispatch) {
  const t0 = performance.now();
  const encoder = realEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(dispatch.pipeline);
  pass.setBindGroup(0, dispatch.bindGroup);
  pass.dispatchWorkgroups(...dispatch.grid);
  pass.end();
  device.queue.submit([encoder.finish()]);
  await device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

const { load } = await import(pathToFileURL(`${moduleDir}/index.js`).href);
recording = [];
execute = false;
let t0 = performance.now();
const model = await load({ device, gpu, precision: values.precision, matmul: values.matmul });
const loadWithoutWarmUp = performance.now() - t0;
execute = true;
const warmUp = recording;
recording = null;
// Dawn keeps the labels cxc gives: the pipeline's names its shader, the bind group's its kernel.
const shaderOf = (d) => d.pipeline.label || 'unlabelled pipeline';
console.log(`${values.driver}: ${adapter.info.description || adapter.info.architecture}; features: ${features.join(', ')}`);
console.log(`load() without executing its warm-up: ${loadWithoutWarmUp.toFixed(0)} ms; ${model.backend}`);
t0 = performance.now();
const firstSeen = new Set();
const compiles = [];
const only = values['compile-only'] === undefined ? undefined : new RegExp(values['compile-only']);
for (const d of warmUp) {
  if (only && !only.test(shaderOf(d))) continue;
  const ms = await timeAlone(d);
  if (!firstSeen.has(d.pipeline)) { firstSeen.add(d.pipeline); compiles.push([shaderOf(d), ms]); }
}
console.log(`warm-up dispatches replayed one by one: ${(performance.now() - t0).toFixed(0)} ms; first dispatch per pipeline (compile on lavapipe):`);
for (const [label, ms] of compiles.sort((a, b) => b[1] - a[1])) console.log(`  ${ms.toFixed(0).padStart(7)} ms  ${label}`);

if (only) process.exit(0);
const { input, height, width, checkLogits } = await goldenInput(`${values.model}/golden.safetensors`, 1);
const times = [];
for (let r = 0; r < Number(values.runs); r++) {
  recording = [];
  t0 = performance.now();
  const out = await model.run(input, { batch: 1, height, width });
  times.push(performance.now() - t0);
  // Each weights dtype's declared bar (compiler/compare.ts); f16 kernels: the 3e-3.
  checkLogits('cxc', out.logits, dtype !== 'f32' ? WEIGHTS_DTYPE_BARS[dtype] : values.precision === 'f16' ? 3e-3 : 1e-4);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
console.log(`whole runs: ${times.map((t) => t.toFixed(0)).join(', ')} ms (median ${median(times).toFixed(0)})`);
const run = recording;
recording = null;
const perKernel = run.map(() => []);
for (let r = 0; r < Number(values.repeats); r++) for (const [i, d] of run.entries()) perKernel[i].push(await timeAlone(d));
const medians = perKernel.map(median);
const total = medians.reduce((a, b) => a + b, 0);
const byShader = new Map();
medians.forEach((ms, i) => byShader.set(shaderOf(run[i]), (byShader.get(shaderOf(run[i])) ?? 0) + ms));
console.log(`dispatches replayed alone: ${run.length}, sum of medians ${total.toFixed(0)} ms; per shader:`);
for (const [label, ms] of [...byShader].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
  console.log(`  ${ms.toFixed(1).padStart(8)} ms ${(100 * ms / total).toFixed(1).padStart(5)}%  ${label}`);
}
model.dispose();
device.destroy();
process.exit(0);
