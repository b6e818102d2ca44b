/**
 * Child process of test/webgpu-stress.test.ts: loads built WebGPU packages the way the README
 * shows (`load({ gpu: create([]) })`, keeping no reference to the entry point), many times, with a
 * forced full GC between every load and run, and checks each run's logits against the golden.
 * Any use-after-free in the native binding shows here as a crash, an abort or a hang (the parent's
 * watchdog kills it). Run with `node --expose-gc`.
 *
 * argv[2]: JSON { cases: [{ dir, golden, images, loads, runs }] }; the GPU driver comes from
 * VK_ICD_FILENAMES. Prints one JSON line per case: { dir, runs, maxError, tolerance, backend }.
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { create, globals } from 'webgpu';
import { readSafetensors } from '../../dist/compiler/safetensors.js';
import { compareToGolden } from '../../dist/compiler/compare.js';

if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc');
Object.assign(globalThis, globals);

const settle = () => new Promise((resolve) => setTimeout(resolve, 1));

/** Full GC twice with a turn of the event loop between, so finalizers of dropped objects run. */
async function collect() {
  globalThis.gc();
  await settle();
  globalThis.gc();
}

function goldenInput(path, images) {
  const golden = readSafetensors(new Uint8Array(readFileSync(path)), path);
  const pixels = golden.get('pixel_values');
  const [, channels, height, width] = pixels.shape;
  const perImage = channels * height * width;
  const logits = golden.get('logits');
  const classes = logits.shape[1];
  return {
    input: pixels.data.slice(0, images * perImage),
    expected: logits.data.slice(0, images * classes),
    height, width,
  };
}

async function stress({ dir, golden, images, loads, runs }) {
  const { load } = await import(pathToFileURL(`${dir}/index.js`).href);
  const { input, expected, height, width } = goldenInput(golden, images);
  let worst = { maxError: 0, tolerance: Infinity };
  let backend = '';
  for (let l = 0; l < loads; l++) {
    await collect();
    // No reference to the entry point or the adapter stays here: the model must hold them.
    const model = await load({ gpu: create([]) });
    backend = model.backend;
    for (let r = 0; r < runs; r++) {
      await collect();
      const { logits } = await model.run(input, { batch: images, height, width });
      const comparison = compareToGolden(logits, expected);
      if (!(comparison.maxError <= comparison.tolerance)) {
        throw new Error(`${dir} load ${l} run ${r}: logits off by ${comparison.maxError} (bar ${comparison.tolerance})`);
      }
      if (comparison.maxError > worst.maxError) worst = comparison;
    }
    // Every other model is dropped without dispose(): its device must not outlive what it needs.
    if (l % 2 === 0) model.dispose();
  }
  await collect();
  return { dir, runs: loads * runs, maxError: worst.maxError, tolerance: worst.tolerance, backend };
}

const { cases } = JSON.parse(process.argv[2]);
for (const testCase of cases) console.log(JSON.stringify(await stress(testCase)));
