/**
 * WebGPU in Node must never hang or crash. Dawn's bindings free their native instance when the
 * `create([])` object is collected, even while a device made from it runs; the backend now holds
 * the entry point and the adapter for its device's whole life. These tests prove it the way users
 * hit it, each in a child process under a watchdog (a hang fails the test, it does not stall CI):
 *   - many loads and runs in one process with a forced full GC between every load and run, the
 *     package loaded as the README shows (`load({ gpu: create([]) })`, no reference kept);
 *   - the CLI (`cxc run`, `cxc check`) over every golden case, several passes;
 * on both CPU Vulkan drivers: SwiftShader and Mesa's lavapipe. No retries anywhere.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildModule } from '../compiler/build.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { requireVulkanIcd, type VulkanDriver } from '../compiler/node-gpu.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';

const CLI = fileURLToPath(new URL('../dist/compiler/cli.js', import.meta.url));
const STRESS_CHILD = fileURLToPath(new URL('./helpers/webgpu-stress.mjs', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'cxc-stress-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Finished { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }

/** Runs node with args in a child process; SIGKILLs it at the watchdog deadline and says so. */
function runChild(args: string[], driver: VulkanDriver, watchdogMs: number): Promise<Finished> {
  const env = { ...process.env, VK_ICD_FILENAMES: requireVulkanIcd(driver) };
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    let hung = false;
    const watchdog = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, watchdogMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(watchdog);
      if (hung) stderr += `\n[watchdog] no exit after ${watchdogMs} ms: killed (a hang)`;
      resolve({ code, signal, stdout, stderr, ms: performance.now() - started });
    });
  });
}

/** The failure text of a child: exit code or signal, then the end of its stderr. */
const why = (result: Finished) => `exit ${result.code ?? result.signal}: ${result.stderr.slice(-2000)}`;

/** Each golden case: its checkpoint folder, its golden file, and the backbone key prefix. */
const CASES = [
  { name: 'micro', dir: 'micro', golden: 'micro', hiddenStates: true },
  { name: 'micro-backbone', dir: 'micro/backbone', golden: 'micro', hiddenStates: true },
  { name: 'small-bf16', dir: 'small-bf16', golden: 'small-bf16', hiddenStates: true },
  { name: 'v2-micro', dir: 'v2-micro', golden: 'v2-micro', hiddenStates: true },
  // Its golden has no hidden states: asking for them would only slow the run.
  { name: 'convnext-tiny-224', dir: 'convnext-tiny-224', golden: 'convnext-tiny-224', hiddenStates: false },
];
const packages = new Map<string, string>();

beforeAll(async () => {
  for (const driver of ['swiftshader', 'lavapipe'] as const) requireVulkanIcd(driver); // both installed, or a clear error
  for (const testCase of CASES) {
    const outDir = join(work, `${testCase.name}-webgpu`);
    await buildModule({ input: goldenPath('models', testCase.dir), target: 'webgpu', outDir, force: true });
    packages.set(testCase.name, outDir);
  }
}, 300_000);

/**
 * Loads and runs per case of the in-process stress, per driver. 50 runs each of micro and v2-micro
 * on SwiftShader; lavapipe compiles every pipeline again at each load (seconds per load), and
 * ConvNeXt-T takes ~5 s a run on SwiftShader, so those get fewer loads and runs.
 */
const IN_PROCESS: Record<VulkanDriver, Array<{ name: string; images: number; loads: number; runs: number }>> = {
  swiftshader: [
    { name: 'micro', images: 2, loads: 5, runs: 10 },
    { name: 'v2-micro', images: 2, loads: 5, runs: 10 },
    { name: 'convnext-tiny-224', images: 1, loads: 2, runs: 2 },
  ],
  lavapipe: [
    { name: 'micro', images: 2, loads: 2, runs: 10 },
    { name: 'v2-micro', images: 2, loads: 2, runs: 10 },
    { name: 'convnext-tiny-224', images: 1, loads: 1, runs: 3 },
  ],
};

/** CLI passes over every golden case, per driver; ConvNeXt-T (batch 2) only in the first pass. */
const CLI_PASSES = 3;
const inPass = (name: string, pass: number) => name !== 'convnext-tiny-224' || pass === 0;

describe.each(['swiftshader', 'lavapipe'] as const)('WebGPU on %s never hangs or crashes', (driver) => {
  test('many loads and runs in one process, a full GC between each, no reference to create([]) kept', { timeout: 600_000 }, async () => {
    const cases = IN_PROCESS[driver].map((c) => ({
      dir: packages.get(c.name), golden: goldenPath('models', c.name, 'golden.safetensors'), images: c.images, loads: c.loads, runs: c.runs,
    }));
    const result = await runChild(['--expose-gc', STRESS_CHILD, JSON.stringify({ cases })], driver, 540_000);
    expect(result.code, why(result)).toBe(0);
    const reports = result.stdout.trim().split('\n').map((line) => JSON.parse(line) as { dir: string; runs: number; maxError: number; backend: string });
    expect(reports.map((r) => r.runs)).toEqual(IN_PROCESS[driver].map((c) => c.loads * c.runs));
    console.log(`[stress ${driver}] ${(result.ms / 1000).toFixed(1)} s: ${reports.map((r) => `${r.dir.split('/').pop()} ${r.runs} runs, logits within ${r.maxError.toExponential(1)}`).join('; ')}`);
  });

  test('cxc run over every golden case, several passes, every output within the golden bar', { timeout: 900_000 }, async () => {
    const started = performance.now();
    for (let pass = 0; pass < CLI_PASSES; pass++) {
      for (const testCase of CASES.filter((c) => inPass(c.name, pass))) {
        const goldenFile = goldenPath('models', testCase.golden, 'golden.safetensors');
        const output = join(work, `${driver}-${testCase.name}-${pass}.safetensors`);
        const args = [CLI, 'run', packages.get(testCase.name)!, '--input', goldenFile, '--output', output, '--json'];
        if (testCase.hiddenStates) args.push('--output-hidden-states');
        const result = await runChild(args, driver, 240_000);
        expect(result.code, `${testCase.name} pass ${pass}: ${why(result)}`).toBe(0);
        expect(JSON.parse(result.stdout.trim().split('\n').pop()!).backend).toMatch(driver === 'lavapipe' ? /llvmpipe/ : /SwiftShader/);
        expectMatchesGolden(output, testCase.golden, testCase.dir.endsWith('backbone'));
      }
    }
    console.log(`[stress ${driver}] cxc run: ${CLI_PASSES} passes over ${CASES.length} cases in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  });

  // (test/cli.test.ts checks the same on SwiftShader.)
  if (driver === 'lavapipe') test('cxc check on a V2 model', { timeout: 300_000 }, async () => {
    const result = await runChild([CLI, 'check', goldenPath('models', 'v2-micro'), '--target', 'webgpu', '--json'], driver, 240_000);
    expect(result.code, why(result)).toBe(0);
    const report = JSON.parse(result.stdout.trim().split('\n').pop()!);
    expect(report.failed).toBe(0);
    expect(report.passed).toBeGreaterThanOrEqual(8);
  });
});

/** Every tensor `cxc run` wrote against its golden (backbones: the backbone.* keys). */
function expectMatchesGolden(outputFile: string, goldenCase: string, backbone: boolean): void {
  const golden = readGolden('models', goldenCase, 'golden.safetensors');
  const written = readSafetensors(new Uint8Array(readFileSync(outputFile)), outputFile);
  expect(written.size).toBeGreaterThanOrEqual(3);
  for (const [name, tensor] of written) {
    const key = backbone && name.startsWith('feature_maps.') ? `backbone.${name}` : name;
    const expected = golden.get(key);
    expect(expected, `${outputFile}: golden ${key}`).toBeDefined();
    const { maxError, tolerance } = compare(floats(tensor, name), floats(expected, key));
    expect(maxError, `${outputFile}: ${name}`).toBeLessThanOrEqual(tolerance);
  }
}
