/**
 * The whole compiler, stage by stage:
 *   config.json -> ModelSpec (config.ts) -> checkpoint binding (checkpoint.ts)
 *   -> weight layout + packed weights (layout.ts) -> fused kernel plan (plan.ts)
 *   -> rendered kernels (wasm.ts / webgpu.ts) -> emitted module (emit.ts).
 * compileModel() is pure (files in memory); buildModule() writes them.
 */
import { existsSync, readFileSync, statSync, mkdirSync, readdirSync, writeFileSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { countParameters, parseModelConfig, type ModelSpec } from './config.js';
import { CxcError } from './errors.js';
import { readSafetensors } from './safetensors.js';
import { bindCheckpoint } from './checkpoint.js';
import { layoutWeights, packWeights, type WeightLayout } from './layout.js';
import { planModel, type KernelPlan } from './plan.js';
import { defaultProcessorSpec, parseProcessorConfig } from './processor.js';
import { emitModule } from './emit.js';
import { floatsToHalves } from './half.js';
import { checksum32 } from '../runtime/checksum.js';
import { TARGETS, type TargetName } from './targets.js';
import type { ModelManifest } from '../runtime/types.js';
import type { PreprocessSpec } from '../runtime/preprocess.js';

export interface ModelSource {
  /** A checkpoint folder (config.json, model.safetensors, preprocessor_config.json) or a bare config.json. */
  input: string;
  /** Weights given separately (a safetensors file). */
  weights?: string;
  /** A preprocessor_config.json given separately. */
  processor?: string;
}

export interface LoadedModel {
  spec: ModelSpec;
  preprocess: PreprocessSpec;
  /** Checkpoint tensors, absent for a bare config. */
  tensors?: ReturnType<typeof readSafetensors>;
  weightsPath?: string;
  /** A short name for the variant, from the folder or file name. */
  baseName: string;
}

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new CxcError(`cannot read the ${what} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: path });
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new CxcError(`the ${what} is not valid JSON: ${(error as Error).message}`, { file: path });
  }
}

function readBytes(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path));
  } catch (error) {
    throw new CxcError(`cannot read the ${what} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: path });
  }
}

/** Reads and validates everything the source names; nothing is compiled yet. */
export function loadModelSource(source: ModelSource): LoadedModel {
  const input = resolve(source.input);
  if (!existsSync(input)) throw new CxcError(`no such file or folder`, { file: source.input });
  const isDir = statSync(input).isDirectory();
  const configPath = isDir ? join(input, 'config.json') : input;
  if (isDir && !existsSync(configPath)) {
    throw new CxcError('no config.json in this folder', { file: source.input, hint: 'point cxc at a Hugging Face model folder or at a config.json' });
  }
  const weightsPath = source.weights ?? (isDir && existsSync(join(input, 'model.safetensors')) ? join(input, 'model.safetensors') : undefined);
  if (isDir && !weightsPath && existsSync(join(input, 'pytorch_model.bin'))) {
    throw new CxcError('this folder has pytorch_model.bin but no model.safetensors', {
      file: source.input,
      hint: 'convert it once in Python: model.save_pretrained(dir, safe_serialization=True)',
    });
  }
  const tensors = weightsPath ? readSafetensors(readBytes(weightsPath, 'weights'), weightsPath) : undefined;
  const spec = parseModelConfig(readJson(configPath, 'model config'), configPath, { tensorNames: tensors?.keys() });
  const processorPath = source.processor ?? (isDir && existsSync(join(input, 'preprocessor_config.json')) ? join(input, 'preprocessor_config.json') : undefined);
  const preprocess = processorPath ? parseProcessorConfig(readJson(processorPath, 'preprocessor config'), processorPath) : defaultProcessorSpec();
  const baseName = isDir ? basename(input) : basename(dirname(input));
  return { spec, preprocess, tensors, weightsPath, baseName };
}

export interface CompileOptions extends ModelSource {
  target: TargetName;
  /** How weights.bin stores the weights: float32 (default) or float16, half the size. */
  weightsDtype?: 'f32' | 'f16';
  /** WebGPU compute precision: 'f16' also ships f16 kernels, run where the adapter has shader-f16 (default 'f32'). */
  precision?: 'f32' | 'f16';
  /** npm package name of the output (default: derived from the folder name and target). */
  packageName?: string;
  packageVersion?: string;
  /** Told as each stage starts (for a progress bar); compiling does not depend on it. */
  onProgress?: BuildProgress;
}

/** The stages compileModel reports, in order. */
export const BUILD_STAGES = ['reading the checkpoint', 'packing weights', 'rendering kernels', 'emitting the module'] as const;
export type BuildProgress = (progress: { stage: (typeof BUILD_STAGES)[number]; step: number; steps: number }) => void;

export interface CompiledModule {
  manifest: ModelManifest;
  plan: KernelPlan;
  layout: WeightLayout;
  /** Files of the output package, by path inside it. */
  files: Map<string, string | Uint8Array>;
}

/** A valid npm package name from free text (a folder or file name): `<name>-<target>`, e.g. convnext-tiny-224-webgpu. */
export function packageNameFor(baseName: string, target: TargetName): string {
  const cleaned = baseName.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[._-]+|[-_.]+$/g, '') || 'convnext';
  return `${cleaned.slice(0, 213 - target.length).replace(/[-_.]+$/, '')}-${target}`;
}

export async function compileModel(options: CompileOptions): Promise<CompiledModule> {
  const progress = (step: number) => options.onProgress?.({ stage: BUILD_STAGES[step], step, steps: BUILD_STAGES.length });
  progress(0);
  const loaded = loadModelSource(options);
  const { spec } = loaded;
  const target = TARGETS[options.target];
  if (!target) throw new CxcError(`unknown target ${JSON.stringify(options.target)}: use wasm or webgpu`);

  progress(1);
  const checkpoint = loaded.tensors ? bindCheckpoint(spec, loaded.tensors, loaded.weightsPath!) : undefined;
  const packed = checkpoint ? packWeights(spec, target.packing, checkpoint) : undefined;
  const layout = packed?.layout ?? layoutWeights(spec, target.packing);
  const plan = planModel(spec, layout);
  progress(2);
  if (options.precision === 'f16' && options.target !== 'webgpu') {
    throw new CxcError(`--precision f16 is for --target webgpu (the ${options.target} target computes in f32)`);
  }
  const rendered = await target.render(plan, layout, { precision: options.precision });
  progress(3);

  const name = options.packageName ?? packageNameFor(loaded.baseName, options.target);
  const weightsDtype = options.weightsDtype ?? 'f32';
  const weightsFile = packed ? weightsFileBytes(packed.data, weightsDtype, loaded.weightsPath!) : undefined;
  const manifest: ModelManifest = {
    name,
    target: options.target,
    architecture: spec.architecture,
    parameters: countParameters(spec),
    modelType: spec.modelType,
    head: spec.head,
    numChannels: spec.numChannels,
    patchSize: spec.patchSize,
    hiddenSizes: spec.hiddenSizes,
    depths: spec.depths,
    hiddenAct: spec.hiddenAct,
    layerNormEps: spec.layerNormEps,
    imageSize: spec.imageSize,
    numLabels: spec.numLabels,
    labels: spec.labels,
    outFeatures: spec.outFeatures,
    preprocess: loaded.preprocess,
    minInputSize: plan.minInputSize,
    levels: plan.levels,
    steps: plan.steps,
    weights: { file: 'weights.bin', dtype: weightsDtype, floats: layout.floats, checksum: weightsFile ? checksum32(weightsFile) : null },
  };
  const assetNames = Object.fromEntries(Object.keys(rendered.assets).map((key) => [key, rendered.assets[key].file]));
  const emitted = emitModule({ manifest, program: rendered.program, assets: assetNames });
  const files = new Map<string, string | Uint8Array>(emitted);
  for (const asset of Object.values(rendered.assets)) files.set(asset.file, asset.data);
  if (weightsFile) files.set('weights.bin', weightsFile);
  files.set('package.json', `${JSON.stringify(packageJson(manifest, options.packageVersion ?? '1.0.0', [...files.keys()]), null, 2)}\n`);
  files.set('README.md', packageReadme(manifest, Boolean(packed)));
  return { manifest, plan, layout, files };
}

/** The bytes of weights.bin: the packed float32 weights, or the same rounded to float16. */
export function weightsFileBytes(data: Float32Array, dtype: 'f32' | 'f16', source: string): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const halves = floatsToHalves(data, source);
  return new Uint8Array(halves.buffer, halves.byteOffset, halves.byteLength);
}

/** Marks an output folder as cxc's own, so a rebuild may replace it. */
const MARKER = '.cxc-build';

export async function buildModule(options: CompileOptions & { outDir: string; force?: boolean }): Promise<CompiledModule> {
  const compiled = await compileModel(options);
  writePackage(options.outDir, compiled.files, options.force ?? false);
  return compiled;
}

export function writePackage(outDir: string, files: Map<string, string | Uint8Array>, force: boolean): void {
  const root = resolve(outDir);
  if (existsSync(root)) {
    if (!statSync(root).isDirectory()) throw new CxcError('the output path exists and is not a folder', { file: outDir });
    const entries = readdirSync(root);
    if (entries.length > 0 && !entries.includes(MARKER) && !force) {
      throw new CxcError('the output folder is not empty and was not made by cxc', { file: outDir, hint: 'choose an empty folder, or pass --force to replace its contents' });
    }
    // A rebuild replaces the package whole: stale files from another target must not linger.
    for (const entry of entries) rmSync(join(root, entry), { recursive: true, force: true });
  }
  mkdirSync(root, { recursive: true });
  writeFileSync(join(root, MARKER), 'This folder was generated by cxc; `cxc build` may replace it.\n');
  for (const [path, contents] of [...files.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    const target = resolve(root, path);
    if (!target.startsWith(root + '/')) throw new Error(`internal: refusing to write ${path} outside ${outDir}`);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, contents);
  }
}

// ---------------------------------------------------------------------------------------
// The output package: package.json and a README written for this variant
// ---------------------------------------------------------------------------------------

/** npm's rules for a package name (lowercase, URL-safe, at most 214 characters, optional @scope/). */
const PACKAGE_NAME = /^(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/;
/** A semantic version, as npm accepts it. */
const PACKAGE_VERSION = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/;

/** Throws a one-line user error unless npm would accept `name` as a package name. */
export function validatePackageName(name: string): void {
  if (name.length > 214 || !PACKAGE_NAME.test(name)) {
    throw new CxcError(`${JSON.stringify(name)} is not a valid npm package name`, {
      hint: 'use lowercase letters, digits and - . _ ~, optionally under a scope: --package @acme/convnext-tiny@1.0.0',
    });
  }
}

/** Throws a one-line user error unless `version` is a semantic version. */
export function validatePackageVersion(version: string): void {
  if (!PACKAGE_VERSION.test(version)) {
    throw new CxcError(`${JSON.stringify(version)} is not a valid package version`, { hint: 'use a semantic version such as 1.0.0 or 2.1.0-beta.1' });
  }
}


function packageJson(manifest: ModelManifest, version: string, files: string[]) {
  const variant = manifest.modelType === 'convnextv2' ? 'ConvNeXt V2' : 'ConvNeXt';
  return {
    name: manifest.name,
    version,
    description:
      `${variant} ${describeHead(manifest)} (${manifest.hiddenSizes.join('/')} channels, depths ${manifest.depths.join('/')}, ${manifest.imageSize}px) ` +
      `compiled by cxc for ${manifest.target === 'wasm' ? 'WebAssembly SIMD' : 'WebGPU'}`,
    type: 'module',
    main: './index.js',
    types: './index.d.ts',
    exports: { '.': { types: './index.d.ts', import: './index.js' }, './package.json': './package.json' },
    // Every file by name, but not the TypeScript sources: next to a .d.ts, a .ts file is what a TypeScript
    // consumer's compiler would pick and type-check as its own code.
    files: files.filter((f) => f !== 'package.json' && !(f.endsWith('.ts') && !f.endsWith('.d.ts'))).sort(),
    sideEffects: false,
    keywords: ['convnext', ...(manifest.modelType === 'convnextv2' ? ['convnextv2'] : []), manifest.head === 'classification' ? 'image-classification' : 'image-features', manifest.target, 'cxc'],
  };
}

function describeHead(manifest: ModelManifest): string {
  if (manifest.head === 'classification') return `image classifier, ${manifest.numLabels} labels`;
  if (manifest.head === 'backbone') return `backbone (feature maps ${manifest.outFeatures.join(', ')})`;
  return 'feature extractor (no classifier)';
}

const RESAMPLE_NAMES = ['nearest', 'Lanczos', 'bilinear', 'bicubic', 'box', 'Hamming'];

/** What the preprocessing does to an image, in words. */
function describePreprocessing(manifest: ModelManifest): string[] {
  const p = manifest.preprocess;
  const resample = RESAMPLE_NAMES[p.resample] ?? `resample ${p.resample}`;
  const steps: string[] = [];
  if (!p.doResize) steps.push('no resizing: the image runs at its own size');
  else if (p.shortestEdge >= 384) steps.push(`resize to ${p.shortestEdge}x${p.shortestEdge} (${resample}, aspect ratio not kept, no crop)`);
  else {
    const short = Math.trunc(p.shortestEdge / p.cropPct);
    steps.push(`resize the short side to ${short} px (${p.shortestEdge} / crop_pct ${round(p.cropPct)}, ${resample}), center-crop ${p.shortestEdge}x${p.shortestEdge}`);
  }
  if (p.doRescale) steps.push(`scale to [0, 1] (x ${round(p.rescaleFactor)})`);
  if (p.doNormalize) steps.push(`normalize with mean [${p.mean.map(round).join(', ')}] and std [${p.std.map(round).join(', ')}]`);
  return steps;
}

const round = (v: number) => String(Number(v.toPrecision(6)));

/** Markdown-safe text from a label (labels come from the checkpoint: any text at all). */
function markdownText(text: string, max = 40): string {
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  const short = flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
  return short.replace(/[\\`*_{}[\]()<>#+!|~-]/g, (c) => `\\${c}`);
}

function formatBytes(bytes: number): string {
  return bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

function formatCount(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
}

export function packageReadme(manifest: ModelManifest, bundledWeights: boolean): string {
  const { name, target } = manifest;
  const wasm = target === 'wasm';
  const variant = manifest.modelType === 'convnextv2' ? 'ConvNeXt V2' : 'ConvNeXt';
  const weightBytes = manifest.weights.floats * (manifest.weights.dtype === 'f16' ? 2 : 4);
  const classifier = manifest.head === 'classification' && manifest.numLabels > 0;
  const sibling = name.endsWith(`-${target}`) ? `${name.slice(0, -target.length)}${wasm ? 'webgpu' : 'wasm'}` : undefined;
  const numbered = manifest.labels.every((label, i) => label === `LABEL_${i}`);
  const labelLine = !classifier
    ? describeHead(manifest)
    : numbered
      ? `${manifest.numLabels} (named LABEL_0 … LABEL_${manifest.numLabels - 1}: the config has no id2label)`
      : `${manifest.numLabels}: ${manifest.labels.slice(0, 5).map((l) => markdownText(l)).join(', ')}${manifest.numLabels > 5 ? ', …' : ''} (all of them in \`manifest.labels\`)`;
  const loadCall = (extra: string[]) => {
    const options = [...(bundledWeights ? [] : ["weights: 'weights.bin'"]), ...extra];
    return options.length ? `await load({ ${options.join(', ')} })` : 'await load()';
  };
  const nodeLoad = wasm ? loadCall(['threads: 4']) : loadCall(['gpu: create([])']);
  const browserLoad = wasm ? loadCall(['threads: crossOriginIsolated ? navigator.hardwareConcurrency : 1', 'onProgress']) : loadCall(['onProgress']);
  const use = classifier
    ? ['const top5 = await model.classify(image, { topK: 5 });   // [{ label, score, index }, ...]']
    : ['const { pixelValues, height, width } = model.preprocess(image);', 'const out = await model.run(pixelValues, { batch: 1, height, width });'];

  return [
    `# ${name}`,
    '',
    `${variant} (${manifest.architecture}) compiled by [cxc](https://www.npmjs.com/package/cxc) for ` +
      `${wasm ? 'the CPU: WebAssembly SIMD128, with relaxed-SIMD FMA and worker threads where the engine has them' : 'the GPU: WebGPU compute shaders'}. ` +
      'One self-contained ES module with no dependencies: it runs in browsers and in Node 20+.' +
      (sibling ? ` The same model for the ${wasm ? 'GPU' : 'CPU'} is \`${sibling}\`.` : ''),
    '',
    '| | |',
    '| --- | --- |',
    `| model | ${variant}, channels ${manifest.hiddenSizes.join(' / ')}, depths ${manifest.depths.join(' / ')}, ${manifest.hiddenAct} |`,
    `| parameters | ${formatCount(manifest.parameters)} |`,
    `| ${classifier ? 'labels' : 'output'} | ${labelLine} |`,
    `| input size | ${manifest.imageSize}x${manifest.imageSize} RGB (config \`image_size\`); any size from ${manifest.minInputSize}x${manifest.minInputSize} runs |`,
    `| preprocessing | ${describePreprocessing(manifest).join('; ')}: transformers' \`ConvNextImageProcessor\`, pixel for pixel |`,
    `| weights | ${bundledWeights ? `\`weights.bin\`, ${formatBytes(weightBytes)} (${manifest.weights.dtype === 'f16' ? 'float16, widened to float32 at load' : 'float32'}), checksum verified at load` : `not bundled (built from a bare config): ${formatBytes(weightBytes)} of ${manifest.weights.dtype === 'f16' ? 'float16' : 'float32'} to bring, see below`} |`,
    `| backend | ${wasm ? 'WebAssembly SIMD128 (Chrome 91+, Firefox 89+, Safari 16.4+, Node 20+)' : 'WebGPU (Chrome and Edge 113+, Safari 26+, Node with the `webgpu` package)'} |`,
    '',
    'Speed depends on your machine: `npx cxc classify <this folder> photo.jpg` prints the time of a run.',
    '',
    '## Node',
    '',
    '```js',
    `import { load } from '${name}';`,
    ...(wasm ? [] : ["import { create, globals } from 'webgpu';          // npm install webgpu (Dawn's bindings)"]),
    "import { readFileSync } from 'node:fs';",
    "import { PNG } from 'pngjs';                           // any decoder that gives 8-bit RGB or RGBA pixels",
    '',
    ...(wasm ? [] : ['Object.assign(globalThis, globals);               // GPUBufferUsage and friends, as browsers have them']),
    `const model = ${nodeLoad};`,
    "const png = PNG.sync.read(readFileSync('cat.png'));",
    'const image = { data: png.data, width: png.width, height: png.height, channels: 4 };',
    ...use,
    'model.dispose();',
    '```',
    '',
    '## Browser',
    '',
    '```html',
    '<input type="file" accept="image/*" id="file">',
    '<script type="module">',
    `  import { load } from '${name}';   // with a bundler; without one: './node_modules/${name}/index.js'`,
    `  const onProgress = ({ loaded, total }) => console.log(\`weights \${Math.round((100 * loaded) / total)}%\`);`,
    `  const model = ${browserLoad};`,
    "  document.getElementById('file').onchange = async (event) => {",
    "    const bitmap = await createImageBitmap(event.target.files[0], { colorSpaceConversion: 'none' });",
    '    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);',
    "    const context = canvas.getContext('2d');",
    '    context.drawImage(bitmap, 0, 0);',
    '    const { data, width, height } = context.getImageData(0, 0, bitmap.width, bitmap.height);',
    '    const image = { data, width, height, channels: 4 };',
    ...use.map((line) => `    ${line}`),
    '  };',
    '</script>',
    '```',
    '',
    wasm
      ? '`index.js` fetches `kernels*.wasm` and `weights.bin` from next to itself (`new URL(..., import.meta.url)`, which Vite, webpack 5 and esbuild follow): serve them with it. ' +
        'Threads need a cross-origin isolated page (headers `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`); elsewhere the model runs on one thread and says why in the console.'
      : '`index.js` fetches `weights.bin` from next to itself (`new URL(..., import.meta.url)`, which Vite, webpack 5 and esbuild follow): serve it with it. ' +
        `Where the browser has no WebGPU, \`load()\` throws an error that says why${sibling ? `: fall back to \`${sibling}\`` : ''}. Pass \`load({ device })\` to share a GPUDevice of your own.`,
    '',
    ...(bundledWeights
      ? []
      : [
          '## Weights',
          '',
          'This package was built from a bare config and carries no weights. Pack them from the checkpoint once, with the same target and dtype:',
          '',
          '```sh',
          `npx cxc weights model.safetensors --config config.json --target ${target}${manifest.weights.dtype === 'f16' ? ' --weights-dtype f16' : ''} -o weights.bin`,
          '```',
          '',
          'and pass the file to `load({ weights })`: a path (Node), a URL, or its bytes. A file packed for another config is refused by its size.',
          '',
        ]),
    '## API',
    '',
    '- `load(options?)`: `weights` (path, URL or bytes; default `weights.bin` next to the module), `onProgress({ loaded, total })`, ' +
      (wasm ? '`threads` (default 1), `relaxedSimd` (default true)' : '`gpu` (default `navigator.gpu`), `device`') + '.',
    '- `model.classify(image, { topK })`: softmax scores of the top labels. `image` is `{ data, width, height, channels: 3 | 4 }`, 8-bit, rows top to bottom.',
    "- `model.preprocess(image)` then `model.run(pixelValues, { batch, height, width, outputHiddenStates })`: NCHW float32 in, transformers' outputs out (`logits`, `poolerOutput`, `lastHiddenState`, `hiddenStates`, `featureMaps`, `shapes`).",
    '- `model.backend` says what runs it; `model.config` and `manifest` describe the model; `model.dispose()` frees it.',
    '',
    'Generated by cxc: rebuild rather than edit.',
    '',
  ].join('\n');
}
