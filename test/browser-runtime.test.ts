/**
 * The generated package in a page as people use it (headless Debian chromium, puppeteer-core),
 * served cross-origin isolated from 127.0.0.1 by a server in this file that counts requests:
 * - Cache Storage: a second load makes no request for weights.bin; a tampered entry (one byte
 *   flipped, or cut short) is detected, deleted and downloaded again; cache: false skips it;
 *   clearCache() empties it; a worker reads the same cache; so does a WebGPU package (SwiftShader).
 * - load({ worker: true }): ConvNeXt-T classifies the cat photo to the golden top 5 with no
 *   main-thread long task (PerformanceObserver 'longtask') while it classifies; WASM threads
 *   start from the worker (micro, 2 threads).
 * - Every image source type (ImageData, <img>, canvas, OffscreenCanvas, ImageBitmap, VideoFrame,
 *   Blob, File, URL string and object, raw pixels) in one classify([...]) batch through the
 *   worker: each gives the golden top 5. On the main thread (micro) each gives what Node gives
 *   for the decoded pixels.
 * - Every PNG of ../shared/golden/preprocess decoded from a Blob: byte-identical to Pillow's
 *   pixels; a translucent PNG keeps its exact unpremultiplied colours.
 * Packages are built by the compiled CLI (dist/), as a user builds them. One browser launch.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PNG } from 'pngjs';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildPackage } from './helpers/cli.js';
import type { ConvNextModel } from '../runtime/model.js';
import { floats, goldenPath, readGolden } from './helpers/golden.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const PREPROCESS_DIR = goldenPath('preprocess');

const work = mkdtempSync(join(tmpdir(), 'cxc-browser-runtime-'));
const dirs = {
  'micro-wasm': join(work, 'micro-wasm'), 'micro-webgpu': join(work, 'micro-webgpu'), 'tiny-wasm': join(work, 'tiny-wasm'), 'tiny-q8-wasm': join(work, 'tiny-q8-wasm'),
} as const;
let server: Server | undefined;
let origin = '';
let browser: Browser | undefined;
/** Requests the server answered, by path. */
const hits = new Map<string, number>();
const weightsHits = (pkg: keyof typeof dirs) => hits.get(`/pkg/${pkg}/weights.bin`) ?? 0;

const MIME: Record<string, string> = {
  '.js': 'text/javascript', '.json': 'application/json', '.bin': 'application/octet-stream', '.wasm': 'application/wasm', '.html': 'text/html', '.png': 'image/png',
};

/**
 * The test page: a long-task observer from the first moment, and the page-side steps as plain
 * page source (functions given to page.evaluate would be rewritten by vitest's transform).
 */
const PAGE = `<!doctype html><meta charset="utf-8"><title>cxc runtime</title><script>
  window.longTasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.longTasks.push({ start: e.startTime, duration: e.duration }); })
    .observe({ type: 'longtask', buffered: true });
</script><script type="module">
  const pkg = (name) => import('/pkg/' + name + '/index.js');
  const cacheOf = async (prefix) => {
    const names = (await caches.keys()).filter((n) => n.startsWith(prefix));
    if (names.length !== 1) return { names, cache: undefined };
    return { names, cache: await caches.open(names[0]) };
  };
  window.harness = {
    async loadOnce(name, options) {
      const model = await (await pkg(name)).load(options);
      const from = model.weightsFrom;
      model.dispose();
      return from;
    },
    async clearCache(name) { return (await pkg(name)).clearCache(); },
    /** The cached copy: its size and middle byte. */
    async cached(prefix) {
      const { names, cache } = await cacheOf(prefix);
      if (!cache) return { names, size: -1, byte: -1, key: '' };
      const [request] = await cache.keys();
      const bytes = new Uint8Array(await (await cache.match(request)).arrayBuffer());
      return { names, size: bytes.length, byte: bytes[bytes.length >> 1], key: request.url };
    },
    async tamper(prefix, how) {
      const { cache } = await cacheOf(prefix);
      const [request] = await cache.keys();
      const bytes = new Uint8Array(await (await cache.match(request)).arrayBuffer());
      const bad = how === 'flip' ? bytes.slice() : bytes.slice(0, bytes.length - 4096);
      if (how === 'flip') bad[bytes.length >> 1] ^= 0x55;
      await cache.put(request, new Response(bad));
    },
    async decode(name, blob) {
      const { data, width, height, channels } = await (await pkg(name)).decodeImage(blob);
      let text = '';
      for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
      return { rgba: btoa(text), width, height, channels };
    },
    async decodeUrl(name, url) { return window.harness.decode(name, await (await fetch(url)).blob()); },
    async decodeBase64(name, base64) {
      return window.harness.decode(name, new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: 'image/png' }));
    },
    /** Every image source type, made from one PNG URL. */
    async sources(url) {
      const blob = await (await fetch(url)).blob();
      const img = new Image();
      img.src = url;
      await img.decode();
      const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
      const canvas = document.getElementById('canvas');
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext('2d').drawImage(bitmap, 0, 0);
      const offscreen = new OffscreenCanvas(bitmap.width, bitmap.height);
      offscreen.getContext('2d').drawImage(bitmap, 0, 0);
      const imageData = offscreen.getContext('2d').getImageData(0, 0, bitmap.width, bitmap.height);
      return {
        ImageData: imageData, HTMLImageElement: img, HTMLCanvasElement: canvas, OffscreenCanvas: offscreen, ImageBitmap: bitmap,
        VideoFrame: new VideoFrame(bitmap, { timestamp: 0 }), Blob: blob, File: new File([blob], 'chelsea.png', { type: 'image/png' }),
        'URL string': url, 'URL object': new URL(url, location.href),
        pixels: { data: new Uint8Array(imageData.data), width: imageData.width, height: imageData.height, channels: 4 },
      };
    },
    /** A control: a 120 ms task on this thread, which the observer must report. */
    async busy(ms) {
      const before = window.longTasks.length;
      await new Promise((resolve) => setTimeout(() => { const end = performance.now() + ms; while (performance.now() < end); resolve(); }, 0));
      await new Promise((r) => setTimeout(r, 200));
      return window.longTasks.slice(before).map((t) => t.duration);
    },
    /** ConvNeXt-T in a worker: the cat photo, then every source type in one batch; long tasks during each step. */
    async workerCat(name, url) {
      const during = (from, to) => window.longTasks.filter((t) => t.start + t.duration > from && t.start < to).map((t) => t.duration);
      const m = await pkg(name);
      const loadStart = performance.now();
      const model = await m.load({ worker: true });
      const classifyStart = performance.now();
      const top = await model.classify(url, { topK: 5 });
      const classifyEnd = performance.now();
      const sources = await window.harness.sources(url);
      const batchStart = performance.now();
      const tops = await model.classify(Object.values(sources), { topK: 5 });
      const batchEnd = performance.now();
      model.dispose();
      // The contrast: the same model on this thread (weights from the cache now) freezes the page.
      const onPage = await m.load();
      const pageStart = performance.now();
      await onPage.classify(url, { topK: 5 });
      const pageEnd = performance.now();
      onPage.dispose();
      await new Promise((r) => setTimeout(r, 200)); // let the observer deliver its entries
      return {
        onPageMs: pageEnd - pageStart, onPageLongTasks: during(pageStart, pageEnd),
        top: top.map((t) => t.index), backend: model.backend, weightsFrom: model.weightsFrom,
        loadMs: classifyStart - loadStart, classifyMs: classifyEnd - classifyStart, batchMs: batchEnd - batchStart,
        loadLongTasks: during(loadStart, classifyStart), classifyLongTasks: during(classifyStart, classifyEnd), batchLongTasks: during(batchStart, batchEnd),
        sources: Object.fromEntries(Object.keys(sources).map((key, i) => [key, tops[i].map((t) => t.index)])),
      };
    },
    /** micro on the main thread, each source type on its own; then in a worker with 2 threads. */
    async mainThread(name, url) {
      const sources = await window.harness.sources(url);
      const m = await pkg(name);
      const model = await m.load();
      const results = {};
      for (const [key, source] of Object.entries(sources)) results[key] = (await model.classify(source, { topK: 5 })).map((t) => t.index);
      const pre = await model.preprocess(sources.Blob);
      model.dispose();
      const threaded = await m.load({ worker: true, threads: 2 });
      const threadedTop = (await threaded.classify(sources.Blob, { topK: 5 })).map((t) => t.index);
      threaded.dispose();
      return { results, threadedTop, backend: threaded.backend, isolated: crossOriginIsolated, pixelValues: Array.from(pre.pixelValues.subarray(0, 64)) };
    },
  };
  window.harnessReady = true;
</script><canvas id="canvas"></canvas>`;

/** Calls a page-side step of the harness. */
function call<T>(page: Page, step: string, ...args: unknown[]): Promise<T> {
  return page.evaluate(`window.harness.${step}(${args.map((a) => JSON.stringify(a)).join(', ')})`) as Promise<T>;
}

const build = (input: string, out: string, target: 'wasm' | 'webgpu' = 'wasm', extra: string[] = []) => buildPackage(input, out, target, extra);

/** /pkg/<name>/... the built packages, /golden/... the golden PNGs, / the page; cross-origin isolated. */
function serve(): Promise<string> {
  const roots: Record<string, string> = { pkg: work, golden: PREPROCESS_DIR };
  server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url ?? '/', 'http://x').pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const headers = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Cache-Control': 'no-store' };
    if (path === '/') return void response.writeHead(200, { ...headers, 'Content-Type': 'text/html' }).end(PAGE);
    const [, top, ...rest] = path.split('/');
    const root = roots[top];
    const file = root && normalize(join(root, ...rest));
    if (!file || !file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) return void response.writeHead(404, headers).end();
    const body = readFileSync(file);
    response.writeHead(200, { ...headers, 'Content-Type': MIME[extname(file)] ?? 'application/octet-stream', 'Content-Length': body.byteLength }).end(body);
  });
  return new Promise((resolve) => server!.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server!.address() as AddressInfo).port}`)));
}

async function openPage(): Promise<{ page: Page; problems: string[]; warnings: string[] }> {
  const page = await browser!.newPage();
  const problems: string[] = [];
  const warnings: string[] = [];
  page.on('pageerror', (error) => problems.push(`page error: ${(error as Error).message}`));
  page.on('console', (message) => message.type() === 'warn' && warnings.push(message.text()));
  await page.goto(`${origin}/`);
  await page.waitForFunction('window.harnessReady === true');
  return { page, problems, warnings };
}

/** The golden top 5 of the cat photo (ConvNeXt-T, end to end). */
function goldenTop5(): number[] {
  const logits = floats(readGolden('models', 'convnext-tiny-224', 'end2end-chelsea.safetensors').get('logits'), 'logits');
  return [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 5);
}

describe('the package in a browser page', () => {
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}: apt-get install chromium`);
    await Promise.all([
      build(goldenPath('models', 'micro'), dirs['micro-wasm']).then(() => build(goldenPath('models', 'micro'), dirs['micro-webgpu'], 'webgpu')),
      build(goldenPath('models', 'convnext-tiny-224'), dirs['tiny-wasm']).then(() => build(goldenPath('models', 'convnext-tiny-224'), dirs['tiny-q8-wasm'], 'wasm', ['--weights-dtype', 'q8'])),
    ]);
    origin = await serve();
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--enable-unsafe-webgpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${mkdtempSync(join(work, 'profile-'))}`],
    });
  }, 600_000);

  afterAll(async () => {
    await browser?.close().catch(() => {});
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    rmSync(work, { recursive: true, force: true });
  });

  test('weights are kept in Cache Storage: a second load downloads nothing, a tampered entry is replaced', async () => {
    const { page, problems, warnings } = await openPage();
    const loadOnce = (options: Record<string, unknown> = {}) => call<string>(page, 'loadOnce', 'micro-wasm', options);
    const cached = () => call<{ names: string[]; size: number; byte: number; key: string }>(page, 'cached', 'cxc-weights:micro-wasm@');
    const tamper = (how: 'flip' | 'truncate') => call<void>(page, 'tamper', 'cxc-weights:micro-wasm@', how);
    const weightsBytes = statSync(join(dirs['micro-wasm'], 'weights.bin')).size;
    const goodByte = readFileSync(join(dirs['micro-wasm'], 'weights.bin'))[weightsBytes >> 1];

    expect(await loadOnce()).toBe('network');
    expect(weightsHits('micro-wasm')).toBe(1);
    const entry = await cached();
    expect(entry).toMatchObject({ names: ['cxc-weights:micro-wasm@1.0.0'], size: weightsBytes, byte: goodByte });
    expect(entry.key).toMatch(/\/pkg\/micro-wasm\/weights\.bin\?cxc-checksum=[0-9a-f]{8}$/);

    await page.reload();
    await page.waitForFunction('window.harnessReady === true');
    expect(await loadOnce()).toBe('cache');
    expect(await loadOnce({ worker: true })).toBe('cache');
    expect(weightsHits('micro-wasm')).toBe(1);

    for (const how of ['flip', 'truncate'] as const) {
      await tamper(how);
      const before = weightsHits('micro-wasm');
      await page.reload();
      await page.waitForFunction('window.harnessReady === true');
      expect(await loadOnce(), how).toBe('network');
      expect(weightsHits('micro-wasm'), how).toBe(before + 1);
      expect(await cached(), how).toMatchObject({ size: weightsBytes, byte: goodByte });
      expect(await loadOnce(), how).toBe('cache');
    }
    expect(warnings.filter((w) => /cached weights .* failed their checks and were deleted/.test(w))).toHaveLength(2);

    const before = weightsHits('micro-wasm');
    expect(await loadOnce({ cache: false })).toBe('network');
    expect(weightsHits('micro-wasm')).toBe(before + 1);
    expect(await call<boolean>(page, 'clearCache', 'micro-wasm')).toBe(true);
    expect((await cached()).names).toEqual([]);
    expect(await loadOnce()).toBe('network');
    expect(problems).toEqual([]);
    await page.close();
  }, 120_000);

  test('a WebGPU package reads the cache too (weights read whole, not streamed into WASM memory), in a worker', async () => {
    const { page, problems, warnings } = await openPage();
    const loadOnce = () => call<string>(page, 'loadOnce', 'micro-webgpu', { worker: true });
    // Each load on SwiftShader takes seconds: three make the case (stored, rejected when tampered, read).
    expect(await loadOnce()).toBe('network');
    await call<void>(page, 'tamper', 'cxc-weights:micro-webgpu@', 'flip');
    expect(await loadOnce()).toBe('network');
    expect(await loadOnce()).toBe('cache');
    expect(weightsHits('micro-webgpu')).toBe(2);
    expect(warnings.filter((w) => /cached weights .* failed their checks and were deleted/.test(w))).toHaveLength(1);
    expect(problems).toEqual([]);
    await page.close();
  }, 120_000);

  test('every PNG of the golden set decodes from a Blob to Pillow\'s pixels, byte for byte', async () => {
    const { page, problems } = await openPage();
    const pngs = readdirSync(PREPROCESS_DIR).filter((f) => f.endsWith('.png')).sort();
    expect(pngs.length).toBeGreaterThanOrEqual(5);
    type Decoded = { rgba: string; width: number; height: number; channels: number };
    const decodeInPage = (url: string) => call<Decoded>(page, 'decodeUrl', 'micro-wasm', url);
    for (const png of pngs) {
      const golden = readGolden('preprocess', png.replace(/\.png$/, '.safetensors')).get('image')!;
      const [height, width] = golden.shape;
      const decoded = await decodeInPage(`/golden/${png}`);
      expect({ width: decoded.width, height: decoded.height, channels: decoded.channels }, png).toEqual({ width, height, channels: 4 });
      const rgba = Buffer.from(decoded.rgba, 'base64');
      const rgb = Buffer.alloc(width * height * 3);
      for (let p = 0; p < width * height; p++) rgba.copy(rgb, p * 3, p * 4, p * 4 + 3);
      expect(Buffer.compare(rgb, Buffer.from(golden.data as Uint8Array)), `${png}: RGB bytes differ from Pillow's`).toBe(0);
    }
    // Translucent pixels: the colours stored in the file, not rounded through premultiplied alpha.
    const translucent = new PNG({ width: 61, height: 37 });
    for (let i = 0; i < translucent.data.length; i += 4) {
      translucent.data[i] = (i * 7) % 256;
      translucent.data[i + 1] = (i * 13 + 5) % 256;
      translucent.data[i + 2] = (i * 3 + 101) % 256;
      translucent.data[i + 3] = (i / 4) % 5 === 0 ? 255 : (i * 11) % 256;
    }
    const bytes = PNG.sync.write(translucent).toString('base64');
    const decodedTranslucent = await call<Decoded>(page, 'decodeBase64', 'micro-wasm', bytes);
    const decoded = [...Buffer.from(decodedTranslucent.rgba, 'base64')];
    const mismatched = decoded.findIndex((v, i) => v !== translucent.data[i] && translucent.data[i - (i % 4) + 3] !== 0);
    expect(mismatched, `first differing byte (alpha ${translucent.data[mismatched - (mismatched % 4) + 3]})`).toBe(-1);
    expect(problems).toEqual([]);
    await page.close();
  }, 120_000);

  test('worker: true: ConvNeXt-T classifies the cat photo to the golden top 5 with no long task on the page', async () => {
    const { page, problems } = await openPage();
    // The observer works here: a busy task on the page is reported.
    const control = await call<number[]>(page, 'busy', 120);
    expect(control.some((duration) => duration >= 110), `long tasks seen: ${JSON.stringify(control)}`).toBe(true);
    const result = await call<{
      top: number[]; backend: string; weightsFrom: string; loadMs: number; classifyMs: number; batchMs: number; onPageMs: number; onPageLongTasks: number[];
      loadLongTasks: number[]; classifyLongTasks: number[]; batchLongTasks: number[]; sources: Record<string, number[]>;
    }>(page, 'workerCat', 'tiny-wasm', '/golden/chelsea.png');
    console.log(`ConvNeXt-T in a Web Worker: load ${result.loadMs.toFixed(0)} ms (long tasks on the page: ${JSON.stringify(result.loadLongTasks)}), ` +
      `classify ${result.classifyMs.toFixed(0)} ms (long tasks: ${JSON.stringify(result.classifyLongTasks)}); ` +
      `11 sources in one batch ${result.batchMs.toFixed(0)} ms (long tasks: ${JSON.stringify(result.batchLongTasks)}); ${result.backend}; ` +
      `without the worker: classify ${result.onPageMs.toFixed(0)} ms, long tasks ${JSON.stringify(result.onPageLongTasks.map(Math.round))}`);
    expect(result.top).toEqual(goldenTop5());
    expect(result.backend).toMatch(/^WASM .*, in a Web Worker$/);
    expect(result.classifyLongTasks).toEqual([]);
    expect(result.batchLongTasks).toEqual([]);
    expect(Math.max(0, ...result.onPageLongTasks)).toBeGreaterThan(100); // the observer sees inference on the page
    expect(result.weightsFrom).toBe('network');
    expect(problems).toEqual([]);

    // Every image source type, in one batch: each the golden top 5.
    const { sources } = result;
    expect(Object.keys(sources)).toHaveLength(11);
    for (const [name, top] of Object.entries(sources)) expect(top, name).toEqual(goldenTop5());
    expect(problems).toEqual([]);
    await page.close();
  }, 300_000);

  test('a q8 package (integer kernels, Chromium\'s relaxed-SIMD build) classifies the cat photo to the golden top 5 in a worker', async () => {
    const { page, problems } = await openPage();
    const result = await call<{ top: number[]; backend: string; classifyMs: number; sources: Record<string, number[]> }>(page, 'workerCat', 'tiny-q8-wasm', '/golden/chelsea.png');
    console.log(`ConvNeXt-T q8 in a Web Worker: classify ${result.classifyMs.toFixed(0)} ms; ${result.backend}`);
    expect(result.top).toEqual(goldenTop5());
    expect(result.backend).toMatch(/^WASM .*, in a Web Worker$/);
    expect(problems).toEqual([]);
    await page.close();
  }, 300_000);

  test('on the main thread every source type gives what Node gives for the pixels (micro); threads start from a worker', async () => {
    const { page, problems } = await openPage();
    const inPage = await call<{ results: Record<string, number[]>; threadedTop: number[]; backend: string; isolated: boolean; pixelValues: number[] }>(
      page, 'mainThread', 'micro-wasm', '/golden/chelsea.png');
    const { load } = (await import(pathToFileURL(join(dirs['micro-wasm'], 'index.js')).href)) as { load(): Promise<ConvNextModel> };
    const model = await load();
    const png = PNG.sync.read(readFileSync(join(PREPROCESS_DIR, 'chelsea.png')));
    const nodeTop = (await model.classify({ data: png.data, width: png.width, height: png.height, channels: 4 }, { topK: 5 })).map((t) => t.index);
    const nodePixels = model.preprocess({ data: png.data, width: png.width, height: png.height, channels: 4 }).pixelValues;
    model.dispose();
    expect(Object.keys(inPage.results)).toHaveLength(11);
    for (const [name, top] of Object.entries(inPage.results)) expect(top, name).toEqual(nodeTop);
    expect(inPage.pixelValues).toEqual(Array.from(nodePixels.subarray(0, 64)));
    expect(inPage.isolated).toBe(true);
    expect(inPage.backend).toMatch(/2 threads, in a Web Worker$/);
    expect(inPage.threadedTop).toEqual(nodeTop);
    expect(problems).toEqual([]);
    await page.close();
  }, 120_000);
});
