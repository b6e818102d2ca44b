/**
 * One package per model variant: `cxc build --all-variants CONFIGS_DIR`, on the configs the
 * project ships (examples/configs: ConvNeXt tiny...xlarge at 224 and 384, ConvNeXt V2
 * atto...huge, bare configs with no weights), checked against the published architectures
 * written out here independently of those files. Also the CLI's progress bar and --help.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { findVariants, variantPackageName } from '../compiler/variants.js';
import { packageNameFor } from '../compiler/build.js';
import { progressBar, renderBar } from '../compiler/progress.js';
import type { ModelManifest } from '../runtime/types.js';
import { goldenPath } from './helpers/golden.js';
import { cxc } from './helpers/cli.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONFIGS = join(ROOT, 'examples', 'configs');
const work = mkdtempSync(join(tmpdir(), 'cxc-variants-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The published architectures: hidden sizes, depths, and parameter counts with a 1000-label head (model cards, 3+ significant digits). */
const V1: Record<string, [number[], number[], number]> = {
  tiny: [[96, 192, 384, 768], [3, 3, 9, 3], 28.6e6],
  small: [[96, 192, 384, 768], [3, 3, 27, 3], 50.2e6],
  base: [[128, 256, 512, 1024], [3, 3, 27, 3], 88.6e6],
  large: [[192, 384, 768, 1536], [3, 3, 27, 3], 197.8e6],
  xlarge: [[256, 512, 1024, 2048], [3, 3, 27, 3], 350.2e6],
};
const V2: Record<string, [number[], number[], number]> = {
  atto: [[40, 80, 160, 320], [2, 2, 6, 2], 3.71e6],
  femto: [[48, 96, 192, 384], [2, 2, 6, 2], 5.23e6],
  pico: [[64, 128, 256, 512], [2, 2, 6, 2], 9.07e6],
  nano: [[80, 160, 320, 640], [2, 2, 8, 2], 15.6e6],
  tiny: [[96, 192, 384, 768], [3, 3, 9, 3], 28.6e6],
  base: [[128, 256, 512, 1024], [3, 3, 27, 3], 88.7e6],
  large: [[192, 384, 768, 1536], [3, 3, 27, 3], 197.96e6],
  huge: [[352, 704, 1408, 2816], [3, 3, 27, 3], 660.29e6],
};
const EXPECTED = new Map<string, { hiddenSizes: number[]; depths: number[]; imageSize: number; modelType: string; parameters: number }>([
  ...Object.entries(V1).flatMap(([size, [hiddenSizes, depths, parameters]]) =>
    [224, 384].map((imageSize) => [`convnext-${size}-${imageSize}`, { hiddenSizes, depths, imageSize, modelType: 'convnext', parameters }] as const)),
  ...Object.entries(V2).map(([size, [hiddenSizes, depths, parameters]]) =>
    [`convnextv2-${size}-224`, { hiddenSizes, depths, imageSize: 224, modelType: 'convnextv2', parameters }] as const),
]);

async function manifestOf(dir: string): Promise<ModelManifest> {
  return ((await import(pathToFileURL(join(dir, 'index.js')).href)) as { manifest: ModelManifest }).manifest;
}

describe('examples/configs', () => {
  test('holds every published variant, found by --all-variants', () => {
    const variants = findVariants(CONFIGS);
    expect(variants.map((v) => v.name).sort()).toEqual([...EXPECTED.keys()].sort());
    expect(variants.every((v) => !v.hasWeights && v.input.endsWith(v.name))).toBe(true);
  });

  test('cxc build --all-variants builds one package per config, named after it, with its architecture', async () => {
    const out = join(work, 'wasm');
    const started = performance.now();
    const result = await cxc('build', '--all-variants', CONFIGS, '-o', out, '--target', 'wasm');
    console.log(`--all-variants on ${EXPECTED.size} bare configs (wasm): ${((performance.now() - started) / 1000).toFixed(1)} s`);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe(''); // no progress bar in a pipe
    expect(result.stdout).toMatch(new RegExp(`^${EXPECTED.size} of ${EXPECTED.size} packages built in `, 'm'));
    for (const [variant, expected] of EXPECTED) {
      const name = `${variant}-wasm`;
      const dir = join(out, name);
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
      expect(pkg.name).toBe(name);
      const manifest = await manifestOf(dir);
      expect({ name: manifest.name, hiddenSizes: manifest.hiddenSizes, depths: manifest.depths, imageSize: manifest.imageSize, modelType: manifest.modelType }, variant)
        .toEqual({ name, hiddenSizes: expected.hiddenSizes, depths: expected.depths, imageSize: expected.imageSize, modelType: expected.modelType });
      expect(manifest.head).toBe('classification');
      expect(manifest.numLabels).toBe(1000);
      expect(manifest.weights.checksum).toBeNull(); // bare config: the weights come from the user
      expect(manifest.preprocess.shortestEdge).toBe(expected.imageSize);
      // Parameter counts as published, to the digits they give.
      expect(Math.abs(manifest.parameters - expected.parameters) / expected.parameters, variant).toBeLessThan(0.003);
      expect(existsSync(join(dir, 'weights.bin'))).toBe(false);
      expect(result.stdout).toContain(`built ${name} in ${dir}: ${expected.hiddenSizes.join('/')} x ${expected.depths.join('/')}, ${expected.imageSize}px, weights not bundled`);
    }
    const readme = readFileSync(join(out, 'convnext-base-384-wasm', 'README.md'), 'utf8');
    expect(readme).toContain('| input size | 384x384 RGB');
    expect(readme).toContain('resize to 384x384 (bicubic, aspect ratio not kept, no crop)');
    expect(readme).toContain('| parameters | 88.6M |');
    expect(readme).toMatch(/## Weights[\s\S]*npx cxc weights model\.safetensors --config config\.json --target wasm -o weights\.bin/);
    expect(readme).toContain("await load({ weights: 'weights.bin', threads: 4 })");
  }, 600_000);

  test('a folder of mixed variants: model folders with weights, NAME.json with its processor, a broken one reported at the end', async () => {
    const configs = join(work, 'mixed');
    mkdirSync(configs);
    cpSync(goldenPath('models', 'micro'), join(configs, 'micro'), { recursive: true, filter: (src) => !src.includes('backbone') && !src.endsWith('golden.safetensors') });
    cpSync(join(CONFIGS, 'convnextv2-atto-224', 'config.json'), join(configs, 'atto.json'));
    writeFileSync(join(configs, 'atto.preprocessor_config.json'), JSON.stringify({ size: { shortest_edge: 160 }, crop_pct: 0.95 }));
    writeFileSync(join(configs, 'broken.json'), JSON.stringify({ model_type: 'convnext', depths: [1, 1] }));
    writeFileSync(join(configs, 'notes.txt'), 'not a config');
    const out = join(work, 'mixed-out');
    const result = await cxc('build', '--all-variants', configs, '-o', out, '--target', 'webgpu', '--package', '@acme/{name}@2.1.0');
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^FAILED @acme\/broken-webgpu: .*broken\.json: field "depths" is \[1,1\]: has 2 entries but num_stages is 4$/m);
    expect(result.stdout).toMatch(/^2 of 3 packages built in /m);
    expect(result.stderr).toMatch(/broken\.json: field "depths"/);
    expect(result.stderr).not.toMatch(/\n\s+at /);

    const micro = JSON.parse(readFileSync(join(out, 'micro-webgpu', 'package.json'), 'utf8'));
    expect(micro).toMatchObject({ name: '@acme/micro-webgpu', version: '2.1.0' });
    const microManifest = await manifestOf(join(out, 'micro-webgpu'));
    expect(microManifest.weights.checksum).not.toBeNull(); // model.safetensors in its folder: bundled
    expect(existsSync(join(out, 'micro-webgpu', 'weights.bin'))).toBe(true);
    const atto = await manifestOf(join(out, 'atto-webgpu'));
    expect(atto).toMatchObject({ name: '@acme/atto-webgpu', target: 'webgpu', modelType: 'convnextv2', hiddenSizes: [40, 80, 160, 320] });
    expect(atto.preprocess).toMatchObject({ shortestEdge: 160, cropPct: 0.95 }); // NAME.preprocessor_config.json beside NAME.json
  }, 300_000);

  test('names and user errors', async () => {
    expect(packageNameFor('convnext-tiny-224', 'webgpu')).toBe('convnext-tiny-224-webgpu');
    expect(packageNameFor('ConvNeXt V2 (tiny)', 'wasm')).toBe('convnext-v2-tiny-wasm');
    expect(packageNameFor('x'.repeat(300), 'webgpu')).toHaveLength(214);
    expect(variantPackageName('convnext-tiny-224', 'wasm', '@acme/{name}')).toBe('@acme/convnext-tiny-224-wasm');
    expect(() => variantPackageName('convnext-tiny-224', 'wasm', 'fixed-name')).toThrow(/must contain \{name\}/);
    expect(() => variantPackageName('convnext-tiny-224', 'wasm', 'Bad {name}')).toThrow(/not a valid npm package name/);

    const empty = join(work, 'empty');
    mkdirSync(empty);
    const oneLine = (result: Awaited<ReturnType<typeof cxc>>, message: RegExp) => {
      expect(result.code, result.stdout).toBe(1);
      expect(result.stderr).toMatch(message);
      expect(result.stderr).not.toMatch(/\n\s+at |internal error/);
    };
    oneLine(await cxc('build', '--all-variants', empty, '-o', join(work, 'e1')), /empty: no model configs here\nhint: put one config per variant/);
    oneLine(await cxc('build', '--all-variants', join(work, 'nope'), '-o', join(work, 'e2')), /cannot read the configs folder \(ENOENT\)/);
    oneLine(await cxc('build', CONFIGS, '--all-variants', CONFIGS, '-o', join(work, 'e3')), /give a model to build or --all-variants .*, not both/);
    oneLine(await cxc('build', '--all-variants', CONFIGS, '--package', 'one-name', '-o', join(work, 'e4')), /must contain \{name\}/);
    oneLine(await cxc('build', '--all-variants', CONFIGS, '--weights', 'x.safetensors', '-o', join(work, 'e5')), /--weights and --processor name one model/);
    oneLine(await cxc('build', '-o', join(work, 'e6')), /missing the model to build/);
    oneLine(await cxc('build', join(CONFIGS, 'convnextv2-atto-224'), '--package', 'Not Valid@1.0.0', '-o', join(work, 'e7')), /"Not Valid" is not a valid npm package name/);
    oneLine(await cxc('build', join(CONFIGS, 'convnextv2-atto-224'), '--package', 'ok-name@one', '-o', join(work, 'e8')), /"one" is not a valid package version/);
  });
});

describe('CLI progress bar', () => {
  test('draws on a terminal, one line rewritten in place, and erases itself', () => {
    const writes: string[] = [];
    const bar = progressBar('loading', { isTTY: true, columns: 100, write: (text: string) => writes.push(text) });
    bar.update(0.25, 'weights 27.2 / 109.0 MiB');
    bar.update(1, 'weights 109.0 / 109.0 MiB');
    bar.done();
    expect(writes.length).toBeGreaterThanOrEqual(2);
    expect(writes.slice(0, -1).every((w) => w.startsWith('\r\x1b[2K') && !w.includes('\n'))).toBe(true);
    expect(writes.at(-2)).toMatch(/^\r\x1b\[2Kloading █{24} 100% {2}weights 109\.0 \/ 109\.0 MiB {2}\d+\.\d s$/);
    expect(writes.at(-1)).toBe('\r\x1b[2K');
  });

  test('writes nothing when the stream is not a terminal', () => {
    const writes: string[] = [];
    const bar = progressBar('building', { isTTY: false, write: (text: string) => writes.push(text) });
    bar.update(0.5, 'packing weights');
    bar.done();
    expect(writes).toEqual([]);
  });

  test('fits the terminal width', () => {
    expect(renderBar('building', 0.5, 'x'.repeat(200), 1.25, 60)).toHaveLength(59);
    expect(renderBar('building', 0.5, 'rendering kernels', 1.25, 200)).toBe(`building ${'█'.repeat(12)}${'░'.repeat(12)}  50%  rendering kernels  1.3 s`);
  });
});

describe('cxc --help', () => {
  test('every subcommand lists its options with their defaults', async () => {
    const help = await cxc('--help');
    expect(help.code).toBe(0);
    for (const command of ['build', 'weights', 'run', 'preprocess', 'classify', 'check', 'serve']) expect(help.stdout).toContain(command);
    const expectations: Record<string, RegExp[]> = {
      build: [/--target <target>[\s\S]*default: "wasm"/, /--all-variants <configs>/, /--weights-dtype <dtype>[\s\S]*default: "f32"/, /--package <name\[@version\]>[\s\S]*default:\s+<folder>-<target>@1\.0\.0/, /--force[\s\S]*\(default: false\)/],
      weights: [/--target <target>[\s\S]*default: "wasm"/, /--weights-dtype <dtype>[\s\S]*default: "f32"/],
      run: [/--output-hidden-states[\s\S]*\(default: false\)/, /--json[\s\S]*\(default: false\)/],
      preprocess: [/--processor <file>[\s\S]*default: 224 crop/],
      classify: [/--top-k <k>[\s\S]*\(default: 5\)/, /--json[\s\S]*\(default: false\)/],
      check: [/--target <target>[\s\S]*default: "wasm"/, /--golden <files\.\.\.>[\s\S]*default:\s+<input>\/golden\.safetensors/],
      serve: [/--port <port>[\s\S]*\(default: 8080\)/, /--host <address>[\s\S]*\(default: "127\.0\.0\.1"\)/],
    };
    for (const [command, patterns] of Object.entries(expectations)) {
      const text = (await cxc(command, '--help')).stdout;
      for (const pattern of patterns) expect(text, `${command} --help`).toMatch(pattern);
    }
  });
});
