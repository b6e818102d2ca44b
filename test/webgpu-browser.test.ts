/**
 * The WebGPU target in a real browser: generated packages (buildModule, --target webgpu) loaded
 * by a page of Debian's headless chromium with --enable-unsafe-webgpu (SwiftShader), served from
 * 127.0.0.1, driven by puppeteer-core. micro and v2-micro must match their goldens there too, and
 * the page must really have run on WebGPU.
 *
 * The packages are built by the compiled CLI (dist/, from `npm run build`), as a user builds them.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildPackage } from './helpers/cli.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CASES = ['micro', 'v2-micro'] as const;

const work = mkdtempSync(join(tmpdir(), 'cxc-webgpu-browser-'));
let server: Server | undefined;
let origin = '';
let browser: Browser | undefined;

const MIME: Record<string, string> = {
  '.js': 'text/javascript', '.json': 'application/json', '.bin': 'application/octet-stream', '.html': 'text/html',
};

/** Serves `root` read-only; nothing outside it. */
function serve(root: string): Promise<string> {
  server = createServer((request, response) => {
    const path = normalize(join(root, decodeURIComponent(new URL(request.url ?? '/', 'http://x').pathname)));
    if (!path.startsWith(root + sep)) {
      response.writeHead(403).end();
      return;
    }
    try {
      const file = statSync(path).isDirectory() ? join(path, 'index.html') : path;
      response.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server!.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server!.address() as AddressInfo).port}`)));
}

interface PageOutputs {
  backend: string;
  outputs: Record<string, number[]>;
}

/**
 * The page: loads a generated package by URL and runs it on the given NCHW input. (Kept as page
 * source rather than a function given to page.evaluate, which vitest would rewrite.)
 */
const HARNESS = `<!doctype html>
<meta charset="utf-8">
<title>cxc WebGPU harness</title>
<script type="module">
  window.runPackage = async (moduleUrl, input, [batch, , height, width]) => {
    const { default: load } = await import(moduleUrl);
    const model = await load();
    try {
      const out = await model.run(new Float32Array(input), { batch, height, width, outputHiddenStates: true });
      const outputs = { last_hidden_state: Array.from(out.lastHiddenState) };
      if (out.logits) outputs.logits = Array.from(out.logits);
      if (out.poolerOutput) outputs.pooler_output = Array.from(out.poolerOutput);
      (out.hiddenStates ?? []).forEach((state, i) => (outputs['hidden_states.' + i] = Array.from(state)));
      return { backend: model.backend, outputs };
    } finally {
      model.dispose();
    }
  };
  window.harnessReady = true;
</script>
`;

describe('WebGPU target in headless chromium (SwiftShader)', () => {
  beforeAll(async () => {
    for (const name of CASES) await buildPackage(goldenPath('models', name), join(work, name), 'webgpu');
    writeFileSync(join(work, 'harness.html'), HARNESS);
    origin = await serve(work);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', `--user-data-dir=${mkdtempSync(join(work, 'profile-'))}`,
      ],
    });
  }, 300_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    rmSync(work, { recursive: true, force: true });
  });

  for (const name of CASES) {
    test(`${name}: every output matches the golden`, { timeout: 300_000 }, async () => {
      const golden = readGolden('models', name, 'golden.safetensors');
      const pixels = golden.get('pixel_values')!;
      const [batch, , height, width] = pixels.shape;
      const page = await browser!.newPage();
      const problems: string[] = [];
      page.on('pageerror', (error) => problems.push(String(error)));
      // Served from 127.0.0.1: a secure context, as WebGPU requires.
      await page.goto(`${origin}/harness.html`);
      await page.waitForFunction('window.harnessReady === true');
      const result = (await page.evaluate(
        `window.runPackage(${JSON.stringify(`${origin}/${name}/index.js`)}, ${JSON.stringify(Array.from(floats(pixels)))}, ${JSON.stringify(pixels.shape)})`,
      )) as PageOutputs;
      await page.close();
      expect(problems).toEqual([]);
      expect(result.backend).toMatch(/WebGPU/);

      const expected = ['logits', 'pooler_output', 'last_hidden_state', ...Array.from({ length: 5 }, (_, i) => `hidden_states.${i}`)];
      expect(Object.keys(result.outputs).sort()).toEqual(expected.sort());
      const report: string[] = [];
      for (const [key, values] of Object.entries(result.outputs)) {
        const { maxError, tolerance } = compare(new Float32Array(values), floats(golden.get(key), key));
        report.push(`${key} ${maxError.toExponential(1)}`);
        expect(maxError, `${key} max |error|`).toBeLessThanOrEqual(tolerance);
      }
      console.log(`[webgpu-browser] ${name}, batch ${batch} at ${height}x${width} on ${result.backend}\n  ${report.join(', ')}`);
    });
  }
});
