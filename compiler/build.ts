/**
 * The whole compiler, stage by stage:
 *   config.json -> ModelSpec (config.ts) -> checkpoint binding (checkpoint.ts)
 *   -> weight layout + packed weights (layout.ts) -> fused kernel plan (plan.ts)
 *   -> rendered kernels (wasm.ts / webgpu.ts) -> emitted module (emit.ts).
 * compileModel() is pure (files in memory); buildModule() writes them.
 */
import { closeSync, existsSync, openSync, readFileSync, statSync, mkdirSync, readdirSync, writeFileSync, writeSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { countParameters, parseModelConfig, type ModelSpec } from './config.js';
import { CxcError } from './errors.js';
import type { TensorEntry } from './safetensors.js';
import { findWeightsFile, readCheckpointFile } from './checkpoint-files.js';
import { bindCheckpoint, releaseWhenPacked } from './checkpoint.js';
import { layoutWeights, packWeights, type Packing, type WeightLayout } from './layout.js';
import { planModel, type KernelPlan } from './plan.js';
import { defaultProcessorSpec, parseProcessorConfig } from './processor.js';
import { emitModule } from './emit.js';
import { packageJson, packageReadme } from './package-files.js';
import { floatsToHalves } from './half.js';
import { checksum32 } from '../runtime/checksum.js';
import { TARGETS, type TargetName } from './targets.js';
import type { ModelManifest, WeightsFileDtype } from '../runtime/types.js';
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
  tensors?: Map<string, TensorEntry>;
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

/** Reads and validates everything the source names; nothing is compiled yet. */
export function loadModelSource(source: ModelSource): LoadedModel {
  const input = resolve(source.input);
  if (!existsSync(input)) throw new CxcError(`no such file or folder`, { file: source.input });
  const isDir = statSync(input).isDirectory();
  const configPath = isDir ? join(input, 'config.json') : input;
  if (isDir && !existsSync(configPath)) {
    throw new CxcError('no config.json in this folder', { file: source.input, hint: 'point cxc at a Hugging Face model folder or at a config.json' });
  }
  // model.safetensors, else its shard index, else pytorch_model.bin, else its shard index.
  const weightsPath = source.weights ?? (isDir ? findWeightsFile(input) : undefined);
  const tensors = weightsPath ? readCheckpointFile(weightsPath) : undefined;
  const spec = parseModelConfig(readJson(configPath, 'model config'), configPath, { tensorNames: tensors?.keys() });
  const processorPath = source.processor ?? (isDir && existsSync(join(input, 'preprocessor_config.json')) ? join(input, 'preprocessor_config.json') : undefined);
  const preprocess = processorPath ? parseProcessorConfig(readJson(processorPath, 'preprocessor config'), processorPath) : defaultProcessorSpec();
  const baseName = isDir ? basename(input) : basename(dirname(input));
  return { spec, preprocess, tensors, weightsPath, baseName };
}

export interface CompileOptions extends ModelSource {
  target: TargetName;
  /**
   * How weights.bin stores the weights: float32 (default); float16, half the size; or q8/q4, the
   * big matrices as integers + scales that the kernels read as they are (compiler/quantize.ts).
   */
  weightsDtype?: WeightsFileDtype;
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

/**
 * A valid npm package name from free text (a folder or file name): `<name>-<target>`, e.g.
 * convnext-tiny-224-webgpu; a rounded weights dtype is part of the variant: convnext-tiny-224-q8-wasm.
 */
export function packageNameFor(baseName: string, target: TargetName, weightsDtype: WeightsFileDtype = 'f32'): string {
  const cleaned = baseName.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[._-]+|[-_.]+$/g, '') || 'convnext';
  const suffix = weightsDtype === 'f32' ? `-${target}` : `-${weightsDtype}-${target}`;
  return `${cleaned.slice(0, 214 - suffix.length).replace(/[-_.]+$/, '')}${suffix}`;
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
  // From here the bound checkpoint holds every tensor packing needs, and lets each go once packed.
  loaded.tensors?.clear();
  const weightsDtype = options.weightsDtype ?? 'f32';
  const packing = packingFor(target.packing, weightsDtype);
  const packed = checkpoint ? packWeights(spec, packing, checkpoint, releaseWhenPacked(checkpoint)) : undefined;
  const layout = packed?.layout ?? layoutWeights(spec, packing);
  const plan = planModel(spec, layout);
  progress(2);
  if (options.precision === 'f16' && options.target !== 'webgpu') {
    throw new CxcError(`--precision f16 is for --target webgpu (the ${options.target} target computes in f32)`);
  }
  const rendered = await target.render(plan, layout, { precision: options.precision });
  progress(3);

  const name = options.packageName ?? packageNameFor(loaded.baseName, options.target, options.weightsDtype);
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
    label2id: spec.label2id,
    problemType: spec.problemType,
    outFeatures: spec.outFeatures,
    preprocess: loaded.preprocess,
    minInputSize: plan.minInputSize,
    levels: plan.levels,
    steps: plan.steps,
    weights: { file: 'weights.bin', dtype: weightsDtype, floats: layout.floats, checksum: weightsFile ? checksum32(weightsFile) : null },
  };
  const assetNames = Object.fromEntries(Object.keys(rendered.assets).map((key) => [key, rendered.assets[key].file]));
  const emitted = emitModule({ manifest, program: rendered.program, assets: assetNames, version: options.packageVersion ?? '1.0.0' });
  const files = new Map<string, string | Uint8Array>(emitted);
  for (const asset of Object.values(rendered.assets)) files.set(asset.file, asset.data);
  if (weightsFile) files.set('weights.bin', weightsFile);
  files.set('package.json', `${JSON.stringify(packageJson(manifest, options.packageVersion ?? '1.0.0', [...files.keys()]), null, 2)}\n`);
  files.set('README.md', packageReadme(manifest, Boolean(packed), packed?.quantization));
  return { manifest, plan, layout, files };
}

/** A target's packing for a weights file dtype: q8/q4 quantize in the layout; f16 only rounds the file. */
export function packingFor(packing: Packing, dtype: WeightsFileDtype): Packing {
  return { ...packing, dtype: dtype === 'q8' || dtype === 'q4' ? dtype : 'f32' };
}

/** The bytes of weights.bin: the packed weights as they are (f32, q8, q4), or float32 rounded to float16. */
export function weightsFileBytes(data: Float32Array, dtype: WeightsFileDtype, source: string): Uint8Array {
  if (dtype !== 'f16') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
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
    writeFileInChunks(target, contents);
  }
}

/** Node refuses single writes past 2 GiB: large weights files are written a chunk at a time. */
export function writeFileInChunks(path: string, contents: string | Uint8Array): void {
  if (typeof contents === 'string' || contents.byteLength <= WRITE_CHUNK_BYTES) {
    writeFileSync(path, contents);
    return;
  }
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < contents.byteLength; ) at += writeSync(fd, contents, at, Math.min(WRITE_CHUNK_BYTES, contents.byteLength - at));
  } finally {
    closeSync(fd);
  }
}

const WRITE_CHUNK_BYTES = 64 * 2 ** 20;

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
