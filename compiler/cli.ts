#!/usr/bin/env node
/**
 * cxc's command line: build, weights, run, preprocess, classify, check, serve.
 * User errors print one line (plus a hint) and exit 1; anything else is a bug and
 * prints its stack. Progress bars go to stderr, and only when it is a terminal.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, Option } from 'commander';
import type { CompiledModule } from './build.js';
import { checksum32 } from '../runtime/checksum.js';
import { bindCheckpoint, releaseWhenPacked } from './checkpoint.js';
import { compareToGolden, keptTop5 } from './compare.js';
import { CxcError } from './errors.js';
import { decodeImageFile } from './image.js';
import { packWeights } from './layout.js';
import { defaultProcessorSpec, parseProcessorConfig } from './processor.js';
import { readSafetensors, writeSafetensors, type TensorToWrite } from './safetensors.js';
import type { TargetName } from './targets.js';
import { preprocess } from '../runtime/preprocess.js';
import { mebibytes, progressBar } from './progress.js';
import { resolveModelArgument } from './hub.js';
import type { ConvNextModel, LoadOptions } from '../runtime/model.js';
import { WEIGHTS_FILE_DTYPES, type WeightsFileDtype } from '../runtime/types.js';

// The compiler (ts-morph, wabt, the kernel templates) takes a second to import: only the
// commands that compile load it, so that run, classify, preprocess and --help start at once.
const compiler = () => import('./build.js');
const targets = () => import('./targets.js');

/** cxc's own package.json, from sources (compiler/) or from dist/compiler/. */
function readVersion(): string {
  for (const relative of ['../package.json', '../../package.json']) {
    try {
      const json = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (json.name === 'cxc' && json.version) return json.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0';
}
const VERSION = readVersion();

const targetOption = () => new Option('-t, --target <target>', 'wasm (CPU, WebAssembly SIMD) or webgpu').choices(['wasm', 'webgpu']).default('wasm');
const weightsDtypeOption = (description: string) => new Option('--weights-dtype <dtype>', description).choices([...WEIGHTS_FILE_DTYPES]).default('f32');

/** Loads a built package (its index.js) with the right GPU entry point for Node. */
async function loadBuilt(dir: string, options: LoadOptions = {}): Promise<ConvNextModel> {
  const entry = resolve(dir, 'index.js');
  let module: { load(options?: LoadOptions): Promise<ConvNextModel>; manifest: { target: string } };
  try {
    module = await import(pathToFileURL(entry).href);
  } catch (error) {
    throw new CxcError(`not a module built by cxc (${(error as Error).message.split('\n')[0]})`, { file: dir, hint: 'build one with `cxc build MODEL_DIR -o OUT`' });
  }
  if (module.manifest?.target === 'webgpu' && !('gpu' in options) && !('device' in options)) {
    const { nodeGpu } = await import('./node-gpu.js');
    options = { ...options, gpu: await nodeGpu() } as LoadOptions;
  }
  const bar = progressBar('loading');
  try {
    return await module.load({
      ...options,
      onProgress: (p) => bar.update(p.total > 0 ? p.loaded / p.total : 0, `${p.what} ${mebibytes(p.loaded)} / ${mebibytes(p.total)} MiB`),
    });
  } finally {
    bar.done();
  }
}

function readInputTensors(path: string) {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(readFileSync(path));
  } catch (error) {
    throw new CxcError(`cannot read the input (${(error as NodeJS.ErrnoException).code})`, { file: path });
  }
  return readSafetensors(bytes, path);
}

function pixelValuesFrom(tensors: ReturnType<typeof readSafetensors>, path: string) {
  const tensor = tensors.get('pixel_values');
  if (!tensor) throw new CxcError(`no "pixel_values" tensor (found: ${[...tensors.keys()].join(', ') || 'none'})`, { file: path });
  if (tensor.shape.length !== 4 || !(tensor.data instanceof Float32Array)) {
    throw new CxcError(`"pixel_values" must be a float tensor [N, C, H, W], got ${tensor.dtype} ${JSON.stringify(tensor.shape)}`, { file: path });
  }
  const [batch, , height, width] = tensor.shape;
  return { data: tensor.data, batch, height, width };
}

/** The outputs of a run as transformers names them, NCHW float32. */
async function runToTensors(model: ConvNextModel, input: ReturnType<typeof pixelValuesFrom>, hiddenStates: boolean) {
  const out = await model.run(input.data, { batch: input.batch, height: input.height, width: input.width, outputHiddenStates: hiddenStates });
  const tensors: Array<[string, TensorToWrite]> = [];
  const add = (name: string, data?: Float32Array) => {
    if (data) tensors.push([name, { data, shape: out.shapes[name] }]);
  };
  add('logits', out.logits);
  add('pooler_output', out.poolerOutput);
  add('last_hidden_state', out.lastHiddenState);
  out.hiddenStates?.forEach((data, k) => add(`hidden_states.${k}`, data));
  out.featureMaps?.forEach((data, k) => add(`feature_maps.${k}`, data));
  return tensors;
}

function printTable(rows: string[][]): void {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const row of rows) console.log(row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  '));
}

const program = new Command();
program.name('cxc').description('The ConvNeXt compiler: a Hugging Face ConvNeXt checkpoint in, a self-contained WASM or WebGPU module out.').version(VERSION);

program
  .command('build')
  .description('compile a model folder (config.json, model.safetensors, preprocessor_config.json) or a bare config.json into an npm package; with --all-variants, one package per config in a folder')
  .argument('[input]', 'Hugging Face model folder, a config.json, or a hub id ORG/NAME[@REVISION] (fetched into the Hugging Face cache)')
  .addOption(targetOption())
  .requiredOption('-o, --out <dir>', 'output folder (becomes an npm package); with --all-variants, the folder that receives one package folder per variant')
  .option('--all-variants <configs>', 'build every variant in a folder: NAME/config.json (model folders, with or without model.safetensors) and NAME.json (bare configs)')
  .option('--weights <file>', 'weights given separately: model.safetensors, pytorch_model.bin or a shard index *.index.json (default: the model folder\'s)')
  .option('--processor <file>', 'preprocessor_config.json given separately (default: the one in the model folder, else 224 crop, bicubic, ImageNet mean/std)')
  .option('--package <name[@version]>', 'npm package name and version (default: <folder>-<target>@1.0.0); with --all-variants a template where {name} is <folder>-<target>, e.g. @acme/{name}@2.0.0')
  .addOption(weightsDtypeOption('how weights.bin stores weights: f32; f16 (half the size, rounded); q8 or q4 (the big matrices as int8 / 4-bit integers with scales, run by integer kernels)'))
  .addOption(new Option('--precision <precision>', 'WebGPU kernels: f32, or f16 (also ships f16 kernels with f32 statistics, run where the adapter has shader-f16)').choices(['f32', 'f16']).default('f32'))
  .option('--force', 'replace a non-empty output folder that cxc did not make', false)
  .action(async (input: string | undefined, options: BuildCommandOptions) => {
    const { BUILD_STAGES, compileModel, packageNameFor, validatePackageName, validatePackageVersion, writePackage } = await compiler();
    const [packageName, packageVersion] = splitPackage(options.package);
    if (packageVersion !== undefined) validatePackageVersion(packageVersion);
    if (options.allVariants !== undefined) {
      if (input !== undefined) throw new CxcError(`give a model to build or --all-variants ${options.allVariants}, not both`);
      if (options.weights || options.processor) throw new CxcError('--weights and --processor name one model: with --all-variants, put model.safetensors and preprocessor_config.json in each variant\'s folder');
      return buildVariantsCommand(options.allVariants, options, packageName, packageVersion);
    }
    if (input === undefined) {
      throw new CxcError('missing the model to build', { hint: 'cxc build MODEL_DIR|config.json -o OUT, or cxc build --all-variants CONFIGS_DIR -o OUT_ROOT' });
    }
    if (packageName !== undefined) validatePackageName(packageName);
    const model = await resolveModelArgument(input);
    const started = performance.now();
    // A hub snapshot folder is named by its commit: the package is named after the repo instead.
    const hubPackageName = model.hub ? packageNameFor(model.hub.repo.split('/')[1], options.target, options.weightsDtype) : undefined;
    const steps = BUILD_STAGES.length + 1;
    const bar = progressBar('building');
    let built: CompiledModule;
    try {
      built = await compileModel({
        input: model.path, target: options.target, weights: options.weights, processor: options.processor, packageName: packageName ?? hubPackageName, packageVersion,
        weightsDtype: options.weightsDtype, precision: options.precision, onProgress: ({ stage, step }) => bar.update(step / steps, stage),
      });
      bar.update(BUILD_STAGES.length / steps, 'writing the package');
      writePackage(options.out, built.files, options.force);
      bar.update(1, 'done');
    } finally {
      bar.done();
    }
    const weights = built.files.get('weights.bin');
    console.log(
      `built ${built.manifest.name} (${built.manifest.architecture}, ${options.target}${model.hub ? `, ${model.hub.repo} at ${model.hub.commit.slice(0, 12)}` : ''}) in ${options.out}: ` +
        `${built.plan.steps.length} plan steps, weights ${weights ? `${(weights.length / 2 ** 20).toFixed(1)} MiB` : 'not bundled (bare config)'}, ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
  });

interface BuildCommandOptions {
  target: TargetName;
  out: string;
  allVariants?: string;
  weights?: string;
  processor?: string;
  package?: string;
  force: boolean;
  weightsDtype: WeightsFileDtype;
  precision: 'f32' | 'f16';
}

/** `cxc build --all-variants DIR -o ROOT`: a line per package as it is built, failures at the end; exit 1 if any failed. */
async function buildVariantsCommand(configsDir: string, options: BuildCommandOptions, packageTemplate?: string, packageVersion?: string): Promise<void> {
  const { BUILD_STAGES } = await compiler();
  const { buildAllVariants } = await import('./variants.js');
  const started = performance.now();
  const bar = progressBar('building');
  const stageSteps = BUILD_STAGES.length + 1;
  let results;
  try {
    results = await buildAllVariants({
      configsDir, outRoot: options.out, target: options.target, weightsDtype: options.weightsDtype, packageTemplate, packageVersion, force: options.force,
      onProgress: ({ variant, index, count, stage }) => {
        const within = stage ? stage.step / stageSteps : 0;
        bar.update((index + within) / count, `${index + 1}/${count} ${variant}${stage ? `: ${stage.stage}` : ''}`);
      },
      onResult: (result) => {
        bar.done();
        if (result.compiled) {
          const { manifest, files } = result.compiled;
          const weights = files.get('weights.bin');
          console.log(
            `built ${manifest.name} in ${result.outDir}: ${manifest.hiddenSizes.join('/')} x ${manifest.depths.join('/')}, ${manifest.imageSize}px, ` +
              `weights ${weights ? `${(weights.length / 2 ** 20).toFixed(1)} MiB` : 'not bundled (bare config)'}, ${result.seconds.toFixed(1)} s`,
          );
        } else {
          console.log(`FAILED ${result.packageName}: ${result.error!.message}`);
        }
      },
    });
  } finally {
    bar.done();
  }
  const failed = results.filter((r) => r.error);
  console.log(`${results.length - failed.length} of ${results.length} packages built in ${options.out} (${options.target}), ${((performance.now() - started) / 1000).toFixed(1)} s`);
  if (failed.length > 0) {
    for (const result of failed) {
      console.error(`cxc: ${result.error!.message}`);
      if (result.error!.hint) console.error(`hint: ${result.error!.hint}`);
    }
    process.exitCode = 1;
  }
}

program
  .command('weights')
  .description('pack a checkpoint into the weights file a module built from the bare config loads')
  .argument('<safetensors>', 'model.safetensors, pytorch_model.bin or a shard index (*.index.json)')
  .requiredOption('--config <file>', 'the config.json the module was built from')
  .addOption(targetOption())
  .addOption(weightsDtypeOption('f32, f16, q8 or q4 (the module must have been built with the same)'))
  .requiredOption('-o, --out <file>', 'weights file to write')
  .action(async (weightsPath: string, options: { config: string; target: TargetName; out: string; weightsDtype: WeightsFileDtype }) => {
    const { loadModelSource, packingFor, weightsFileBytes, writeFileInChunks } = await compiler();
    const { TARGETS } = await targets();
    const loaded = loadModelSource({ input: options.config, weights: weightsPath });
    const checkpoint = bindCheckpoint(loaded.spec, loaded.tensors!, weightsPath);
    loaded.tensors!.clear();
    const packed = packWeights(loaded.spec, packingFor(TARGETS[options.target].packing, options.weightsDtype), checkpoint, releaseWhenPacked(checkpoint));
    const bytes = weightsFileBytes(packed.data, options.weightsDtype, weightsPath);
    writeFileInChunks(options.out, bytes);
    console.log(`wrote ${options.out}: ${(bytes.byteLength / 2 ** 20).toFixed(1)} MiB (${options.weightsDtype}), checksum ${checksum32(bytes).toString(16)}`);
  });

program
  .command('run')
  .description('run a built module on pixel_values [N,C,H,W] from a safetensors file; writes transformers-named outputs')
  .argument('<module>', 'folder made by cxc build')
  .requiredOption('--input <file>', 'safetensors with pixel_values')
  .requiredOption('--output <file>', 'safetensors to write')
  .option('--output-hidden-states', 'also write hidden_states.K', false)
  .option('--weights <file>', 'weights file (for modules built from a bare config)')
  .option('--json', 'print a JSON summary', false)
  .action(async (dir: string, options: { input: string; output: string; outputHiddenStates: boolean; weights?: string; json: boolean }) => {
    const input = pixelValuesFrom(readInputTensors(options.input), options.input);
    const model = await loadBuilt(dir, { weights: options.weights });
    try {
      const started = performance.now();
      const tensors = await runToTensors(model, input, options.outputHiddenStates);
      const ms = performance.now() - started;
      writeFileSync(options.output, writeSafetensors(tensors));
      const summary = { output: options.output, backend: model.backend, ms, tensors: Object.fromEntries(tensors.map(([n, t]) => [n, t.shape])) };
      if (options.json) console.log(JSON.stringify(summary));
      else console.log(`wrote ${tensors.map(([n, t]) => `${n} ${JSON.stringify(t.shape)}`).join(', ')} to ${options.output} (${model.backend}, ${ms.toFixed(0)} ms)`);
    } finally {
      model.dispose();
    }
  });

program
  .command('preprocess')
  .description("decode a PNG or JPEG and preprocess it as transformers' ConvNextImageProcessor does")
  .argument('<image>', 'PNG or JPEG file')
  .option('--processor <file>', 'preprocessor_config.json (default: 224 crop, bicubic, ImageNet mean/std)')
  .requiredOption('--output <file>', 'safetensors to write (pixel_values [1,3,H,W])')
  .action(async (imagePath: string, options: { processor?: string; output: string }) => {
    const spec = options.processor ? parseProcessorConfig(JSON.parse(readFileSync(options.processor, 'utf8')), options.processor) : defaultProcessorSpec();
    const image = await decodeImageFile(imagePath);
    const { pixelValues, height, width } = preprocess(image, spec);
    writeFileSync(options.output, writeSafetensors([['pixel_values', { data: pixelValues, shape: [1, 3, height, width] }]]));
    console.log(`wrote pixel_values [1, 3, ${height}, ${width}] to ${options.output}`);
  });

program
  .command('classify')
  .description('classify an image with a built module: top-k labels with softmax scores')
  .argument('<module>', 'folder made by cxc build')
  .argument('<image>', 'PNG or JPEG file')
  .option('-k, --top-k <k>', 'how many labels', (v) => parseInteger(v, '--top-k'), 5)
  .option('--weights <file>', 'weights file (for modules built from a bare config)')
  .option('--json', 'print JSON', false)
  .action(async (dir: string, imagePath: string, options: { topK: number; weights?: string; json: boolean }) => {
    const image = await decodeImageFile(imagePath);
    const model = await loadBuilt(dir, { weights: options.weights });
    try {
      const started = performance.now();
      const top = await model.classify(image, { topK: options.topK });
      const ms = performance.now() - started;
      if (options.json) {
        console.log(JSON.stringify({ image: imagePath, backend: model.backend, ms, top }));
        return;
      }
      printTable([['label', 'score'], ...top.map((t) => [t.label, t.score.toFixed(4)])]);
      console.log(`(${model.backend}, ${ms.toFixed(0)} ms)`);
    } finally {
      model.dispose();
    }
  });

program
  .command('check')
  .description('build a model folder and check it against golden outputs; exits 1 past tolerance (1e-4 x max(1, max|golden|))')
  .argument('<input>', 'Hugging Face model folder, a config.json, or a hub id ORG/NAME[@REVISION]')
  .addOption(targetOption())
  .option('--golden <files...>', 'safetensors files with pixel_values and expected outputs (default: <input>/golden.safetensors)')
  .option('--weights <file>', 'model.safetensors given separately')
  .addOption(weightsDtypeOption('check the package built with this weights dtype; f16, q8 and q4 have looser bars of their own (see the README), relative to max(1, max|golden|)'))
  .option('--json', 'print JSON', false)
  .action(async (argument: string, options: { target: TargetName; golden?: string[]; weights?: string; weightsDtype: WeightsFileDtype; json: boolean }) => {
    const input = (await resolveModelArgument(argument)).path;
    const goldens = options.golden ?? [join(input, 'golden.safetensors')];
    const { compileModel, writePackage } = await compiler();
    const outDir = mkdtempSync(join(tmpdir(), 'cxc-check-'));
    const rows: Array<{ file: string; output: string; shape: number[]; maxError: number; relativeError: number; tolerance: number; ok: boolean; top5?: string }> = [];
    try {
      const built = await compileModel({ input, target: options.target, weights: options.weights, weightsDtype: options.weightsDtype });
      writePackage(outDir, built.files, true);
      const model = await loadBuilt(outDir);
      try {
        for (const file of goldens) {
          const tensors = readInputTensors(file);
          const outputs = new Map(await runToTensors(model, pixelValuesFrom(tensors, file), true));
          for (const [key, expected] of tensors) {
            if (key === 'pixel_values' || !(expected.data instanceof Float32Array)) continue;
            // Backbone goldens are stored as backbone.feature_maps.K beside the classification ones.
            const isBackboneKey = key.startsWith('backbone.');
            if (isBackboneKey !== (built.manifest.head === 'backbone')) continue;
            const name = isBackboneKey ? key.slice('backbone.'.length) : key;
            const actual = outputs.get(name);
            if (!actual) {
              rows.push({ file, output: name, shape: expected.shape, maxError: Infinity, relativeError: Infinity, tolerance: 0, ok: false });
              continue;
            }
            const { maxError, tolerance, maxGolden } = compareToGolden(actual.data as Float32Array, expected.data, options.weightsDtype);
            // Rounded weights move logits: say whether each image's top-5 classes (in order) survive.
            const kept = name === 'logits' ? keptTop5(actual.data as Float32Array, expected.data, expected.shape[1]) : undefined;
            const top5 = kept && `${kept.filter(Boolean).length}/${kept.length}`;
            rows.push({ file, output: name, shape: expected.shape, maxError, relativeError: maxError / Math.max(1, maxGolden), tolerance, ok: maxError <= tolerance, top5 });
          }
        }
      } finally {
        model.dispose();
      }
    } finally {
      rmSync(outDir, { recursive: true, force: true });
    }
    const failed = rows.filter((r) => !r.ok).length;
    if (options.json) {
      console.log(JSON.stringify({ target: options.target, weightsDtype: options.weightsDtype, rows, passed: rows.length - failed, failed }));
    } else {
      printTable([
        ['output', 'shape', 'max |error|', 'relative', 'tolerance', 'top-5 kept', 'result'],
        ...rows.map((r) => [r.output, JSON.stringify(r.shape), r.maxError.toExponential(2), r.relativeError.toExponential(2), r.tolerance.toExponential(2), r.top5 ?? '', r.ok ? 'ok' : 'FAIL']),
      ]);
      console.log(`${rows.length - failed} passed, ${failed} failed`);
    }
    if (rows.length === 0) throw new CxcError('no golden outputs were compared', { hint: 'pass --golden with safetensors holding pixel_values and outputs' });
    if (failed > 0) process.exitCode = 1;
  });

program
  .command('serve')
  .description('serve the browser demo (examples/browser) with built packages on localhost, cross-origin isolated so that WASM threads work')
  .argument('<packages...>', 'folders made by cxc build, e.g. a wasm and a webgpu build of the same model: the page picks WebGPU when the browser has it')
  .option('-p, --port <port>', 'port to listen on (0: any free port)', (v) => parsePort(v), 8080)
  .option('--host <address>', 'address to listen on', '127.0.0.1')
  .action(async (dirs: string[], options: { port: number; host: string }) => {
    const { startServer } = await import('./serve.js');
    const server = await startServer({ packages: dirs, port: options.port, host: options.host });
    console.log(`serving the cxc demo at ${server.url}`);
    for (const model of server.models) console.log(`  ${model.name} (${model.target}) at ${server.url.replace(/\/$/, '')}${model.path}`);
    console.log(`open ${server.url} (add ?backend=wasm or ?backend=webgpu to force a backend); Ctrl+C stops the server`);
    await new Promise<void>((resolveStop) => {
      process.once('SIGINT', resolveStop);
      process.once('SIGTERM', resolveStop);
    });
    await server.close();
  });

function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) throw new CxcError(`--port must be an integer from 0 to 65535, got ${JSON.stringify(value)}`);
  return n;
}

function parseInteger(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new CxcError(`${flag} must be a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

function splitPackage(spec?: string): [string | undefined, string | undefined] {
  if (!spec) return [undefined, undefined];
  const at = spec.lastIndexOf('@');
  if (at <= 0) return [spec, undefined];
  return [spec.slice(0, at), spec.slice(at + 1)];
}

/** User errors: one line and a hint. Errors from generated modules start with "cxc:" and are user errors too. */
function report(error: unknown): never {
  if (error instanceof CxcError) {
    console.error(`cxc: ${error.message}`);
    if (error.hint) console.error(`hint: ${error.hint}`);
  } else if (error instanceof Error && /^cxc: /.test(error.message)) {
    console.error(error.message);
  } else {
    console.error('cxc: internal error (please report it):');
    console.error(error instanceof Error ? error.stack : error);
  }
  process.exit(1);
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (error) {
    report(error);
  }
}

await main(process.argv);

