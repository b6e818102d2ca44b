/**
 * The browser demo (examples/browser) as a person uses it: `cxc serve` on 127.0.0.1, Debian's
 * headless chromium driven by puppeteer-core, the cat photo uploaded through the file input.
 * - ConvNeXt-T on WASM (forced with ?backend=wasm: WebGPU on SwiftShader takes tens of seconds
 *   for it): the top 5 equals the golden end-to-end top 5. Screenshot: test-artifacts/browser-demo.png.
 * - micro, a webgpu and a wasm build served side by side: with WebGPU on (SwiftShader) the page
 *   picks WebGPU; with it off, WASM and the reason. Both give the top 5 the package gives in Node.
 * - The page runs the model in a Web Worker and says where the weights came from: downloaded on the
 *   first visit, from Cache Storage on the next; several files go to classify() as one batch.
 * - The server itself: isolation headers, MIME types, and no way out of its folders.
 *
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildPackage, CLI_PATH } from './helpers/cli.js';
import { decodeImageFile } from '../compiler/image.js';
import type { ConvNextModel } from '../runtime/model.js';
import { floats, goldenPath, readGolden } from './helpers/golden.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ARTIFACTS = join(ROOT, 'test-artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const PHOTO = goldenPath('preprocess', 'chelsea.png');

const work = mkdtempSync(join(tmpdir(), 'cxc-browser-'));
const dirs = { tinyWasm: join(work, 'convnext-tiny-224-wasm'), microWasm: join(work, 'micro-wasm'), microWebgpu: join(work, 'micro-webgpu') };
let server: ChildProcess | undefined;
let base = '';
const browsers: Browser[] = [];

async function launch(webgpu: boolean): Promise<Browser> {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(webgpu ? ['--enable-unsafe-webgpu'] : []),
      `--user-data-dir=${mkdtempSync(join(work, 'profile-'))}`,
    ],
  });
  browsers.push(browser);
  return browser;
}

const build = (input: string, target: 'wasm' | 'webgpu', out: string) => buildPackage(input, out, target);

/** Starts `cxc serve` on a free port and returns its URL, read from its first line. */
function serve(packages: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    server = spawn(process.execPath, [CLI_PATH, 'serve', ...packages, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    server.stdout!.on('data', (chunk) => {
      stdout += chunk;
      const url = /serving the cxc demo at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout)?.[1];
      if (url) resolve(url);
    });
    server.stderr!.on('data', (chunk) => (stderr += chunk));
    server.on('exit', (code) => reject(new Error(`cxc serve exited (${code}): ${stderr}`)));
  });
}

interface PageResult {
  state: string;
  top: Array<{ index: number; label: string; score: number }>;
  backend: string;
  description: string;
  reason: string;
  timings: string[];
  error: string;
  weightsFrom: string;
  batch: number[];
}

/** Opens the page, uploads the photo through the file input, waits for the result. */
async function classifyInPage(browser: Browser, query: string, screenshot?: string, photos = [PHOTO]): Promise<{ result: PageResult; problems: string[]; page: Page }> {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(`page error: ${(error as Error).message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()} ${r.url()}`));
  await page.goto(`${base}${query}`);
  const result = await uploadAndRead(page, photos);
  if (screenshot) {
    mkdirSync(ARTIFACTS, { recursive: true });
    // let the bars finish their animation
    await new Promise((r) => setTimeout(r, 600));
    await page.screenshot({ path: join(ARTIFACTS, screenshot), fullPage: true });
  }
  return { result, problems, page };
}

/** Uploads the files through the file input, waits for the result and reads the page. */
async function uploadAndRead(page: Page, photos: string[]): Promise<PageResult> {
  const input = await page.waitForSelector('#file');
  await (input as unknown as { uploadFile(...paths: string[]): Promise<void> }).uploadFile(...photos);
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), { timeout: 240_000 });
  return page.evaluate(() => ({
    state: document.body.dataset.state ?? '',
    top: Array.from(document.querySelectorAll<HTMLElement>('#results li:not(.placeholder)')).map((li) => ({
      index: Number(li.dataset.index), label: li.dataset.label ?? '', score: Number(li.dataset.score),
    })),
    backend: document.getElementById('backend-badge')!.dataset.backend ?? '',
    description: document.getElementById('backend-description')!.textContent ?? '',
    reason: document.getElementById('backend-reason')!.textContent ?? '',
    timings: ['t-handoff', 't-classify', 't-blocked'].map((id) => document.getElementById(id)!.textContent ?? ''),
    error: document.getElementById('error')!.textContent ?? '',
    weightsFrom: document.getElementById('weights-from')!.dataset.from ?? '',
    batch: Array.from(document.querySelectorAll<HTMLElement>('#batch li')).map((li) => Number(li.dataset.index)),
  }));
}

/** What the micro package says in Node for the photo: the page must agree. */
async function microTop5InNode(): Promise<number[]> {
  const { load } = (await import(pathToFileURL(join(dirs.microWasm, 'index.js')).href)) as { load(): Promise<ConvNextModel> };
  const model = await load();
  try {
    return (await model.classify(await decodeImageFile(PHOTO), { topK: 5 })).map((t) => t.index);
  } finally {
    model.dispose();
  }
}

describe('browser demo', () => {
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}: apt-get install chromium`);
    const started = performance.now();
    // Built by the CLI, as a user would: emit.ts's import.meta.resolve does not survive vitest's module transform.
    await Promise.all([
      build(goldenPath('models', 'convnext-tiny-224'), 'wasm', dirs.tinyWasm),
      build(goldenPath('models', 'micro'), 'wasm', dirs.microWasm).then(() => build(goldenPath('models', 'micro'), 'webgpu', dirs.microWebgpu)),
    ]);
    console.log(`built ConvNeXt-T (wasm) and micro (wasm, webgpu) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    base = await serve([dirs.tinyWasm, dirs.microWasm, dirs.microWebgpu]);
  }, 600_000);

  afterAll(async () => {
    for (const browser of browsers) await browser.close().catch(() => {});
    server?.kill('SIGTERM');
    rmSync(work, { recursive: true, force: true });
  });

  test('ConvNeXt-T on WASM: the cat photo gives the golden end-to-end top 5', async () => {
    const browser = await launch(false);
    const started = performance.now();
    const { result, problems } = await classifyInPage(browser, '?model=convnext-tiny-224&backend=wasm', 'browser-demo.png');
    console.log(`ConvNeXt-T in chromium (WASM): page load + upload + result ${((performance.now() - started) / 1000).toFixed(1)} s; ` +
      `page / classify (worker) / page blocked ${result.timings.join(' / ')}; ${result.description}`);
    expect(result.error).toBe('');
    expect(result.state).toBe('done');
    expect(problems).toEqual([]);
    const logits = floats(readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors').get('logits'), 'logits');
    const goldenTop5 = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 5);
    expect(result.top.map((t) => t.index)).toEqual(goldenTop5);
    // the scores shown are the softmax of the golden logits, to float32 accuracy
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    let sum = 0;
    for (const v of logits) sum += Math.exp(v - max);
    for (const t of result.top) expect(t.score).toBeCloseTo(Math.exp(logits[t.index] - max) / sum, 6);
    expect(result.top[0].label).toBe('mailbox');
    expect(result.backend).toBe('wasm');
    expect(result.description).toMatch(/^WASM .*SIMD.*, in a Web Worker$/);
    expect(result.weightsFrom).toBe('network');
    expect(result.timings[2]).toBe('0.0ms'); // no main-thread task over 50 ms while it classified
    expect(result.reason).toContain('?backend=wasm');
    expect(result.timings.every((t) => /^\d+(\.\d)?ms$/.test(t))).toBe(true);
  });

  test('micro: the page picks WebGPU where the browser has it, and agrees with Node', async () => {
    const browser = await launch(true);
    const started = performance.now();
    const { result, problems } = await classifyInPage(browser, '?model=micro', 'browser-demo-webgpu.png');
    console.log(`micro in chromium (WebGPU on SwiftShader): ${((performance.now() - started) / 1000).toFixed(1)} s; ${result.description}`);
    expect(result.error).toBe('');
    expect(problems).toEqual([]);
    expect(result.backend).toBe('webgpu');
    expect(result.description).toMatch(/WebGPU/);
    expect(result.top.map((t) => t.index)).toEqual(await microTop5InNode());
  });

  test('micro: without WebGPU the page runs WASM and says why; the next visit takes the weights from the cache; several files are one batch', async () => {
    const browser = await launch(false);
    const { result, problems, page } = await classifyInPage(browser, '?model=micro', 'browser-demo-fallback.png');
    expect(result.weightsFrom).toBe('network');
    expect(result.error).toBe('');
    expect(problems).toEqual([]);
    expect(result.backend).toBe('wasm');
    expect(result.reason).toMatch(/^WebGPU unavailable: no GPU adapter \(requestAdapter\(\) returned null/);
    const top5 = await microTop5InNode();
    expect(result.top.map((t) => t.index)).toEqual(top5);
    // "Run again" classifies the same image once more
    await page.click('#again');
    await page.waitForFunction(() => document.body.dataset.state === 'done', { timeout: 60_000 });
    expect(await page.$$eval('#results li', (items) => items.map((li) => Number((li as HTMLElement).dataset.index)))).toEqual(top5);
    // The next visit: weights from Cache Storage (test/browser-runtime.test.ts counts the requests), and two files as one batch.
    await page.reload();
    const again = await uploadAndRead(page, [PHOTO, goldenPath('preprocess', 'coffee.png')]);
    expect(again.error).toBe('');
    expect(again.weightsFrom).toBe('cache');
    expect(again.top.map((t) => t.index)).toEqual(top5);
    expect(again.batch).toHaveLength(1);
    expect(await page.$eval('#weights-from', (el) => el.textContent)).toMatch(/from Cache Storage/);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'browser-demo-cached-batch.png'), fullPage: true });
  });

  describe('cxc serve', () => {
    /** A raw request: the path goes out exactly as written (no URL normalisation). */
    function get(path: string, options: { method?: string; host?: string } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
      const url = new URL(base);
      return new Promise((resolve, reject) => {
        const req = request({ host: url.hostname, port: url.port, path, method: options.method ?? 'GET', headers: options.host ? { host: options.host } : {} }, (res) => {
          let body = '';
          res.setEncoding('latin1');
          res.on('data', (chunk) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
        });
        req.on('error', reject);
        req.end();
      });
    }

    test('cross-origin isolation headers and MIME types', async () => {
      const cases: Array<[string, string]> = [
        ['/', 'text/html; charset=utf-8'],
        ['/app.js', 'text/javascript; charset=utf-8'],
        ['/style.css', 'text/css; charset=utf-8'],
        ['/models.json', 'application/json; charset=utf-8'],
        ['/models/micro-wasm/index.js', 'text/javascript; charset=utf-8'],
        ['/models/micro-wasm/kernels.wasm', 'application/wasm'],
        ['/models/micro-wasm/weights.bin', 'application/octet-stream'],
      ];
      for (const [path, type] of cases) {
        const response = await get(path);
        expect(response.status, path).toBe(200);
        expect(response.headers['content-type'], path).toBe(type);
        expect(response.headers['cross-origin-opener-policy']).toBe('same-origin');
        expect(response.headers['cross-origin-embedder-policy']).toBe('require-corp');
        expect(Number(response.headers['content-length'])).toBe(Buffer.byteLength(response.body, 'latin1'));
      }
      const { models } = JSON.parse((await get('/models.json')).body) as { models: Array<{ name: string; target: string; path: string }> };
      expect(models.map((m) => `${m.name} ${m.target} ${m.path}`)).toEqual([
        'convnext-tiny-224-wasm wasm /models/convnext-tiny-224-wasm/',
        'micro-wasm wasm /models/micro-wasm/',
        'micro-webgpu webgpu /models/micro-webgpu/',
      ]);
    });

    test('refuses everything outside its folders', async () => {
      symlinkSync('/etc/passwd', join(dirs.microWasm, 'escape.txt'));
      for (const path of ['/models/micro-wasm/..%2F..%2F..%2Fetc%2Fpasswd', '/..%2f..%2fetc/passwd', '/models/micro-wasm/escape.txt', '/models/micro-wasm/.cxc-build', '/models/micro-wasm/..%5c..%5cpackage.json']) {
        const response = await get(path);
        expect(response.status, path).toBe(403);
        expect(response.body).not.toMatch(/root:|"name": "cxc"/);
      }
      // dot segments, plain or encoded, are resolved by URL rules before anything is looked up: they stay inside
      for (const path of ['/../../etc/passwd', '/%2e%2e/%2e%2e/package.json', '/models/micro-wasm/../../../etc/passwd']) {
        const response = await get(path);
        expect(response.status, path).toBe(404);
        expect(response.body).not.toMatch(/root:|"name": "cxc"/);
      }
      expect((await get('/models/nope/index.js')).status).toBe(404);
      expect((await get('/nope.html')).status).toBe(404);
      expect((await get('/models/micro-wasm/%E0%A4%A')).status).toBe(400);
      expect((await get('/', { method: 'POST' })).status).toBe(405);
      expect((await get('/', { host: 'attacker.example:80' })).status).toBe(403);
      expect((await get('/', { method: 'HEAD' })).body).toBe('');
    });
  });
});
