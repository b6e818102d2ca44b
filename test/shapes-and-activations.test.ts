/**
 * The built WASM module against the float64 reference (test/helpers/reference.ts),
 * where no golden file exists: odd, non-square and minimal input sizes and batches,
 * every activation transformers' ACT2FN offers, checkpoints without layer scale, a
 * base ConvNextModel checkpoint, and the input errors run() must refuse.
 * Bar: max |out - ref| <= 1e-4 * max(1, max |ref|) for every output tensor.
 *
 * Variants are built once each into a temporary folder (never into ../shared).
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { buildModule, type CompiledModule } from '../compiler/build.js';
import { parseModelConfig, type ModelSpec } from '../compiler/config.js';
import { bindCheckpoint, type CheckpointWeights } from '../compiler/checkpoint.js';
import { CxcError } from '../compiler/errors.js';
import { readSafetensors, writeSafetensors, type TensorEntry } from '../compiler/safetensors.js';
import { createModel, type ConvNextModel } from '../runtime/model.js';
import { ACTIVATIONS, type Activation, type Backend, type ModelOutputs } from '../runtime/types.js';
import { goldenPath, hasGolden } from './helpers/golden.js';
import { referenceForward, type RefTensor } from './helpers/reference.js';

const BAR = 1e-4;
const MODELS = goldenPath('models');
const work = mkdtempSync(join(tmpdir(), 'cxc-shapes-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// ---------------------------------------------------------------------------
// helpers

/** mulberry32: a small seeded PRNG, so every run sees the same "random" inputs. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values in the range normalized ImageNet pixels take, about [-2.1, 2.6]. */
function randomPixels(count: number, seed: number): Float32Array {
  const next = prng(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = next() * 4.7 - 2.1;
  return out;
}

interface Variant {
  /** The model folder that was built (config.json + model.safetensors). */
  dir: string;
  spec: ModelSpec;
  weights: CheckpointWeights;
  compiled: CompiledModule;
  /** The built package. */
  outDir: string;
  model: ConvNextModel;
}

let builds = 0;

/** Builds a checkpoint folder for the WASM target, loads the module, and binds the reference's weights. */
async function buildVariant(dir: string, name: string): Promise<Variant> {
  const outDir = join(work, `out-${name}-${builds++}`);
  const compiled = await buildModule({ input: dir, target: 'wasm', outDir, force: true });
  const mod = (await import(pathToFileURL(join(outDir, 'index.js')).href)) as { load(): Promise<ConvNextModel> };
  const model = await mod.load();
  const tensors = readSafetensors(new Uint8Array(readFileSync(join(dir, 'model.safetensors'))), join(dir, 'model.safetensors'));
  const spec = parseModelConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), join(dir, 'config.json'), { tensorNames: tensors.keys() });
  return { dir, spec, weights: bindCheckpoint(spec, tensors, dir), compiled, outDir, model };
}

const cache = new Map<string, Promise<Variant>>();
/** One build per variant, shared by every test that needs it. */
function variant(key: string, makeDir: () => string): Promise<Variant> {
  if (!cache.has(key)) cache.set(key, buildVariant(makeDir(), key.replace(/[^a-z0-9]+/gi, '-')));
  return cache.get(key)!;
}
afterAll(async () => {
  for (const pending of cache.values()) (await pending.catch(() => undefined))?.model.dispose();
});

/** A temporary checkpoint folder: a config.json object and a safetensors file (bytes or a path to copy). */
function writeModelFolder(name: string, config: object, weights: Uint8Array | string): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  if (typeof weights === 'string') copyFileSync(weights, join(dir, 'model.safetensors'));
  else writeFileSync(join(dir, 'model.safetensors'), weights);
  return dir;
}

const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
const readTensors = (path: string) => readSafetensors(new Uint8Array(readFileSync(path)), path);
const tensorsToWrite = (entries: Array<[string, TensorEntry]>) =>
  entries.map(([name, t]) => [name, { shape: t.shape, data: t.data }] as [string, { shape: number[]; data: Float32Array | Uint8Array }]);

/** Every output of a run by transformers' name. */
function outputsByName(out: ModelOutputs): Map<string, Float32Array> {
  const named = new Map<string, Float32Array>();
  if (out.logits) named.set('logits', out.logits);
  if (out.poolerOutput) named.set('pooler_output', out.poolerOutput);
  named.set('last_hidden_state', out.lastHiddenState);
  out.hiddenStates?.forEach((t, k) => named.set(`hidden_states.${k}`, t));
  out.featureMaps?.forEach((t, k) => named.set(`feature_maps.${k}`, t));
  return named;
}

/** Largest error seen per test group, for the report. */
const worst = new Map<string, { error: number; relative: number; where: string }>();

function compareToReference(group: string, label: string, out: ModelOutputs, ref: Map<string, RefTensor>): void {
  const actual = outputsByName(out);
  expect([...actual.keys()].sort(), `${label}: output names`).toEqual([...ref.keys()].sort());
  expect(Object.keys(out.shapes).sort(), `${label}: shape names`).toEqual([...ref.keys()].sort());
  for (const [name, expected] of ref) {
    const got = actual.get(name)!;
    expect(out.shapes[name], `${label} ${name}: shape`).toEqual(expected.shape);
    expect(got.length, `${label} ${name}: length`).toBe(expected.data.length);
    let maxError = 0;
    let maxRef = 0;
    for (let i = 0; i < got.length; i++) {
      const error = Math.abs(got[i] - expected.data[i]);
      if (!(error <= maxError)) maxError = Number.isNaN(error) ? Infinity : error;
      maxRef = Math.max(maxRef, Math.abs(expected.data[i]));
    }
    const bar = BAR * Math.max(1, maxRef);
    const relative = maxError / Math.max(1, maxRef);
    const previous = worst.get(group);
    if (!previous || relative > previous.relative) worst.set(group, { error: maxError, relative, where: `${label} ${name}` });
    expect(maxError, `${label} ${name}: max error ${maxError} over bar ${bar}`).toBeLessThanOrEqual(bar);
  }
}

afterAll(() => {
  for (const [group, w] of worst) {
    console.log(`${group}: worst max|out-ref| = ${w.error.toExponential(2)} (${w.relative.toExponential(2)} of max(1,|ref|)) at ${w.where}`);
  }
});

async function runAndCompare(group: string, v: Variant, batch: number, height: number, width: number, seed: number): Promise<void> {
  const pixels = randomPixels(batch * v.spec.numChannels * height * width, seed);
  const out = await v.model.run(pixels, { batch, height, width, outputHiddenStates: true });
  const ref = referenceForward(v.spec, v.weights, pixels, batch, height, width);
  compareToReference(group, `${v.spec.architecture} ${batch}x${height}x${width}`, out, ref);
}

const microDir = () => join(MODELS, 'micro');
const microConfig = () => readJson(join(MODELS, 'micro', 'config.json'));
const microWeightsPath = join(MODELS, 'micro', 'model.safetensors');

// ---------------------------------------------------------------------------

describe.skipIf(!hasGolden())('shapes and activations (WASM vs float64 reference)', () => {
  describe('(a) odd, non-square and minimal sizes, batches', () => {
    const sizes: Array<[number, number, number]> = [
      [3, 67, 93],
      [1, 32, 32], // the minimum: patch 4 x 2^3
      [2, 45, 130],
    ];
    const cases: Array<[string, () => string]> = [
      ['micro', microDir],
      ['v2-micro', () => join(MODELS, 'v2-micro')],
      ['micro/backbone', () => join(MODELS, 'micro', 'backbone')],
    ];
    for (const [name, dir] of cases) {
      for (const [batch, height, width] of sizes) {
        test(`${name} batch ${batch} at ${height}x${width}`, async () => {
          const v = await variant(name, dir);
          expect(v.compiled.manifest.minInputSize).toBe(32);
          await runAndCompare('(a) sizes', v, batch, height, width, 1000 * batch + height + width);
        });
      }
    }

    test('micro without relaxed SIMD at 67x93 batch 3', async () => {
      const v = await variant('micro', microDir);
      const mod = (await import(pathToFileURL(join(v.outDir, 'index.js')).href)) as { load(o: object): Promise<ConvNextModel> };
      const plain = await mod.load({ relaxedSimd: false });
      try {
        const pixels = randomPixels(3 * 3 * 67 * 93, 7);
        const out = await plain.run(pixels, { batch: 3, height: 67, width: 93, outputHiddenStates: true });
        compareToReference('(a) sizes', 'micro simd128 3x67x93', out, referenceForward(v.spec, v.weights, pixels, 3, 67, 93));
      } finally {
        plain.dispose();
      }
    });

    test('hidden states are left out unless asked for', async () => {
      const v = await variant('micro', microDir);
      const out = await v.model.run(randomPixels(3 * 40 * 36, 3), { batch: 1, height: 40, width: 36 });
      expect(out.hiddenStates).toBeUndefined();
      expect(Object.keys(out.shapes).sort()).toEqual(['last_hidden_state', 'logits', 'pooler_output']);
      expect(out.shapes.last_hidden_state).toEqual([1, 64, 1, 1]);
    });
  });

  describe('(b) every activation', () => {
    /**
     * micro with its MLPs amplified (pwconv1 x3, pwconv2 x4): pre-activations then reach
     * past 10, so the clips of relu6 and gelu_10 and the saturating ends of tanh, sigmoid and
     * exp all run, and erf-GELU and tanh-GELU end up further apart than the bar.
     */
    let hot: Uint8Array | undefined;
    const hotTensors = () => {
      const tensors = readTensors(microWeightsPath);
      for (const [name, tensor] of tensors) {
        const factor = name.includes('.pwconv1.') ? 3 : name.includes('.pwconv2.') ? 4 : 1;
        if (factor !== 1) (tensor.data as Float32Array).forEach((v, i, a) => (a[i] = v * factor));
      }
      return tensors;
    };
    const hotWeights = () => (hot ??= writeSafetensors(tensorsToWrite([...hotTensors()])));
    const [batch, height, width, seed] = [2, 37, 50, 42];

    for (const act of ACTIVATIONS) {
      test(act, async () => {
        const v = await variant(`act-${act}`, () => writeModelFolder(`act-${act}`, { ...microConfig(), hidden_act: act }, hotWeights()));
        expect(v.spec.hiddenAct).toBe(act);
        expect(v.compiled.manifest.hiddenAct).toBe(act);
        await runAndCompare(`(b) ${act}`, v, batch, height, width, seed);
      });
    }

    test('the reference tells the activations apart on this model', () => {
      // Otherwise a target that computed the wrong activation could still pass (b): the outputs
      // of every two different formulas must differ by more than twice the bar in some output.
      // Same-formula names excepted (gelu_fast's 0.7978845608 is sqrt(2/pi) to 1e-11).
      const same: Partial<Record<string, Activation>> = {
        gelu_python: 'gelu', swish: 'silu', gelu_pytorch_tanh: 'gelu_new', gelu_accurate: 'gelu_new', gelu_fast: 'gelu_new',
      };
      const tensors = hotTensors();
      const pixels = randomPixels(batch * 3 * height * width, seed);
      const outputs = new Map(ACTIVATIONS.map((act) => {
        const spec = parseModelConfig({ ...microConfig(), hidden_act: act }, 'config.json', { tensorNames: tensors.keys() });
        return [act, referenceForward(spec, bindCheckpoint(spec, tensors, 'micro'), pixels, batch, height, width)];
      }));
      /** Largest over outputs of max |a - b| / bar(a). */
      const separation = (a: Map<string, RefTensor>, b: Map<string, RefTensor>) => {
        let ratio = 0;
        for (const [name, ta] of a) {
          const tb = b.get(name)!.data;
          const scale = Math.max(1, ta.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0));
          ratio = Math.max(ratio, ta.data.reduce((m, v, i) => Math.max(m, Math.abs(v - tb[i])), 0) / (BAR * scale));
        }
        return ratio;
      };
      let closest = { ratio: Infinity, pair: '' };
      for (const act of ACTIVATIONS) {
        const twin = same[act];
        if (twin) {
          expect(separation(outputs.get(act)!, outputs.get(twin)!), `${act} is ${twin}`).toBeLessThan(1e-4);
          continue;
        }
        for (const other of ACTIVATIONS) {
          if (other === act || same[other]) continue;
          const ratio = separation(outputs.get(act)!, outputs.get(other)!);
          if (ratio < closest.ratio) closest = { ratio, pair: `${act} vs ${other}` };
          expect(ratio, `${act} vs ${other}: (max difference) / bar`).toBeGreaterThan(2);
        }
      }
      console.log(`closest two activations: ${closest.pair}, ${closest.ratio.toFixed(1)} x the bar apart`);
    });
  });

  describe('(c) no layer scale', () => {
    const withoutLayerScale = () => {
      const kept = [...readTensors(microWeightsPath)].filter(([name]) => !name.endsWith('.layer_scale_parameter'));
      return writeSafetensors(tensorsToWrite(kept));
    };
    const noLayerScale = (init: number) =>
      variant(`no-layer-scale-${init}`, () =>
        writeModelFolder(`no-layer-scale-${init}`, { ...microConfig(), layer_scale_init_value: init }, withoutLayerScale()),
      );
    for (const init of [0, -1]) {
      test(`layer_scale_init_value ${init} with a checkpoint without layer_scale_parameter`, async () => {
        const v = await noLayerScale(init);
        expect(v.spec.layerScale).toBe(false);
        for (const stage of v.weights.stages) for (const block of stage.blocks) expect(block.layerScale).toBeUndefined();
        await runAndCompare('(c) no layer scale', v, 2, 45, 39, 5);
      });
    }

    test('the reference without layer scale differs from micro with it', async () => {
      // Guards (c): dropping the tensors must change the model, or (c) would prove nothing.
      const v = await noLayerScale(0);
      const withScale = await variant('micro', microDir);
      const pixels = randomPixels(3 * 45 * 39, 6);
      const a = referenceForward(v.spec, v.weights, pixels, 1, 45, 39).get('logits')!.data;
      const b = referenceForward(withScale.spec, withScale.weights, pixels, 1, 45, 39).get('logits')!.data;
      expect(a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0)).toBeGreaterThan(1e-2);
    });

    test('micro\'s own weights are rejected: unexpected layer_scale_parameter tensors', async () => {
      const tensors = readTensors(microWeightsPath);
      const names = [...tensors.keys()].filter((n) => n.endsWith('.layer_scale_parameter'));
      expect(names.length).toBe(5);
      for (const init of [0, -0.5]) {
        const spec = parseModelConfig({ ...microConfig(), layer_scale_init_value: init }, 'config.json', { tensorNames: tensors.keys() });
        let error: unknown;
        try {
          bindCheckpoint(spec, tensors, 'model.safetensors');
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(CxcError);
        const message = (error as Error).message;
        for (const name of names) expect(message).toContain(`unexpected tensor ${name}`);
        expect(message).not.toContain('missing tensor');
      }
      // And through the whole compiler.
      const dir = writeModelFolder('layer-scale-rejected', { ...microConfig(), layer_scale_init_value: 0 }, microWeightsPath);
      await expect(buildModule({ input: dir, target: 'wasm', outDir: join(work, 'out-rejected'), force: true })).rejects.toThrow(
        /unexpected tensor convnext\.encoder\.stages\.0\.layers\.0\.layer_scale_parameter/,
      );
    });
  });

  describe('(d) base ConvNextModel checkpoint', () => {
    const baseDir = () => {
      const kept = [...readTensors(microWeightsPath)]
        .filter(([name]) => !name.startsWith('classifier.'))
        .map(([name, t]) => [name.replace(/^convnext\./, ''), t] as [string, TensorEntry]);
      return writeModelFolder('base', { ...microConfig(), architectures: ['ConvNextModel'] }, writeSafetensors(tensorsToWrite(kept)));
    };
    for (const [batch, height, width] of [[2, 64, 64], [1, 51, 77]] as const) {
      test(`pooler_output and last_hidden_state, no logits, batch ${batch} at ${height}x${width}`, async () => {
        const v = await variant('base', baseDir);
        expect(v.spec.head).toBe('base');
        expect(v.compiled.manifest.architecture).toBe('ConvNextModel');
        const pixels = randomPixels(batch * 3 * height * width, 11 + batch);
        const out = await v.model.run(pixels, { batch, height, width });
        expect(out.logits).toBeUndefined();
        expect(out.shapes.logits).toBeUndefined();
        expect(out.shapes.pooler_output).toEqual([batch, 64]);
        const ref = referenceForward(v.spec, v.weights, pixels, batch, height, width);
        expect(ref.has('logits')).toBe(false);
        ref.forEach((_, key) => key.startsWith('hidden_states.') && ref.delete(key));
        compareToReference('(d) base model', `ConvNextModel ${batch}x${height}x${width}`, out, ref);
      });
    }
  });

  describe('input errors are refused before any kernel runs', () => {
    const valid = { batch: 2, height: 35, width: 33 };
    const goodPixels = () => randomPixels(2 * 3 * 35 * 33, 99);
    const withNaN = () => {
      const p = goodPixels();
      p[1234] = NaN;
      return p;
    };
    const bad: Array<[string, () => Float32Array, object, RegExp]> = [
      ['wrong length', () => goodPixels().subarray(1), valid, /pixelValues has 6929 values but batch 2 x 3 channels x 35 x 33 needs 6930/],
      ['height below the minimum', () => randomPixels(2 * 3 * 31 * 33, 1), { ...valid, height: 31 }, /input 31x33 is too small.*at least 32x32/],
      ['width below the minimum', () => randomPixels(2 * 3 * 35 * 4, 1), { ...valid, width: 4 }, /input 35x4 is too small/],
      ['NaN input', withNaN, valid, /pixelValues\[1234\] is NaN/],
      ['Infinity input', () => Object.assign(goodPixels(), { 7: -Infinity }), valid, /pixelValues\[7\] is -Infinity/],
      ['non-integer batch', () => randomPixels(3 * 3 * 35 * 33, 1), { ...valid, batch: 1.5 }, /batch must be a positive integer, got 1\.5/],
      ['zero batch', () => new Float32Array(0), { ...valid, batch: 0 }, /batch must be a positive integer, got 0/],
      ['non-integer height', goodPixels, { ...valid, height: 35.5 }, /height must be a positive integer, got 35\.5/],
    ];

    test.each(bad)('the built module rejects: %s', async (_, pixels, options, message) => {
      const v = await variant('micro', microDir);
      await expect(v.model.run(pixels(), options as never)).rejects.toThrow(message);
    });

    test.each(bad)('no backend call for: %s', async (_, pixels, options, message) => {
      const v = await variant('micro', microDir);
      let calls = 0;
      const spy: Backend = {
        name: 'wasm',
        description: 'spy',
        run: async () => {
          calls++;
          throw new Error('a kernel ran');
        },
        dispose: () => undefined,
      };
      const model = createModel(v.compiled.manifest, spy);
      await expect(model.run(pixels(), options as never)).rejects.toThrow(message);
      expect(calls).toBe(0);
      // The spy does run for a valid input, so calls === 0 above means something.
      await expect(model.run(goodPixels(), valid)).rejects.toThrow('a kernel ran');
      expect(calls).toBe(1);
    });

    test('the module still computes correctly after refusing bad inputs', async () => {
      const v = await variant('micro', microDir);
      for (const [, pixels, options] of bad) await v.model.run(pixels(), options as never).catch(() => undefined);
      await runAndCompare('(a) sizes', v, 2, 35, 33, 99);
    });
  });
});
