/**
 * How the WASM backend takes in its weights: straight into linear memory, checksummed chunk
 * by chunk as the bytes arrive, while a warm-up run of every kernel overlaps the read. Over
 * HTTP (the browser path: a fetch body streamed into memory) and from files (several reads in
 * flight), the model must compute exactly what it computes from bytes handed over at once,
 * and every way a served file can be wrong must give the message that names it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ConvNextModel } from '../runtime/model.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { goldenPath } from './helpers/golden.js';

/** What each path of the test server sends: the weights as they are, or damaged in one way. */
type Serving = { body: Uint8Array; declareLength: boolean; chunkSizes?: number[] };

describe.each(['micro', 'v2-micro'])('WASM weights loading: %s', (modelCase) => {
  let built: BuiltModule;
  let server: Server;
  let base: string;
  let weights: Uint8Array;
  let reference: Float32Array;
  let input: Float32Array;
  let size: number;
  const routes = new Map<string, Serving>();
  const models: ConvNextModel[] = [];

  beforeAll(async () => {
    built = await buildToTemp({ input: goldenPath('models', modelCase), target: 'wasm' });
    weights = new Uint8Array(readFileSync(join(built.dir, 'weights.bin')));
    const corrupt = weights.slice();
    corrupt[Math.floor(corrupt.length / 2)] ^= 0x40;
    // Odd chunk sizes: the checksum must carry lanes across chunks that end mid-block.
    const oddChunks = [1, 15, 17, 4093, 65537, 7];
    routes.set('/whole', { body: weights, declareLength: true });
    routes.set('/chunked', { body: weights, declareLength: false, chunkSizes: oddChunks });
    routes.set('/short-declared', { body: weights.subarray(0, weights.length - 64), declareLength: true });
    routes.set('/short-chunked', { body: weights.subarray(0, weights.length - 5), declareLength: false, chunkSizes: oddChunks });
    routes.set('/long-chunked', { body: new Uint8Array([...weights, 1, 2, 3, 4]), declareLength: false, chunkSizes: oddChunks });
    routes.set('/corrupt', { body: corrupt, declareLength: true });
    server = createServer((request, response) => {
      const serving = routes.get(request.url ?? '');
      if (!serving) {
        response.writeHead(404).end();
        return;
      }
      response.writeHead(200, serving.declareLength ? { 'content-length': String(serving.body.length) } : {});
      if (!serving.chunkSizes) {
        response.end(serving.body);
        return;
      }
      let at = 0;
      for (let i = 0; at < serving.body.length; i++) {
        const length = serving.chunkSizes[i % serving.chunkSizes.length];
        response.write(serving.body.subarray(at, at + length));
        at += length;
      }
      response.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    // The reference: weights handed over as bytes (no streaming, no overlap).
    const model = await built.load({ weights: weights.slice() });
    models.push(model);
    size = model.config.imageSize;
    input = new Float32Array(3 * size * size).map((_, i) => Math.sin(i * 0.37) * 1.5);
    reference = (await model.run(input, { batch: 1, height: size, width: size })).lastHiddenState;
    expect(reference.length).toBeGreaterThan(0);
    expect(reference.every(Number.isFinite)).toBe(true);
    expect(reference.some((x) => x !== 0)).toBe(true);
  });
  afterAll(async () => {
    for (const model of models) model.dispose();
    await new Promise((resolve) => server?.close(resolve));
    built?.remove();
  });

  const lastHiddenState = async (options: Parameters<BuiltModule['load']>[0]) => {
    const model = await built.load(options);
    models.push(model);
    return (await model.run(input, { batch: 1, height: size, width: size })).lastHiddenState;
  };

  test.each(['/whole', '/chunked'])('streamed over HTTP (%s): the same outputs, bit for bit, with progress up to the full size', async (path) => {
    const seen: number[] = [];
    const outputs = await lastHiddenState({ weights: `${base}${path}`, onProgress: ({ loaded, total }) => seen.push(loaded, total) });
    expect(outputs).toEqual(reference);
    expect(seen.at(-1)).toBe(weights.length);
    expect(seen.at(-2)).toBe(weights.length);
  });

  test('read from a file (default weights.bin, or a copy; 2 threads too): the same outputs', async () => {
    expect(await lastHiddenState({})).toEqual(reference);
    // Two threads add V2's GRN sums in another order: equal to rounding, not bit for bit.
    const twoThreads = await lastHiddenState({ threads: 2 });
    const scale = Math.max(1, ...reference.map(Math.abs));
    expect(Math.max(...twoThreads.map((x, i) => Math.abs(x - reference[i])))).toBeLessThan(1e-5 * scale);
    const copy = join(built.dir, 'copy-of-weights.bin');
    writeFileSync(copy, weights);
    expect(await lastHiddenState({ weights: copy })).toEqual(reference);
  });

  test.each([
    ['/short-declared', /is \d+ bytes but .* expects \d+/],
    ['/short-chunked', /is \d+ bytes but .* expects \d+/],
    ['/long-chunked', /is more than \d+ bytes but .* expects \d+/],
    ['/corrupt', /has checksum [0-9a-f]+ but .* was built for [0-9a-f]+: it is corrupt/],
    ['/missing', /HTTP 404/],
  ])('a served file that is wrong (%s) is refused with a message that names the problem', async (path, message) => {
    await expect(built.load({ weights: `${base}${path}` })).rejects.toThrow(message);
  });
});
