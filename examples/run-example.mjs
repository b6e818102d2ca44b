#!/usr/bin/env node
// The main job on the bundled example: build ConvNeXt-T for the CPU (WASM SIMD), load the
// generated package as a user would, and classify a photo. The weights are RANDOM (made
// offline by make-random-weights.mjs), so the labels it prints are not a real prediction.
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { buildModule } from '../dist/compiler/build.js';
import { decodeImageFile } from '../dist/compiler/image.js';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
execFileSync(process.execPath, [here('./make-random-weights.mjs')], { stdio: 'inherit' });

const outDir = here('../out/convnext-tiny-224-wasm');
let started = performance.now();
const built = await buildModule({ input: here('./convnext-tiny-224'), target: 'wasm', outDir, force: true });
console.log(`built ${built.manifest.name} into out/convnext-tiny-224-wasm in ${((performance.now() - started) / 1000).toFixed(1)} s`);

const { load } = await import(pathToFileURL(`${outDir}/index.js`).href);
started = performance.now();
const model = await load();
console.log(`loaded in ${(performance.now() - started).toFixed(0)} ms (${model.backend})`);

const image = await decodeImageFile(here('./photos/cat.png'));
started = performance.now();
const top = await model.classify(image, { topK: 5 });
console.log(`classified examples/photos/cat.png in ${(performance.now() - started).toFixed(0)} ms — RANDOM weights, so these labels mean nothing:`);
for (const { label, score } of top) console.log(`  ${score.toFixed(4)}  ${label}`);
model.dispose();
