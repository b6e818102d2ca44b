/**
 * PyTorch checkpoints read without Python (compiler/pytorch.ts, pickle.ts, zip.ts) and every
 * checkpoint format read tensor by tensor (checkpoint-files.ts). Fixtures come from torch.save
 * itself: test/fixtures/pytorch/make.py (committed outputs, so CI needs no torch).
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import { readSafetensors, writeSafetensors, type TensorEntry } from '../compiler/safetensors.js';
import { readCheckpointFile, readSafetensorsFile } from '../compiler/checkpoint-files.js';
import { readPytorchCheckpoint } from '../compiler/pytorch.js';
import { unpickle, type PickleValue } from '../compiler/pickle.js';
import { CxcError } from '../compiler/errors.js';
import { loadModelSource } from '../compiler/build.js';
import { parseModelConfig } from '../compiler/config.js';
import { bindCheckpoint, releaseWhenPacked } from '../compiler/checkpoint.js';
import { packWeights } from '../compiler/layout.js';
import { TARGETS } from '../compiler/targets.js';
import { withFile } from '../compiler/random-access.js';
import { readZipDirectory, readZipEntry } from '../compiler/zip.js';
import { compare, floats, goldenPath, readGolden } from './helpers/golden.js';
import { cxc } from './helpers/cli.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/pytorch/', import.meta.url));
const fixture = (...parts: string[]) => join(FIXTURES, ...parts);
/** The file every hostile pickle tries to create (make.py's MARKER). */
const MARKER = '/tmp/cxc-hostile-pickle-marker';

const work = mkdtempSync(join(tmpdir(), 'cxc-pytorch-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function bytesOf(tensor: TensorEntry): Buffer {
  return Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
}

/** Same names, dtypes, shapes and bit-identical values. */
function expectSameTensors(actual: Map<string, TensorEntry>, expected: Map<string, TensorEntry>): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [name, want] of expected) {
    const got = actual.get(name)!;
    expect({ name, dtype: got.dtype, shape: got.shape }).toEqual({ name, dtype: want.dtype, shape: want.shape });
    expect(bytesOf(got).equals(bytesOf(want)), `${name} differs`).toBe(true);
  }
}

/** A model folder: the golden config (copied at test time, never committed) and the given weight files. */
function modelFolder(name: string, goldenCase: string, files: Record<string, string>): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  copyFileSync(goldenPath('models', goldenCase, 'config.json'), join(dir, 'config.json'));
  for (const [target, source] of Object.entries(files)) copyFileSync(source, join(dir, target));
  return dir;
}

describe('torch.save checkpoints give the same tensors as safetensors', () => {
  test('float32, whole file', () => {
    expectSameTensors(readPytorchCheckpoint(fixture('micro', 'pytorch_model.bin')), readGolden('models', 'micro', 'model.safetensors'));
  });

  test('non-contiguous views: transposed, channels-last, strided slices at offsets of one shared storage', () => {
    expectSameTensors(readPytorchCheckpoint(fixture('micro-views', 'pytorch_model.bin')), readGolden('models', 'micro', 'model.safetensors'));
  });

  test.each(['f16', 'bf16'])('%s storages', (tag) => {
    const expected = readSafetensors(new Uint8Array(readFileSync(fixture(`micro-${tag}.safetensors`))), tag);
    expect([...expected.values()][0].dtype).toBe(tag.toUpperCase());
    expectSameTensors(readPytorchCheckpoint(fixture(`micro-${tag}.bin`)), expected);
  });

  test('ZIP64 end records (torch writes them; here the classic record is saturated so only they give the directory)', () => {
    const bytes = Uint8Array.from(readFileSync(fixture('micro', 'pytorch_model.bin')));
    const view = new DataView(bytes.buffer);
    let eocd = bytes.length - 22;
    while (view.getUint32(eocd, true) !== 0x06054b50) eocd--;
    view.setUint16(eocd + 8, 0xffff, true);
    view.setUint16(eocd + 10, 0xffff, true);
    view.setUint32(eocd + 12, 0xffffffff, true);
    view.setUint32(eocd + 16, 0xffffffff, true);
    const path = join(work, 'zip64.bin');
    writeFileSync(path, bytes);
    expectSameTensors(readPytorchCheckpoint(path), readGolden('models', 'micro', 'model.safetensors'));
  });

  test('a corrupted data.pkl fails its CRC-32 check', () => {
    const bytes = Uint8Array.from(readFileSync(fixture('hostile', 'small-valid.bin')));
    const at = Buffer.from(bytes).indexOf('_rebuild_tensor_v2');
    bytes[at] ^= 0x20;
    const path = join(work, 'crc.bin');
    writeFileSync(path, bytes);
    expect(() => readPytorchCheckpoint(path)).toThrow(/fails its CRC-32 check/);
  });

  test('shards through pytorch_model.bin.index.json', () => {
    expectSameTensors(readCheckpointFile(fixture('v2-micro-sharded', 'pytorch_model.bin.index.json')), readGolden('models', 'v2-micro', 'model.safetensors'));
  });
});

describe('safetensors read tensor by tensor', () => {
  test.each(['micro', 'small-bf16', 'v2-micro', 'convnext-tiny-224'])('%s: the streaming reader equals the whole-file reader', (name) => {
    expectSameTensors(readSafetensorsFile(goldenPath('models', name, 'model.safetensors')), readGolden('models', name, 'model.safetensors'));
  });

  test('broken files give the same clear errors as the whole-file reader', () => {
    const whole = readFileSync(goldenPath('models', 'micro', 'model.safetensors'));
    const path = join(work, 'broken.safetensors');
    const refusal = (bytes: Uint8Array) => {
      writeFileSync(path, bytes);
      return () => readSafetensorsFile(path);
    };
    expect(refusal(whole.subarray(0, whole.length - 100))).toThrow(/ends at byte .* holds only .* \(truncated\?\)/);
    expect(refusal(whole.subarray(0, 100))).toThrow(/header length .* runs past the end of the 100-byte file/);
    expect(refusal(whole.subarray(0, 4))).toThrow(/only 4 bytes, too short/);
    const huge = Uint8Array.from(whole);
    new DataView(huge.buffer).setBigUint64(0, 2n ** 40n, true);
    expect(refusal(huge)).toThrow(/over the 100000000-byte limit/);
  });

  test('packing that releases each group once packed gives the same weights, and a released group cannot be read again', () => {
    const path = goldenPath('models', 'v2-micro', 'model.safetensors');
    const spec = parseModelConfig(JSON.parse(readFileSync(goldenPath('models', 'v2-micro', 'config.json'), 'utf8')), 'v2-micro');
    const plain = packWeights(spec, TARGETS.wasm.packing, bindCheckpoint(spec, readSafetensorsFile(path), path));
    const checkpoint = bindCheckpoint(spec, readSafetensorsFile(path), path);
    const released = packWeights(spec, TARGETS.wasm.packing, checkpoint, releaseWhenPacked(checkpoint));
    expect(Buffer.from(released.data.buffer).equals(Buffer.from(plain.data.buffer))).toBe(true);
    expect(() => checkpoint.stages[1].blocks[0].dwconvWeight).toThrow(/stages\.1\.blocks\.0 read after they were packed and released/);
    expect(() => checkpoint.stages[2].downsample!.convWeight).toThrow(/stages\.2\.downsample read after/);
    expect(checkpoint.stem.convWeight.length).toBeGreaterThan(0);
  });

  test('sharded safetensors through model.safetensors.index.json', () => {
    const tensors = readGolden('models', 'micro', 'model.safetensors');
    const names = [...tensors.keys()];
    const dir = modelFolder('micro-sharded-safetensors', 'micro', {});
    const weightMap: Record<string, string> = {};
    const halves = [names.slice(0, 20), names.slice(20)];
    halves.forEach((part, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeFileSync(join(dir, file), writeSafetensors(part.map((n) => [n, { shape: tensors.get(n)!.shape, data: tensors.get(n)!.data }])));
      for (const n of part) weightMap[n] = file;
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const loaded = loadModelSource({ input: dir });
    expect(loaded.weightsPath).toBe(join(dir, 'model.safetensors.index.json'));
    expectSameTensors(loaded.tensors!, tensors);

    // a shard named outside the folder, a missing shard, a tensor the index puts elsewhere
    const index = join(dir, 'model.safetensors.index.json');
    const broken = (map: Record<string, string>) => {
      writeFileSync(index, JSON.stringify({ weight_map: map }));
      return () => readCheckpointFile(index);
    };
    expect(broken({ ...weightMap, [names[0]]: '../model-00001-of-00002.safetensors' })).toThrow(/not a file name in its folder/);
    expect(broken({ ...weightMap, [names[0]]: 'model-00003-of-00002.safetensors' })).toThrow(/names model-00003-of-00002.safetensors, which is not in the folder/);
    const moved = { ...weightMap, [names[0]]: 'model-00002-of-00002.safetensors' };
    expect(broken(moved)).toThrow(/holds tensor .* which the index puts in model-00002/);
    expect(broken({})).toThrow(/lists no tensors/);
    expect(broken({ ...weightMap, [names[0]]: 'model.safetensors.index.json' })).toThrow(/to another index/);
  });
});

describe('the CLI builds folders that hold only PyTorch weights', () => {
  async function buildAndCheck(dir: string, goldenCase: string) {
    const out = join(work, `${goldenCase}-out`);
    const build = await cxc('build', dir, '--target', 'wasm', '-o', out);
    expect(build.code, build.stderr).toBe(0);
    const result = join(work, `${goldenCase}-result.safetensors`);
    const golden = goldenPath('models', goldenCase, 'golden.safetensors');
    const run = await cxc('run', out, '--input', golden, '--output', result, '--output-hidden-states');
    expect(run.code, run.stderr).toBe(0);
    const outputs = readSafetensors(new Uint8Array(readFileSync(result)), result);
    const expected = readGolden('models', goldenCase, 'golden.safetensors');
    let compared = 0;
    for (const name of ['logits', 'pooler_output', 'last_hidden_state', 'hidden_states.0', 'hidden_states.4']) {
      const { maxError, tolerance } = compare(floats(outputs.get(name), name), floats(expected.get(name), name));
      expect(maxError, name).toBeLessThanOrEqual(tolerance);
      compared++;
    }
    expect(compared).toBe(5);
  }

  test('pytorch_model.bin', async () => {
    await buildAndCheck(modelFolder('micro-bin', 'micro', { 'pytorch_model.bin': fixture('micro', 'pytorch_model.bin') }), 'micro');
  }, 120_000);

  test('cxc weights packs pytorch_model.bin into the same weights.bin that cxc build bundles', async () => {
    const packed = join(work, 'micro-weights.bin');
    const result = await cxc('weights', fixture('micro', 'pytorch_model.bin'), '--config', goldenPath('models', 'micro', 'config.json'), '--target', 'wasm', '-o', packed);
    expect(result.code, result.stderr).toBe(0);
    expect(readFileSync(packed).equals(readFileSync(join(work, 'micro-out', 'weights.bin')))).toBe(true);
  }, 60_000);

  test('pytorch_model.bin.index.json + shards', async () => {
    const shards = ['pytorch_model.bin.index.json', 'pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin'];
    const dir = modelFolder('v2-micro-sharded', 'v2-micro', Object.fromEntries(shards.map((f) => [f, fixture('v2-micro-sharded', f)])));
    await buildAndCheck(dir, 'v2-micro');
  }, 120_000);

  test('a hostile pytorch_model.bin is refused with one clear line, and runs nothing', async () => {
    rmSync(MARKER, { force: true });
    const dir = modelFolder('hostile-bin', 'micro', { 'pytorch_model.bin': fixture('hostile', 'os-system.bin') });
    const build = await cxc('build', dir, '--target', 'wasm', '-o', join(work, 'hostile-out'));
    expect(build.code).toBe(1);
    expect(build.stderr).toMatch(/refused global posix\.system/);
    expect(build.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(MARKER)).toBe(false);
  }, 60_000);
});

describe('hostile and broken checkpoints are refused by name', () => {
  const cases: Array<[string, RegExp]> = [
    ['os-system.bin', /refused global posix\.system/],
    ['builtins-eval.bin', /refused global __builtin__\.eval/],
    ['reduce-class.bin', /refused global __main__\.Payload/],
    ['deep-nesting.bin', /nested more than 64 deep/],
    ['many-marks.bin', /more than 64 open MARKs/],
    ['huge-memo.bin', /memo index 4294967294 was never stored/],
    ['proto-key.bin', /state dict entry "__proto__" is dict, not a tensor/],
    ['truncated.bin', /no end-of-central-directory record \(truncated/],
    ['missized.bin', /storage 0 holds 20 bytes but 6 F32 values need 24/],
    ['legacy.bin', /legacy pickle format \(torch.save before 1.6\)/],
  ];
  test.each(cases)('%s', (name, message) => {
    rmSync(MARKER, { force: true });
    let error: unknown;
    try {
      readPytorchCheckpoint(fixture('hostile', name));
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(CxcError);
    expect((error as Error).message).toMatch(message);
    expect(existsSync(MARKER)).toBe(false);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test('the legacy format says how to re-save it', () => {
    expect(() => readPytorchCheckpoint(fixture('hostile', 'legacy.bin'))).toThrow(expect.objectContaining({ hint: expect.stringMatching(/torch\.save\(.*safe_serialization=True/) }));
  });

  test('the valid file the hostile ones were made from loads', () => {
    const tensors = readPytorchCheckpoint(fixture('hostile', 'small-valid.bin'));
    expect(tensors.get('w')).toEqual({ dtype: 'F32', shape: [2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) });
  });

  test('memory is bounded by a count of values, whatever the opcodes', () => {
    // A dict given 1.5 million entries {i: {}}: 4 bytes per entry, two new values each.
    const count = 1_500_000;
    const bytes = new Uint8Array(3 + 4 * count + 1);
    bytes.set([0x80, 2, 0x7d]);
    for (let i = 0; i < count; i++) bytes.set([0x4b, i & 0xff, 0x7d, 0x73], 3 + 4 * i);
    bytes[3 + 4 * count] = 0x2e;
    expect(() => unpickle(bytes, 'inline', () => null)).toThrow(/more than 2000000 values/);
  });

  test('a "__proto__" key stays a key: nothing reaches a prototype', () => {
    // {'__proto__': 1, 'a': 2} as protocol 2: EMPTY_DICT MARK 'X'..'__proto__' K 1 'X'..'a' K 2 SETITEMS STOP
    const key = (text: string) => [0x58, text.length, 0, 0, 0, ...Buffer.from(text)];
    const bytes = new Uint8Array([0x80, 2, 0x7d, 0x28, ...key('__proto__'), 0x4b, 1, ...key('a'), 0x4b, 2, 0x75, 0x2e]);
    const value = unpickle(bytes, 'inline', () => null) as Extract<PickleValue, { kind: 'dict' }>;
    expect(value.kind).toBe('dict');
    expect([...value.entries]).toEqual([['__proto__', 1], ['a', 2]]);
    expect(Object.getPrototypeOf(value.entries)).toBe(Map.prototype);
  });
});

describe('fuzz: the pickle and zip readers give a result or a CxcError, nothing else', () => {
  const RUNS = 1500;
  const storage = (): PickleValue => ({ kind: 'storage', dtype: 'F32', key: '0', location: 'cpu', numel: 4 });

  /** True when `run` returned, false when it threw a CxcError; anything else fails. */
  function expectResultOrCxcError(run: () => unknown): boolean {
    try {
      run();
      return true;
    } catch (error) {
      if (!(error instanceof CxcError)) throw error;
      return false;
    }
  }

  test('mutated pickles', () => {
    // The micro checkpoint's data.pkl, which unmutated gives the state dict.
    const pkl = withFile(fixture('micro', 'pytorch_model.bin'), 'fixture', (file) => readZipEntry(file, readZipDirectory(file).get('pytorch_model/data.pkl')!, 1 << 20));
    expect((unpickle(pkl, 'fixture', storage) as Extract<PickleValue, { kind: 'dict' }>).entries.size).toBe(readGolden('models', 'micro', 'model.safetensors').size);
    let accepted = 0;
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(pkl.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), fc.nat(pkl.length), (edits, cut) => {
        const bytes = pkl.slice(0, Math.max(1, cut));
        for (const [at, value] of edits) if (at < bytes.length) bytes[at] = value;
        if (expectResultOrCxcError(() => unpickle(bytes, 'fuzz', storage))) accepted++;
      }),
      { numRuns: RUNS, seed: 20_261_130 },
    );
    // Some mutations (a changed name or number) still parse: the fuzz reaches past the first byte.
    expect(accepted).toBeGreaterThan(0);
  });

  test('random opcode streams', () => {
    const opcodes = [0x80, 0x28, 0x7d, 0x5d, 0x29, 0x74, 0x85, 0x86, 0x87, 0x4e, 0x88, 0x4b, 0x4d, 0x4a, 0x8a, 0x58, 0x8c, 0x71, 0x72, 0x94, 0x68, 0x6a, 0x30, 0x31, 0x63, 0x93, 0x51, 0x52, 0x62, 0x73, 0x75, 0x61, 0x65, 0x2e, 0x47, 0x43, 0x42];
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.constantFrom(...opcodes), fc.integer({ min: 0, max: 255 })), { maxLength: 200 }), (stream) => {
        expectResultOrCxcError(() => unpickle(new Uint8Array(stream), 'fuzz', storage));
      }),
      { numRuns: RUNS, seed: 20_261_131 },
    );
  });

  test('mutated safetensors: the tensor-by-tensor reader agrees with the whole-file reader', () => {
    // A valid small file: the first few tensors of micro, rewritten.
    const tensors = [...readGolden('models', 'micro', 'model.safetensors')].slice(0, 4);
    const small = writeSafetensors(tensors.map(([n, t]) => [n, { shape: t.shape, data: t.data }]));
    const path = join(work, 'fuzz.safetensors');
    const outcome = (run: () => Map<string, TensorEntry>) => {
      try {
        return [...run()].map(([n, t]) => `${n}:${t.dtype}:${t.shape}:${bytesOf(t).toString('base64')}`).join('|');
      } catch (error) {
        if (!(error instanceof CxcError)) throw error;
        return `error: ${error.message.replace(/^[^:]*: /, '')}`;
      }
    };
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(small.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.nat(small.length), (edits, cut) => {
        const bytes = Uint8Array.from(small.subarray(0, Math.max(0, cut)));
        for (const [at, value] of edits) if (at < bytes.length) bytes[at] = value;
        writeFileSync(path, bytes);
        expect(outcome(() => readSafetensorsFile(path))).toBe(outcome(() => readSafetensors(bytes, path)));
      }),
      { numRuns: 400, seed: 20_261_133 },
    );
  });

  test('mutated zip files', () => {
    const small = readFileSync(fixture('hostile', 'small-valid.bin'));
    const path = join(work, 'fuzz.bin');
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(small.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat(small.length), (edits, cut) => {
        const bytes = Uint8Array.from(small.subarray(0, Math.max(1, cut)));
        for (const [at, value] of edits) if (at < bytes.length) bytes[at] = value;
        writeFileSync(path, bytes);
        expectResultOrCxcError(() => readPytorchCheckpoint(path));
      }),
      { numRuns: 500, seed: 20_261_132 },
    );
  });
});
