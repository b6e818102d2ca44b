// Classify an image file with a package built by cxc:
//   node examples/node-classify/classify.mjs out/convnext-tiny-224-wasm photo.jpg
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { decodeImageFile } from '../../dist/compiler/image.js'; // PNG/JPEG -> RGB, exactly as PIL decodes them
import { nodeGpu } from '../../dist/compiler/node-gpu.js'; // WebGPU in Node (npm webgpu; SwiftShader without a GPU)

const [packageDir, imagePath] = process.argv.slice(2);
if (!packageDir || !imagePath) throw new Error('usage: node classify.mjs PACKAGE_DIR IMAGE');
const { load, manifest } = await import(pathToFileURL(resolve(packageDir, 'index.js')).href);
const model = await load(manifest.target === 'webgpu' ? { gpu: await nodeGpu() } : { threads: 2 });
const top = await model.classify(await decodeImageFile(imagePath), { topK: 5 });
for (const { label, score } of top) console.log(`${(score * 100).toFixed(2).padStart(6)}%  ${label}`);
model.dispose();
