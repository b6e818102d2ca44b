// One process on one WebGPU adapter (Dawn in Node; SwiftShader when no GPU driver is set up):
// cxc's WebGPU module, onnxruntime-web's WebGPU backend and onnxruntime-node's native `webgpu`
// execution provider, same weights, same input, timed in alternation. Prints JSON.
// Usage: node bench/webgpu-engines.mjs --module DIR --onnx FILE --golden FILE --batch B --runs N --engines a,b,c [--driver swiftshader|lavapipe]
// Engines: cxc (f32 kernels as load() picks them), cxc-tiles (f32, the tiled MLP kernel), cxc-f16 (f16 kernels, where the adapter has shader-f16), ort-web, ort-node.
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { goldenInput } from './golden-input.mjs';

const { values } = parseArgs({
  options: {
    batch: { type: 'string', default: '1' },
    runs: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '1' },
    engines: { type: 'string', default: 'cxc,ort-web,ort-node' },
    module: { type: 'string' },
    onnx: { type: 'string' },
    golden: { type: 'string' },
    driver: { type: 'string', default: 'swiftshader' },
  },
});
const batch = Number(values.batch);
const { nodeGpu } = await import('../dist/compiler/node-gpu.js');
// The Vulkan driver is read from the environment at each adapter request: one driver per process,
// for every engine in it (onnxruntime-node's own Dawn included).
const gpu = await nodeGpu({ driver: values.driver });
const adapter = await gpu.requestAdapter();
if (!adapter) throw new Error('no WebGPU adapter (install chromium and libvulkan1 for SwiftShader)');
const adapterInfo = adapter.info ? `${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.description}`.trim() : 'unknown adapter';

const { input, channels, height, width, checkLogits } = await goldenInput(values.golden, batch);

const contenders = [];
for (const engine of values.engines.split(',')) {
  const started = performance.now();
  let run;
  let detail;
  try {
    if (engine === 'cxc' || engine === 'cxc-tiles' || engine === 'cxc-f16') {
      const { load } = await import(pathToFileURL(`${values.module}/index.js`).href);
      // cxc: what load() picks for f32 (the subgroup kernels on CPU adapters that can run them); cxc-tiles: the fused tiled MLP.
      const model = await load({ gpu, precision: engine === 'cxc-f16' ? 'f16' : 'f32', matmul: engine === 'cxc-tiles' ? 'tiles' : 'auto' });
      run = async () => (await model.run(input, { batch, height, width })).logits;
      detail = model.backend;
    } else if (engine === 'ort-web') {
      // onnxruntime-web looks for navigator.gpu; Node has no navigator, so lend it Dawn's.
      Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true });
      const ort = await import('onnxruntime-web/webgpu');
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.wasmPaths = pathToFileURL(fileURLToPath(new URL('../node_modules/onnxruntime-web/dist/', import.meta.url))).href;
      // its WebGPU build fetches a string as a URL: hand it the model's bytes instead
      const session = await ort.InferenceSession.create(new Uint8Array(readFileSync(values.onnx)), { executionProviders: ['webgpu'] });
      const tensor = new ort.Tensor('float32', input, [batch, channels, height, width]);
      run = async () => (await session.run({ pixel_values: tensor })).logits.data;
      detail = 'onnxruntime-web webgpu';
    } else if (engine === 'ort-node') {
      const ort = await import('onnxruntime-node');
      const session = await ort.InferenceSession.create(values.onnx, { executionProviders: ['webgpu'] });
      const tensor = new ort.Tensor('float32', input, [batch, channels, height, width]);
      run = async () => (await session.run({ pixel_values: tensor })).logits.data;
      detail = 'onnxruntime-node webgpu EP';
    } else throw new Error(`unknown engine ${engine}`);
    const first = performance.now();
    // f16 kernels: the f16 goal, 3e-3 x max|golden|; everything else: the float32 bar.
    const maxError = checkLogits(engine, await run(), engine === 'cxc-f16' ? 3e-3 : 1e-4);
    contenders.push({ engine, detail, run, maxError, loadMs: first - started, firstRunMs: performance.now() - first, times: [] });
  } catch (error) {
    contenders.push({ engine, detail: `failed: ${String(error.message ?? error).split('\n')[0]}`, failed: true, times: [] });
  }
}
const live = contenders.filter((c) => !c.failed);
for (let i = 0; i < Number(values.warmup); i++) for (const c of live) await c.run();
for (let i = 0; i < Number(values.runs); i++) {
  for (const c of live) {
    const t0 = performance.now();
    await c.run();
    c.times.push(performance.now() - t0);
  }
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN; };
console.log(JSON.stringify({
  batch, adapter: adapterInfo,
  results: contenders.map((c) => ({ engine: c.engine, detail: c.detail, failed: Boolean(c.failed), medianMs: median(c.times), loadMs: c.loadMs, firstRunMs: c.firstRunMs, maxError: c.maxError })),
}));
process.exit(0);
