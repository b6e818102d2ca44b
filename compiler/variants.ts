/**
 * `cxc build --all-variants DIR`: one npm package per model variant found in a folder of
 * configs. A variant is DIR/NAME/config.json (a Hugging Face model folder: with
 * model.safetensors the package bundles the weights, without it the package is built from
 * the bare config) or DIR/NAME.json (a bare config; NAME.preprocessor_config.json beside it
 * is its preprocessing). The package is named after NAME and the target:
 * convnext-tiny-224-webgpu, written to OUT_ROOT/convnext-tiny-224-webgpu.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { compileModel, packageNameFor, validatePackageName, writePackage, type BuildProgress, type CompiledModule } from './build.js';
import { CxcError } from './errors.js';
import type { TargetName } from './targets.js';
import type { WeightsFileDtype } from '../runtime/types.js';
import { findWeightsFile } from './checkpoint-files.js';

export interface VariantSource {
  /** The variant's name: its folder name, or its file name without .json. */
  name: string;
  /** A model folder or a config.json file, as `cxc build` takes it. */
  input: string;
  /** A preprocessor config beside a bare NAME.json. */
  processor?: string;
  /** Whether the variant comes with its weights (model.safetensors, pytorch_model.bin or a shard index in its folder). */
  hasWeights: boolean;
}

const PROCESSOR_SUFFIX = '.preprocessor_config.json';

/** The variants in `dir`, sorted by name. */
export function findVariants(dir: string): VariantSource[] {
  let entries: string[];
  try {
    if (!statSync(dir).isDirectory()) throw new CxcError('--all-variants needs a folder of configs', { file: dir });
    entries = readdirSync(dir).sort();
  } catch (error) {
    if (error instanceof CxcError) throw error;
    throw new CxcError(`cannot read the configs folder (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: dir });
  }
  const variants: VariantSource[] = [];
  for (const entry of entries) {
    const path = join(dir, entry);
    if (entry.startsWith('.')) continue;
    if (statSync(path).isDirectory()) {
      if (!existsSync(join(path, 'config.json'))) continue;
      variants.push({ name: entry, input: path, hasWeights: findWeightsFile(path) !== undefined });
    } else if (entry.endsWith('.json') && !entry.endsWith(PROCESSOR_SUFFIX) && entry !== 'preprocessor_config.json') {
      const name = entry.slice(0, -'.json'.length);
      const processor = join(dir, `${name}${PROCESSOR_SUFFIX}`);
      variants.push({ name, input: path, processor: existsSync(processor) ? processor : undefined, hasWeights: false });
    }
  }
  if (variants.length === 0) {
    throw new CxcError('no model configs here', { file: dir, hint: 'put one config per variant in it: NAME/config.json (a model folder) or NAME.json' });
  }
  const seen = new Map<string, string>();
  for (const variant of variants) {
    const other = seen.get(variant.name);
    if (other) throw new CxcError(`two configs for the variant ${JSON.stringify(variant.name)}: ${basename(other)} and ${basename(variant.input)}`, { file: dir, hint: 'keep one of them' });
    seen.set(variant.name, variant.input);
  }
  return variants;
}

/**
 * The package name of a variant: derived from its name and the target, or a template with
 * `{name}` standing for that, e.g. "@acme/{name}".
 */
export function variantPackageName(variant: string, target: TargetName, template?: string, weightsDtype?: WeightsFileDtype): string {
  const derived = packageNameFor(variant, target, weightsDtype);
  if (template === undefined) return derived;
  if (!template.includes('{name}')) {
    throw new CxcError(`with --all-variants, --package is a template for every package name and must contain {name}, got ${JSON.stringify(template)}`, {
      hint: "for instance --package '@acme/{name}@1.2.0'",
    });
  }
  const name = template.split('{name}').join(derived);
  validatePackageName(name);
  return name;
}

export interface VariantBuildOptions {
  configsDir: string;
  outRoot: string;
  target: TargetName;
  weightsDtype?: WeightsFileDtype;
  /** Template for package names, `{name}` standing for the derived one (default: the derived name). */
  packageTemplate?: string;
  packageVersion?: string;
  force?: boolean;
  /** Told as each variant starts and as each of its stages starts. */
  onProgress?: (progress: { variant: string; index: number; count: number; stage: Parameters<BuildProgress>[0] | undefined }) => void;
  /** Told as each variant is built or fails, before the next one starts. */
  onResult?: (result: VariantResult, index: number, count: number) => void;
}

export interface VariantResult {
  variant: VariantSource;
  packageName: string;
  outDir: string;
  seconds: number;
  /** Present when it built. */
  compiled?: CompiledModule;
  /** Present when it failed: the user error, one line. */
  error?: CxcError;
}

/**
 * Builds every variant in turn. A variant whose config is wrong is reported in its result and
 * the others still build; anything other than a user error stops the run.
 */
export async function buildAllVariants(options: VariantBuildOptions): Promise<VariantResult[]> {
  const variants = findVariants(options.configsDir);
  // Every name is checked before anything is built: a bad template fails at once.
  const names = variants.map((v) => variantPackageName(v.name, options.target, options.packageTemplate, options.weightsDtype));
  const results: VariantResult[] = [];
  for (const [index, variant] of variants.entries()) {
    const packageName = names[index];
    const outDir = join(options.outRoot, packageName.replace(/^@[^/]+\//, ''));
    const started = performance.now();
    const result: VariantResult = { variant, packageName, outDir, seconds: 0 };
    options.onProgress?.({ variant: variant.name, index, count: variants.length, stage: undefined });
    try {
      result.compiled = await compileModel({
        input: variant.input,
        processor: variant.processor,
        target: options.target,
        weightsDtype: options.weightsDtype,
        packageName,
        packageVersion: options.packageVersion,
        onProgress: (stage) => options.onProgress?.({ variant: variant.name, index, count: variants.length, stage }),
      });
      writePackage(outDir, result.compiled.files, options.force ?? false);
    } catch (error) {
      if (!(error instanceof CxcError)) throw error;
      result.error = error;
      result.compiled = undefined;
    }
    result.seconds = (performance.now() - started) / 1000;
    results.push(result);
    options.onResult?.(result, index, variants.length);
  }
  return results;
}
