/**
 * The CLI as users run it: a real process on the compiled dist/compiler/cli.js
 * (npm test compiles it first).
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { readSafetensors, writeSafetensors } from '../compiler/safetensors.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';
import { cxc, type CliResult } from './helpers/cli.js';

const work = mkdtempSync(join(tmpdir(), 'cxc-cli-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function expectUserError(result: CliResult, message: RegExp) {
  expect(result.code, result.stderr).toBe(1);
  expect(result.stderr).toMatch(message);
  // one clear line (plus a hint), never a stack trace
  expect(result.stderr).not.toMatch(/\n\s+at /);
  expect(result.stderr).not.toMatch(/internal error/);
}

describe('cxc CLI', () => {
  const micro = goldenPath('models', 'micro');
  const out = join(work, 'micro-wasm');

  test('--help and --version', async () => {
    const help = (await cxc('--help'));
    expect(help.code).toBe(0);
    for (const command of ['build', 'weights', 'run', 'preprocess', 'classify', 'check']) expect(help.stdout).toContain(command);
    expect((await cxc('build', '--help')).stdout).toMatch(/--target <target>.*default: "wasm"/s);
    expect((await cxc('build', '--help')).stdout).toMatch(/--precision <precision>.*choices: "f32", "f16"/s);
    expect((await cxc('--version')).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test('build then run writes every output under transformers\' names, matching the goldens', async () => {
    const build = (await cxc('build', micro, '--target', 'wasm', '-o', out));
    expect(build.code, build.stderr).toBe(0);
    const pkg = JSON.parse(readFileSync(join(out, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({ name: 'micro-wasm', type: 'module', sideEffects: false });
    expect(pkg.dependencies).toBeUndefined();
    const result = join(work, 'micro-out.safetensors');
    const run = (await cxc('run', out, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result, '--output-hidden-states'));
    expect(run.code, run.stderr).toBe(0);
    const got = readSafetensors(new Uint8Array(readFileSync(result)), result);
    const golden = readGolden('models', 'micro', 'golden.safetensors');
    for (const name of ['logits', 'pooler_output', 'last_hidden_state', 'hidden_states.0', 'hidden_states.4']) {
      expect(got.get(name)?.shape, name).toEqual(golden.get(name)!.shape);
      const { maxError, tolerance } = compare(floats(got.get(name)), floats(golden.get(name)));
      expect(maxError, name).toBeLessThanOrEqual(tolerance);
    }
  });

  test('run on a backbone writes feature_maps.K', async () => {
    const backboneOut = join(work, 'backbone');
    expect((await cxc('build', goldenPath('models', 'micro', 'backbone'), '-o', backboneOut)).code).toBe(0);
    const result = join(work, 'backbone-out.safetensors');
    expect((await cxc('run', backboneOut, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result)).code).toBe(0);
    const got = readSafetensors(new Uint8Array(readFileSync(result)), result);
    const golden = readGolden('models', 'micro', 'golden.safetensors');
    for (let k = 0; k < 4; k++) {
      const { maxError, tolerance } = compare(floats(got.get(`feature_maps.${k}`)), floats(golden.get(`backbone.feature_maps.${k}`)));
      expect(maxError).toBeLessThanOrEqual(tolerance);
    }
    expect(got.has('logits')).toBe(false);
  });

  test('a bare config builds a module that loads weights packed by `cxc weights`', async () => {
    const bareOut = join(work, 'bare');
    expect((await cxc('build', join(micro, 'config.json'), '-o', bareOut)).code).toBe(0);
    const weights = join(work, 'micro-weights.bin');
    const pack = (await cxc('weights', join(micro, 'model.safetensors'), '--config', join(micro, 'config.json'), '-o', weights));
    expect(pack.code, pack.stderr).toBe(0);
    const result = join(work, 'bare-out.safetensors');
    const run = (await cxc('run', bareOut, '--weights', weights, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result));
    expect(run.code, run.stderr).toBe(0);
    const got = readSafetensors(new Uint8Array(readFileSync(result)), result);
    const { maxError, tolerance } = compare(floats(got.get('logits')), floats(readGolden('models', 'micro', 'golden.safetensors').get('logits')));
    expect(maxError).toBeLessThanOrEqual(tolerance);
    // without weights it says what to do
    expectUserError((await cxc('run', bareOut, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result)), /built from a bare config.*cxc weights/);
    // a truncated weights file is refused by size
    const truncated = join(work, 'truncated.bin');
    copyFileSync(weights, truncated);
    truncateSync(truncated, 1000);
    expectUserError((await cxc('run', bareOut, '--weights', truncated, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result)), /is 1000 bytes but micro-wasm expects \d+/);
  });

  test('q8: check reports the declared bar; a bare q8 build runs weights packed by `cxc weights --weights-dtype q8` bit for bit', async () => {
    const checked = await cxc('check', micro, '--weights-dtype', 'q8', '--json');
    expect(checked.code, checked.stdout + checked.stderr).toBe(0);
    const report = JSON.parse(checked.stdout) as { weightsDtype: string; rows: Array<{ output: string; relativeError: number; tolerance: number; top5?: string }> };
    expect(report.weightsDtype).toBe('q8');
    const logits = report.rows.find((r) => r.output === 'logits')!;
    expect(logits.relativeError).toBeGreaterThan(1e-5); // the rounding shows: q8 really ran
    expect(logits.relativeError).toBeLessThan(3e-2);
    const full = join(work, 'micro-q8');
    const bare = join(work, 'bare-q8');
    const builtFull = await cxc('build', micro, '--weights-dtype', 'q8', '-o', full);
    expect(builtFull.code).toBe(0);
    expect(builtFull.stdout).toMatch(/^built micro-q8-wasm /); // a rounded dtype is a variant of its own name
    expect((await cxc('build', join(micro, 'config.json'), '--weights-dtype', 'q8', '-o', bare)).code).toBe(0);
    const weights = join(work, 'micro-q8.bin');
    const pack = await cxc('weights', join(micro, 'model.safetensors'), '--config', join(micro, 'config.json'), '--weights-dtype', 'q8', '-o', weights);
    expect(pack.code, pack.stderr).toBe(0);
    expect(readFileSync(weights).equals(readFileSync(join(full, 'weights.bin')))).toBe(true);
    const outputs = await Promise.all([[full], [bare, '--weights', weights]].map(async ([dir, ...extra], i) => {
      const result = join(work, `q8-out-${i}.safetensors`);
      const run = await cxc('run', dir, ...extra, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', result);
      expect(run.code, run.stderr).toBe(0);
      return floats(readSafetensors(new Uint8Array(readFileSync(result)), result).get('logits'));
    }));
    expect(Array.from(outputs[1])).toEqual(Array.from(outputs[0]));
    // an f32 weights file is refused by a q8 module: its size says so
    const f32Weights = join(work, 'micro-weights-f32.bin');
    expect((await cxc('weights', join(micro, 'model.safetensors'), '--config', join(micro, 'config.json'), '-o', f32Weights)).code).toBe(0);
    expectUserError(await cxc('run', bare, '--weights', f32Weights, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', join(work, 'x.safetensors')), /bytes but micro-q8-wasm expects \d+ \(q8 weights\)/);
  });

  test('a corrupted bundled weights file fails its checksum', async () => {
    const corrupt = join(work, 'corrupt');
    expect((await cxc('build', micro, '-o', corrupt)).code).toBe(0);
    const weights = readFileSync(join(corrupt, 'weights.bin'));
    weights[1234] ^= 0xff;
    writeFileSync(join(corrupt, 'weights.bin'), weights);
    expectUserError((await cxc('run', corrupt, '--input', goldenPath('models', 'micro', 'golden.safetensors'), '--output', join(work, 'x.safetensors'))), /checksum/);
  });

  test('preprocess writes pixel_values identical to transformers', async () => {
    const result = join(work, 'chelsea.safetensors');
    const run = (await cxc('preprocess', goldenPath('preprocess', 'chelsea.png'), '--output', result));
    expect(run.code, run.stderr).toBe(0);
    const got = readSafetensors(new Uint8Array(readFileSync(result)), result).get('pixel_values')!;
    expect(got.shape).toEqual([1, 3, 224, 224]);
    const golden = readGolden('preprocess', 'chelsea.safetensors').get('p224.pixel_values')!;
    expect(compare(floats(got), floats(golden)).maxError).toBeLessThanOrEqual(1e-6);
  });

  test('classify prints an aligned table, --json the same top-k', async () => {
    const table = (await cxc('classify', out, goldenPath('preprocess', 'chelsea.png'), '--top-k', '3'));
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^label\s+score$/);
    expect(lines.slice(1, 4).every((l) => /^LABEL_\d\s+0\.\d{4}$/.test(l))).toBe(true);
    const json = JSON.parse((await cxc('classify', out, goldenPath('preprocess', 'chelsea.png'), '--top-k', '3', '--json')).stdout);
    expect(json.top.map((t: { label: string }) => t.label)).toEqual(lines.slice(1, 4).map((l) => l.split(/\s+/)[0]));
    expectUserError((await cxc('classify', out, goldenPath('preprocess', 'chelsea.png'), '--top-k', '0')), /--top-k must be a positive integer/);
  });

  test('check passes on the goldens and fails (exit 1) past tolerance', async () => {
    const ok = (await cxc('check', micro, '--target', 'wasm'));
    expect(ok.code, ok.stderr).toBe(0);
    // output, shape, max |error|, relative, tolerance, top-5 kept, result
    expect(ok.stdout).toMatch(/logits\s+\[2,10\]\s+\S+\s+\S+\s+\S+\s+2\/2\s+ok/);
    const golden = readGolden('models', 'micro', 'golden.safetensors');
    const logits = floats(golden.get('logits')).slice();
    logits[5] += 0.01;
    const bad = join(work, 'bad-golden.safetensors');
    writeFileSync(bad, writeSafetensors([['pixel_values', { data: floats(golden.get('pixel_values')), shape: golden.get('pixel_values')!.shape }], ['logits', { data: logits, shape: [2, 10] }]]));
    const failed = (await cxc('check', micro, '--golden', bad));
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/logits.*FAIL/);
  });

  test('user errors are one line, name the problem, exit 1', async () => {
    expectUserError((await cxc('build', join(work, 'nope'), '-o', join(work, 'o1'))), /nope: no such file or folder/);
    const badConfig = join(work, 'bad-model');
    mkdirSync(badConfig);
    writeFileSync(join(badConfig, 'config.json'), JSON.stringify({ model_type: 'convnext', depths: [1, 1] }));
    expectUserError((await cxc('build', badConfig, '-o', join(work, 'o2'))), /config\.json: field "depths" is \[1,1\]: has 2 entries but num_stages is 4/);
    writeFileSync(join(badConfig, 'config.json'), '{ not json');
    expectUserError((await cxc('build', badConfig, '-o', join(work, 'o3'))), /config\.json: the model config is not valid JSON/);
    const notOurs = join(work, 'not-ours');
    mkdirSync(notOurs);
    writeFileSync(join(notOurs, 'precious.txt'), 'keep me');
    expectUserError((await cxc('build', micro, '-o', notOurs)), /not empty and was not made by cxc/);
    expect(readFileSync(join(notOurs, 'precious.txt'), 'utf8')).toBe('keep me');
    expectUserError((await cxc('build', micro, '--target', 'tpu', '-o', join(work, 'o4'))), /Allowed choices are wasm, webgpu/);
    expectUserError((await cxc('build', micro, '--precision', 'f16', '-o', join(work, 'o6'))), /--precision f16 is for --target webgpu/);
    expectUserError((await cxc('run', out, '--input', goldenPath('models', 'micro', 'config.json'), '--output', join(work, 'o5'))), /not a valid safetensors file/);
  });
});

describe('cxc CLI, WebGPU target', () => {
  test('check runs a WebGPU build on Dawn (SwiftShader here) within the golden bar', async () => {
    // No retry: the aborts once seen here were Dawn's instance collected under a live device, now
    // held by the backend (test/webgpu-stress.test.ts runs every case many times on two drivers).
    const result = await cxc('check', goldenPath('models', 'v2-micro'), '--target', 'webgpu', '--json');
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.trim().split('\n').pop()!);
    expect(report.failed).toBe(0);
    expect(report.passed).toBeGreaterThanOrEqual(8);
  });
});
