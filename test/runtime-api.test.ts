/**
 * The model API beyond run(), in Node:
 * - labels as transformers names them (config.id2label with string keys, config.label2id) and
 *   config.problem_type, parsed from config.json with errors naming the field;
 * - loss() by problem_type, as transformers computes it (MSE, cross-entropy with ignore_index
 *   -100, BCE with logits), checked on values worked out by hand, and its inference when unset;
 * - classify([...]) batches; image inputs Node cannot decode give an error naming what to pass;
 * - load({ worker: true }) in a worker thread: bit-identical outputs, transferred results, the
 *   caller's input left intact, errors of the same class, dispose() ending the worker; and in a
 *   process of its own, many load/classify/dispose cycles with forced GC that exit by themselves.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { computeLoss, inferProblemType, modelConfig, sameSizeGroups, stack } from '../runtime/model.js';
import type { ModelManifest } from '../runtime/types.js';
import type { ConvNextModel } from '../runtime/model.js';
import { buildToTemp, type BuiltModule } from './helpers/build.js';
import { goldenPath } from './helpers/golden.js';

const MICRO = { num_stages: 2, hidden_sizes: [8, 16], depths: [1, 1] };

describe('config: labels and problem_type', () => {
  test('id2label and label2id as transformers has them', () => {
    const spec = parseModelConfig({ ...MICRO, id2label: { '0': 'cat', '1': 'dog', '2': 'cat' } }, 'config.json');
    // no label2id: id2label inverted, a repeated label keeping its last index (dict(zip(values, keys)))
    expect(spec.label2id).toEqual([['cat', 2], ['dog', 1]]);
    const given = parseModelConfig({ ...MICRO, id2label: { '0': 'a', '1': 'b' }, label2id: { a: 0, b: 1, B: 1 } }, 'config.json');
    expect(given.label2id).toEqual([['a', 0], ['b', 1], ['B', 1]]);
    expect(parseModelConfig(MICRO, 'config.json').label2id).toEqual([['LABEL_0', 0], ['LABEL_1', 1]]);
    expect(() => parseModelConfig({ ...MICRO, id2label: { '0': 'a', '1': 'b' }, label2id: { a: 2 } }, 'config.json')).toThrow(/field "label2id\["a"\]" is 2: expected a class index 0\.\.1/);
    expect(() => parseModelConfig({ ...MICRO, label2id: ['a'] }, 'config.json')).toThrow(/field "label2id".*expected an object/);
  });

  test('labels such as __proto__ stay data in config.id2label and label2id', () => {
    const spec = parseModelConfig({ ...MICRO, id2label: { '0': '__proto__', '1': 'constructor' } }, 'config.json');
    const config = modelConfig({ labels: spec.labels, label2id: spec.label2id, steps: [] } as unknown as ModelManifest);
    expect(Object.keys(config.label2id)).toEqual(['__proto__', 'constructor']);
    expect(config.label2id.__proto__).toBe(0);
    expect(Object.getPrototypeOf(config.label2id)).toBe(Object.prototype);
    expect(config.id2label).toEqual({ 0: '__proto__', 1: 'constructor' });
  });

  test('problem_type: the three transformers names or null; anything else is an error naming the field', () => {
    for (const value of ['regression', 'single_label_classification', 'multi_label_classification'] as const) {
      expect(parseModelConfig({ ...MICRO, problem_type: value }, 'config.json').problemType).toBe(value);
    }
    expect(parseModelConfig({ ...MICRO, problem_type: null }, 'config.json').problemType).toBeNull();
    expect(parseModelConfig(MICRO, 'config.json').problemType).toBeNull();
    expect(() => parseModelConfig({ ...MICRO, problem_type: 'classification' }, 'config.json')).toThrow(/field "problem_type" is "classification": expected null or one of regression, single_label_classification, multi_label_classification/);
  });
});

/** Just what loss() reads. */
function lossManifest(numLabels: number, problemType: ModelManifest['problemType'] = null): ModelManifest {
  return { name: 'm', numLabels, problemType } as ModelManifest;
}

describe('loss() follows problem_type', () => {
  const logits = new Float32Array([1, 2, 3, 0.5, -1, 2]); // [2, 3]

  test('single_label_classification: mean cross-entropy, -100 ignored', () => {
    const m = lossManifest(3, 'single_label_classification');
    // log(e^1 + e^2 + e^3) - 3 and log(e^0.5 + e^-1 + e^2) - 0.5
    const first = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3;
    const second = Math.log(Math.exp(0.5) + Math.exp(-1) + Math.exp(2)) - 0.5;
    expect(computeLoss(m, logits, [2, 0])).toBeCloseTo((first + second) / 2, 6);
    expect(first).toBeCloseTo(0.4076059644, 9);
    expect(computeLoss(m, logits, [2, -100])).toBeCloseTo(first, 6);
    expect(computeLoss(m, logits, [-100, -100])).toBeNaN(); // torch's mean over no items
    expect(() => computeLoss(m, logits, [3, 0])).toThrow(/label 3 of item 0 is not a class index 0\.\.2/);
    expect(() => computeLoss(m, logits, [1])).toThrow(/1 labels for a batch of 2/);
  });

  test('multi_label_classification: mean binary cross-entropy with logits over float targets', () => {
    const m = lossManifest(3, 'multi_label_classification');
    const targets = [1, 0, 1, 0, 1, 0.25];
    // softplus(x) - x*y, stable; worked out per element
    const expected = [Math.log1p(Math.exp(-1)), Math.log1p(Math.exp(2)), Math.log1p(Math.exp(-3)), Math.log1p(Math.exp(0.5)), Math.log1p(Math.exp(1)), Math.log1p(Math.exp(2)) - 2 * 0.25];
    expect(computeLoss(m, logits, new Float32Array(targets))).toBeCloseTo(expected.reduce((a, b) => a + b) / 6, 6);
    // stable for large logits: x = 100, y = 1 gives log1p(e^-100) ~ 3.7e-44, not NaN or Infinity
    expect(computeLoss(lossManifest(1, 'multi_label_classification'), new Float32Array([100]), [1])).toBeCloseTo(0, 12);
    expect(() => computeLoss(m, logits, [1, 0])).toThrow(/2 labels for 2 x 3 logits: multi_label_classification needs one float target per logit/);
  });

  test('regression: mean squared error over every logit', () => {
    expect(computeLoss(lossManifest(1), new Float32Array([1, 2.5]), [0, 3])).toBeCloseTo((1 + 0.25) / 2, 9);
    expect(computeLoss(lossManifest(3, 'regression'), logits, [1, 2, 3, 0.5, -1, 0])).toBeCloseTo(4 / 6, 6);
    expect(() => computeLoss(lossManifest(3, 'regression'), logits, [1, 2])).toThrow(/regression needs one target per logit/);
  });

  test('unset problem_type is inferred as transformers does (torch dtypes -> typed arrays; plain arrays by length)', () => {
    const m = lossManifest(3);
    expect(inferProblemType(lossManifest(1), [0.5], 1)).toBe('regression');
    expect(inferProblemType(m, new Int32Array([2, 0]), 2)).toBe('single_label_classification');
    expect(inferProblemType(m, new BigInt64Array(2) as unknown as ArrayLike<number>, 2)).toBe('single_label_classification');
    expect(inferProblemType(m, new Float32Array(6), 2)).toBe('multi_label_classification');
    expect(inferProblemType(m, [2, 0], 2)).toBe('single_label_classification');
    expect(inferProblemType(m, [1, 0, 1, 0, 1, 0], 2)).toBe('multi_label_classification');
    expect(inferProblemType(lossManifest(3, 'regression'), new Int32Array(6), 2)).toBe('regression'); // set: it wins
    expect(computeLoss(m, logits, [2, 0])).toBeCloseTo(computeLoss(lossManifest(3, 'single_label_classification'), logits, [2, 0]), 12);
  });
});

describe('the package in Node: batches, image inputs, worker threads', () => {
  let micro: BuiltModule;
  let local: ConvNextModel;
  let remote: ConvNextModel;
  const png = PNG.sync.read(readFileSync(goldenPath('preprocess', 'chelsea.png')));
  const photo = { data: png.data, width: png.width, height: png.height, channels: 4 as const };
  const noise = { data: Uint8Array.from({ length: 97 * 61 * 3 }, (_, i) => (i * 7919) % 251), width: 97, height: 61, channels: 3 as const };

  beforeAll(async () => {
    micro = await buildToTemp({ input: goldenPath('models', 'micro'), target: 'wasm' });
    local = await micro.load();
    remote = await micro.load({ worker: true, threads: 2 });
  }, 120_000);

  afterAll(() => {
    local?.dispose();
    remote?.dispose();
    micro?.remove();
  });

  test('config carries id2label (string keys), label2id and problem_type', () => {
    expect(local.config.id2label['3']).toBe('LABEL_3');
    expect(local.config.label2id.LABEL_3).toBe(3);
    expect(Object.keys(local.config.id2label)).toHaveLength(local.config.numLabels);
    expect(local.config.problemType).toBeNull();
    expect(remote.config).toEqual(local.config);
  });

  test('classify([...]) gives one top-k list per image, as classifying each alone does', async () => {
    const alone = [await local.classify(photo, { topK: 3 }), await local.classify(noise, { topK: 3 })];
    const batch = await local.classify([photo, noise, photo], { topK: 3 });
    expect(batch).toHaveLength(3);
    for (const [i, expected] of [alone[0], alone[1], alone[0]].entries()) {
      expect(batch[i].map((t) => t.index)).toEqual(expected.map((t) => t.index));
      batch[i].forEach((t, k) => expect(t.score).toBeCloseTo(expected[k].score, 5));
    }
    expect(await local.classify([], { topK: 3 })).toEqual([]);
  });

  test('a batch of mixed sizes (a processor without resizing) runs as one batch per size, results in input order', () => {
    const input = (height: number, width: number, fill: number) => ({ pixelValues: new Float32Array(3 * height * width).fill(fill), height, width });
    const inputs = [input(40, 32, 1), input(32, 32, 2), input(40, 32, 3), input(32, 32, 4), input(48, 48, 5)];
    expect(sameSizeGroups(inputs)).toEqual([[0, 2], [1, 3], [4]]);
    const batch = stack([inputs[0], inputs[2]]);
    expect({ batch: batch.batch, height: batch.height, width: batch.width }).toEqual({ batch: 2, height: 40, width: 32 });
    expect([batch.pixelValues[0], batch.pixelValues[3 * 40 * 32]]).toEqual([1, 3]);
  });

  test('Node cannot decode a Blob or a URL: the error says what to pass', async () => {
    for (const source of [new Blob([readFileSync(goldenPath('preprocess', 'chelsea.png'))]), 'cat.png', new URL('https://example.com/cat.png')]) {
      await expect(local.classify(source)).rejects.toThrow(/cannot decode a (Blob|string|URL) here: in Node, pass decoded pixels \{ data, width, height, channels: 3 \| 4 \}/);
      await expect(remote.classify(source)).rejects.toThrow(/in Node, pass decoded pixels/);
    }
    await expect(local.classify({ width: 3 } as never)).rejects.toThrow(/cannot read an image from an object with keys width: pass ImageData/);
    await expect(remote.classify({ width: 3 } as never)).rejects.toThrow(/cannot read an image from an object with keys width: pass ImageData/);
    // ImageData-like pixels (no channels: RGBA) are read as they are
    const rgba = { data: new Uint8ClampedArray(png.data), width: png.width, height: png.height };
    expect((await local.classify(rgba as never)).map((t) => t.index)).toEqual((await local.classify(photo)).map((t) => t.index));
  });

  test('worker: true runs in a worker thread with bit-identical outputs, transferred back', async () => {
    expect(remote.backend).toMatch(/^WASM .*2 threads, in a worker thread$/);
    expect(remote.weightsFrom).toBe('file');
    const { pixelValues, height, width } = remote.preprocess(photo);
    const batch = new Float32Array(pixelValues.length * 2);
    batch.set(pixelValues);
    batch.set(pixelValues, pixelValues.length);
    const options = { batch: 2, height, width, outputHiddenStates: true };
    const [mine, theirs] = [await local.run(batch, options), await remote.run(batch, options)];
    expect(batch[0]).toBe(pixelValues[0]); // the caller's input is copied, not detached
    expect(theirs.shapes).toEqual(mine.shapes);
    expect(Buffer.compare(Buffer.from(theirs.logits!.buffer), Buffer.from(mine.logits!.buffer))).toBe(0);
    expect(theirs.hiddenStates!.map((h) => h.length)).toEqual(mine.hiddenStates!.map((h) => h.length));
    theirs.hiddenStates!.forEach((h, i) => expect(Buffer.compare(Buffer.from(h.buffer), Buffer.from(mine.hiddenStates![i].buffer))).toBe(0));
    // results own their buffers (transferred), not views into something bigger
    expect(theirs.lastHiddenState.byteLength).toBe(theirs.lastHiddenState.buffer.byteLength);
    expect(await remote.classify([photo, noise], { topK: 4 })).toEqual(await local.classify([photo, noise], { topK: 4 }));
    expect(remote.loss(theirs.logits!, [1, 2])).toBe(local.loss(mine.logits!, [1, 2]));
  });

  test('worker: true takes weights as bytes: copied once for the worker, the caller keeps them', async () => {
    const bytes = new Uint8Array(readFileSync(join(micro.dir, 'weights.bin')));
    const model = await micro.load({ worker: true, weights: bytes });
    try {
      expect(model.weightsFrom).toBe('bytes');
      expect(bytes.byteLength).toBeGreaterThan(0); // not detached
      expect(await model.classify(photo)).toEqual(await local.classify(photo));
    } finally {
      model.dispose();
    }
  });

  test('worker: true keeps the error classes and messages of the model', async () => {
    await expect(remote.run(new Float32Array(3), { batch: 1, height: 8, width: 8 })).rejects.toThrow(RangeError);
    await expect(remote.classify(photo, { topK: 0 })).rejects.toThrow(/topK must be a positive integer, got 0/);
    // thrown inside the worker (the image is checked there): same class and text
    await expect(remote.classify({ data: new Uint8Array(5), width: 2, height: 2, channels: 3 })).rejects.toThrow(
      await local.classify({ data: new Uint8Array(5), width: 2, height: 2, channels: 3 }).then(() => 'no error', (e: Error) => e.message),
    );
    // an input that cannot be sent at all (not structured-cloneable) is refused, and nothing hangs
    await expect(remote.classify({ data: Symbol('pixels'), width: 2, height: 2, channels: 3 } as never)).rejects.toThrow(/cannot send this input to the worker/);
    await expect(micro.load({ worker: true, weights: '/nonexistent/weights.bin' })).rejects.toThrow(/cannot read the weights file \/nonexistent\/weights\.bin \(ENOENT\)/);
  });

  test('dispose() ends the worker; many cycles with forced GC in a process of its own exit by themselves', async () => {
    const model = await micro.load({ worker: true });
    model.dispose();
    await expect(model.classify(photo)).rejects.toThrow(/disposed/);
    const script = join(micro.dir, 'cycles.mjs');
    writeFileSync(script, `
      import { load } from './index.js';
      import { readFileSync } from 'node:fs';
      const threads = () => Number(/^Threads:\\s+(\\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
      const warm = await load();
      warm.dispose();
      const before = threads();
      const image = { data: new Uint8Array(96 * 80 * 3).fill(77), width: 96, height: 80, channels: 3 };
      const rss = [];
      let during = 0;
      for (let i = 0; i < 12; i++) {
        const model = await load({ worker: true, threads: 2 });
        during = Math.max(during, threads());
        await model.classify([image, image]);
        model.dispose();
        globalThis.gc();
        rss.push(process.memoryUsage().rss);
      }
      await new Promise((r) => setTimeout(r, 300)); // the last worker finishes exiting
      // no model left: the process ends here, with no timer or worker keeping it alive
      console.log(JSON.stringify({ first: rss[2], last: rss[11], before, during, after: threads() }));
    `);
    const started = performance.now();
    const out = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, ['--expose-gc', script], { timeout: 60_000 }, (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout))));
    const { first, last, before, during, after } = JSON.parse(out) as Record<string, number>;
    console.log(`12 worker load/classify/dispose cycles (2 WASM threads each): ${((performance.now() - started) / 1000).toFixed(1)} s, ` +
      `RSS ${(first / 2 ** 20).toFixed(0)} -> ${(last / 2 ** 20).toFixed(0)} MiB, OS threads ${before} -> ${during} (loaded) -> ${after}`);
    expect(last - first).toBeLessThan(64 * 2 ** 20);
    expect(during).toBeGreaterThan(before); // the worker and its WASM thread were there
    expect(after).toBeLessThanOrEqual(before + 1); // and are gone
  }, 90_000);
});
