/**
 * The output folder is a real npm package: `npm pack` it, install the tarball into a fresh
 * project that has nothing else (offline: the package has no dependencies), import it by
 * name from plain Node and classify the cat photo with ConvNeXt-T, matching the golden
 * end-to-end logits. Also: its TypeScript declarations work for a consumer, and
 * examples/node-classify runs on it.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildModule, type CompiledModule } from '../compiler/build.js';
import { decodeImageFile } from '../compiler/image.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'cxc-package-'));
const packageDir = join(work, 'convnext-tiny-224-wasm');
const consumer = join(work, 'consumer');
let compiled: CompiledModule;
let tarball: string;
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Runs a command to completion (asynchronously: vitest's worker must stay responsive); its stdout. */
function run(command: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, encoding: 'utf8', timeout: 300_000, maxBuffer: 64 * 2 ** 20, env: { ...process.env, npm_config_update_notifier: 'false' } }, (error, stdout, stderr) =>
      error ? reject(new Error(`${command} ${args.join(' ')} failed (${error.code}):\n${stdout}\n${stderr}`)) : resolve(stdout));
  });
}

/** argsort of the golden logits, top 5. */
function goldenTop5(): number[] {
  const logits = floats(readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors').get('logits'), 'logits');
  return [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 5);
}

describe('a built package, packed and installed from its tarball', () => {
  beforeAll(async () => {
    compiled = await buildModule({ input: goldenPath('models', 'convnext-tiny-224'), target: 'wasm', outDir: packageDir, force: true });
    const tarballs = join(work, 'tarballs');
    mkdirSync(tarballs);
    const packed = JSON.parse(await run('npm', ['pack', '--json', '--pack-destination', tarballs], packageDir)) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = join(tarballs, packed[0].filename);
    const packedFiles = packed[0].files.map((f) => f.path).sort();
    expect(packedFiles).toEqual(expect.arrayContaining(['README.md', 'index.d.ts', 'index.js', 'kernels.wasm', 'kernels-relaxed.wasm', 'package.json', 'runtime/model.js', 'runtime/model.d.ts', 'weights.bin', 'worker.js', 'runtime/worker.js', 'runtime/remote.js', 'runtime/cache.js', 'runtime/images.js']));
    expect(packedFiles).not.toContain('.cxc-build');
    expect(packedFiles).not.toContain('index.ts');

    mkdirSync(consumer);
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }, null, 2));
    await run('npm', ['install', tarball, '--offline', '--no-audit', '--no-fund'], consumer);
  }, 600_000);

  test('package.json is complete and the README is written for this variant', () => {
    const pkg = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({
      name: 'convnext-tiny-224-wasm',
      version: '1.0.0',
      type: 'module',
      exports: { '.': { types: './index.d.ts', import: './index.js' } },
      sideEffects: false,
    });
    expect(pkg.dependencies).toBeUndefined();
    expect(pkg.files).toEqual(expect.arrayContaining(['index.js', 'index.d.ts', 'runtime/model.js', 'runtime/model.d.ts', 'kernels.wasm', 'weights.bin']));
    // TypeScript sources stay out: beside a .d.ts, a consumer's tsc would type-check them as its own code.
    expect(pkg.files.filter((f: string) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    const readme = readFileSync(join(packageDir, 'README.md'), 'utf8');
    expect(readme).toMatch(/^# convnext-tiny-224-wasm\n/);
    expect(readme).toContain('| parameters | 28.6M |');
    expect(readme).toMatch(/\| labels \| 1000: tench, goldfish, great white shark, tiger shark, hammerhead, …/);
    expect(readme).toContain('| input size | 224x224 RGB');
    expect(readme).toContain('resize the short side to 256 px (224 / crop_pct 0.875, bicubic), center-crop 224x224');
    expect(readme).toContain('`weights.bin`, 109.0 MiB (float32)');
    expect(readme).toContain("import { load } from 'convnext-tiny-224-wasm';");
    expect(readme).toMatch(/## Node[\s\S]*## Browser[\s\S]*createImageBitmap/);
    expect(readme).toContain('`convnext-tiny-224-webgpu`');
    expect(readme).not.toMatch(/ms\b.*per image|images\/s/); // no speed claims: nothing was measured
  });

  test('installed offline into a fresh project, imported by name from plain Node, it matches the golden end-to-end logits', async () => {
    const installed = join(consumer, 'node_modules', 'convnext-tiny-224-wasm');
    expect(existsSync(join(installed, 'weights.bin'))).toBe(true);
    expect(readdirSync(join(consumer, 'node_modules')).filter((d) => !d.startsWith('.'))).toEqual(['convnext-tiny-224-wasm']);

    // The package takes pixels; the test decodes the PNG (as PIL does) and hands them over.
    const image = await decodeImageFile(goldenPath('preprocess', 'chelsea.png'));
    writeFileSync(join(consumer, 'chelsea.rgb'), image.data);
    writeFileSync(join(consumer, 'chelsea.json'), JSON.stringify({ width: image.width, height: image.height, channels: image.channels }));
    writeFileSync(join(consumer, 'main.mjs'), [
      "import { load, manifest } from 'convnext-tiny-224-wasm';",
      "import { readFileSync, writeFileSync } from 'node:fs';",
      "const { width, height, channels } = JSON.parse(readFileSync('chelsea.json', 'utf8'));",
      "const image = { data: new Uint8Array(readFileSync('chelsea.rgb')), width, height, channels };",
      'const model = await load();',
      'const input = model.preprocess(image);',
      'const { logits } = await model.run(input.pixelValues, { batch: 1, height: input.height, width: input.width });',
      'const top5 = await model.classify(image, { topK: 5 });',
      "writeFileSync('result.json', JSON.stringify({ name: manifest.name, backend: model.backend, logits: Array.from(logits), top5 }));",
      'model.dispose();',
      '',
    ].join('\n'));
    await run(process.execPath, ['main.mjs'], consumer);
    const result = JSON.parse(readFileSync(join(consumer, 'result.json'), 'utf8')) as { name: string; backend: string; logits: number[]; top5: Array<{ index: number; label: string }> };
    expect(result.name).toBe('convnext-tiny-224-wasm');
    expect(result.backend).toMatch(/^WASM/);
    const golden = floats(readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors').get('logits'), 'logits');
    const { maxError, tolerance } = compare(Float32Array.from(result.logits), golden);
    console.log(`packed package vs golden end-to-end logits: max |error| ${maxError.toExponential(2)} (tolerance ${tolerance.toExponential(2)})`);
    expect(maxError).toBeLessThanOrEqual(tolerance);
    expect(result.top5.map((t) => t.index)).toEqual(goldenTop5());
    expect(result.top5[0].label).toBe(compiled.manifest.labels[goldenTop5()[0]]);
  });

  test('its type declarations serve a TypeScript consumer', async () => {
    writeFileSync(join(consumer, 'check.mts'), [
      "import { load, manifest, type Classification, type ConvNextModel } from 'convnext-tiny-224-wasm';",
      'const model: ConvNextModel = await load({ threads: 1, onProgress: ({ loaded, total }) => void (loaded / total) });',
      "const top: Classification[] = await model.classify({ data: new Uint8Array(12), width: 2, height: 2, channels: 3 }, { topK: 1 });",
      'const size: number = manifest.imageSize;',
      'export { top, size };',
      '',
    ].join('\n'));
    writeFileSync(join(consumer, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, lib: ['ES2022', 'DOM'], types: [] },
      files: ['check.mts'],
    }));
    await run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], consumer);
  });

  test('examples/node-classify classifies an image file with it', async () => {
    const out = await run(process.execPath, [join(ROOT, 'examples', 'node-classify', 'classify.mjs'), packageDir, goldenPath('preprocess', 'chelsea.png')], ROOT);
    const lines = out.trim().split('\n');
    expect(lines).toHaveLength(5);
    expect(lines[0]).toMatch(new RegExp(`^\\s*\\d+\\.\\d{2}%  ${compiled.manifest.labels[goldenTop5()[0]]}$`));
  });
});
