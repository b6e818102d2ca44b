/**
 * The CLI as users run it: a real process on the compiled dist/compiler/cli.js (npm test
 * compiles it first). One runner for every test that calls it.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const CLI_PATH = fileURLToPath(new URL('../../dist/compiler/cli.js', import.meta.url));

export interface CliResult {
  /** Exit code; null when a signal ended it (then `signal` says which). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the watchdog killed it. */
  timedOut: boolean;
}

export interface CliOptions {
  /** Kill the process (SIGKILL) after this long; the result then says timedOut (default 10 minutes). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Node flags before the script, e.g. ['--expose-gc']. */
  nodeArgs?: string[];
}

/** Runs `cxc ...args` without blocking vitest's worker (a blocked worker misses its own RPC deadlines). */
export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  if (!existsSync(CLI_PATH)) throw new Error('dist/compiler/cli.js is missing: run `npm run build` first');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), CLI_PATH, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, cwd: options.cwd,
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 600_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** `cxc ...args` with the default options. */
export const cxc = (...args: string[]): Promise<CliResult> => runCli(args);

/** `cxc build INPUT --target TARGET -o OUT`, failing with its stderr when the build fails. */
export async function buildPackage(input: string, out: string, target: 'wasm' | 'webgpu' = 'wasm', extra: string[] = []): Promise<void> {
  const result = await runCli(['build', input, '--target', target, '-o', out, ...extra], { timeoutMs: 300_000 });
  if (result.code !== 0) throw new Error(`cxc build ${input} --target ${target} failed (${result.code ?? result.signal}): ${result.stderr}`);
}
