/**
 * Property tests (fast-check) over everything cxc reads from a downloaded checkpoint
 * and everything its generated module is handed at run time:
 *   (a) safetensors bytes through readSafetensors,
 *   (b) config.json objects through parseModelConfig (and the compile-time size guard),
 *   (c) preprocessor_config.json objects through parseProcessorConfig,
 *   (d) images through the runtime's preprocess().
 * Each input either gives a result that satisfies the format's invariants or a named
 * error (CxcError for the compiler, a plain `preprocess: ...` Error at run time); any
 * other exception, a call slower than CALL_LIMIT_MS, or an oversized allocation fails.
 *
 * Seeded and bounded: CXC_FUZZ_RUNS inputs per format (default 10,000; `npm run
 * fuzz:long` runs 200,000), seed CXC_FUZZ_SEED (default below). A failure prints the
 * seed and fast-check's shrunk counterexample and replay path.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors } from '../compiler/safetensors.js';
import { ACTIVATIONS, parseModelConfig, type ModelSpec } from '../compiler/config.js';
import { MAX_IMAGE_EDGE, parseProcessorConfig } from '../compiler/processor.js';
import { CxcError } from '../compiler/errors.js';
import { compileModel, loadModelSource } from '../compiler/build.js';
import { layoutWeights } from '../compiler/layout.js';
import { TARGETS } from '../compiler/targets.js';
import { preprocess, type ImageInput, type PreprocessSpec } from '../runtime/preprocess.js';
import { levelSizes } from '../runtime/shapes.js';

function positiveInteger(text: string | undefined, fallback: number): number {
  const value = Number(text);
  return text !== undefined && text !== '' && Number.isSafeInteger(value) && value > 0 ? value : fallback;
}

const RUNS = positiveInteger(process.env.CXC_FUZZ_RUNS, 10_000);
const SEED = positiveInteger(process.env.CXC_FUZZ_SEED, 20_250_607);
/**
 * No single call may take longer than this: a hang or a blow-up fails, a slow machine does not.
 * Typical calls take well under 1 ms; the slowest, a config.json with num_labels 1,000,000
 * (a million "LABEL_i" strings), up to about 0.5 s on two busy cores.
 */
const CALL_LIMIT_MS = 5_000;
/** Per-format test timeout, scaled with the run count so `fuzz:long` has room. */
const FORMAT_TIMEOUT_MS = Math.max(120_000, RUNS * 25);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

type Outcome = 'accepted' | 'refused';

interface Tally {
  accepted: number;
  refused: number;
  /** Exceptions other than the format's named error. */
  crashes: number;
  slowestMs: number;
}

const summaries: string[] = [];
afterAll(() => {
  // One line per format, for the record (runs, outcomes, slowest call).
  if (summaries.length) console.log(`fuzz seed ${SEED}, ${RUNS} runs per property\n${summaries.join('\n')}`);
});

class Crash extends Error {}

/**
 * Runs `classify` on RUNS generated inputs. It calls the code under test and
 * returns 'accepted' after checking the result's invariants, returns 'refused' for the
 * named error, and throws a Crash for anything else.
 */
async function fuzz<T>(name: string, arbitrary: fc.Arbitrary<T>, classify: (input: T) => Outcome): Promise<Tally> {
  const tally: Tally = { accepted: 0, refused: 0, crashes: 0, slowestMs: 0 };
  const started = performance.now();
  let calls = 0;
  try {
    await fc.assert(
      fc.asyncProperty(arbitrary, async (input) => {
        // Yield to the event loop now and then: a long synchronous loop starves vitest's
        // worker RPC, which then times out (seen with fuzz:long's 200,000 runs).
        if (++calls % 256 === 0) await new Promise((resolve) => setImmediate(resolve));
        const start = performance.now();
        let outcome: Outcome;
        try {
          outcome = classify(input);
        } catch (error) {
          if (error instanceof Crash) tally.crashes++;
          throw error;
        }
        const elapsed = performance.now() - start;
        tally.slowestMs = Math.max(tally.slowestMs, elapsed);
        if (elapsed > CALL_LIMIT_MS) throw new Error(`one call took ${elapsed.toFixed(0)} ms (limit ${CALL_LIMIT_MS} ms)`);
        tally[outcome]++;
      }),
      { seed: SEED, numRuns: RUNS },
    );
  } catch (error) {
    throw new Error(
      `fuzz "${name}" failed (seed ${SEED}; rerun with CXC_FUZZ_SEED=${SEED} CXC_FUZZ_RUNS=${RUNS}): ${(error as Error).message}`,
      { cause: error },
    );
  }
  const seconds = (performance.now() - started) / 1000;
  summaries.push(
    `  ${name}: ${tally.accepted} accepted, ${tally.refused} refused, ${tally.crashes} crashes, ` +
      `slowest call ${tally.slowestMs.toFixed(1)} ms, ${seconds.toFixed(1)} s`,
  );
  return tally;
}

/** The named error of the compiler's readers; anything else is a Crash. */
function expectCxcError(error: unknown, file: string): Outcome {
  if (error instanceof CxcError) {
    if (!error.message.startsWith(`${file}: `) || error.message.length <= file.length + 2) {
      throw new Crash(`CxcError without the file name or a problem: ${JSON.stringify(error.message)}`);
    }
    return 'refused';
  }
  const e = error as Error;
  throw new Crash(`${e?.name ?? typeof error} instead of CxcError: ${e?.message ?? String(error)}\n${e?.stack ?? ''}`);
}

function check(condition: unknown, problem: string): asserts condition {
  if (!condition) throw new Error(`invariant broken: ${problem}`);
}

/** Builds an object from key/value pairs as JSON.parse would: every key an own, enumerable data property. */
function objectFrom(pairs: Array<[string, unknown]>): Record<string, unknown> {
  const object: Record<string, unknown> = {};
  for (const [key, value] of pairs) Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  return object;
}

/** Object.prototype must come out of every call untouched. */
const PROTOTYPE_KEYS = Object.getOwnPropertyNames(Object.prototype).sort().join();
function checkNoPollution(): void {
  check(Object.getOwnPropertyNames(Object.prototype).sort().join() === PROTOTYPE_KEYS, 'Object.prototype was modified');
  check(Object.getPrototypeOf({}) === Object.prototype, 'the prototype of {} changed');
}

/** Keys that break code which indexes plain objects with input strings. */
const HOSTILE_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__'];

/** Junk JSON-ish values, nested a few levels, including what JSON cannot hold (NaN, Infinity, -0). */
const scalarJunk = fc.oneof(
  fc.constantFrom(null, undefined, true, false, 0, -0, -1, 1, 0.5, -1e-300, 1e-300, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 1e21, 1e308, -1e308),
  fc.constantFrom(NaN, Infinity, -Infinity, Number.MIN_VALUE, Number.EPSILON),
  fc.double(),
  fc.integer(),
  fc.string({ maxLength: 12 }),
  fc.constantFrom('', '3', '224', '1e9', 'NaN', 'gelu', 'convnext', ...HOSTILE_KEYS),
);
const junk: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    scalarJunk,
    fc.array(tie('value'), { maxLength: 4 }),
    fc.array(fc.tuple(fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom(...HOSTILE_KEYS)), tie('value')), { maxLength: 4 }).map(objectFrom),
  ),
})).value;
/** Values nested tens to hundreds of levels deep. */
const deepJunk = fc.tuple(fc.integer({ min: 20, max: 400 }), fc.boolean(), scalarJunk).map(([depth, arrays, leaf]) => {
  let value: unknown = leaf;
  for (let i = 0; i < depth; i++) value = arrays ? [value] : objectFrom([['a', value]]);
  return value;
});
const anyJunk = fc.oneof({ weight: 6, arbitrary: junk }, { weight: 1, arbitrary: deepJunk });

/**
 * A config field: a valid value most of the time, absent (undefined) now and then, and, when
 * `dirty`, also values just out of range (`odd`) and junk of any type.
 */
function field(valid: fc.Arbitrary<unknown>, odd: fc.Arbitrary<unknown> | undefined, dirty: boolean): fc.Arbitrary<unknown> {
  const choices: Array<fc.WeightedArbitrary<unknown>> = [{ weight: 12, arbitrary: valid }, { weight: 1, arbitrary: fc.constant(undefined) }];
  if (dirty) {
    if (odd) choices.push({ weight: 2, arbitrary: odd });
    choices.push({ weight: 1, arbitrary: anyJunk });
  }
  return fc.oneof(...choices);
}

/** Objects of fields, half of them clean (valid or absent values only), half dirty; plus extra keys (hostile ones included) when dirty. */
function configObjects(fields: (dirty: boolean) => Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<Record<string, unknown>> {
  const extra = fc.array(fc.tuple(fc.oneof(fc.constantFrom(...HOSTILE_KEYS), fc.string({ maxLength: 8 })), anyJunk), { maxLength: 3 });
  const build = (dirty: boolean) =>
    fc.tuple(fc.record(fields(dirty)), dirty ? extra : fc.constant([])).map(([record, more]) => {
      const pairs = Object.entries(record).filter(([, v]) => v !== undefined);
      return objectFrom([...pairs, ...more]);
    });
  return fc.oneof(build(false), build(true));
}

// ---------------------------------------------------------------------------------------
// (a) safetensors
// ---------------------------------------------------------------------------------------

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1 };
const DTYPES = Object.keys(DTYPE_BYTES);

interface TensorSpec { name: string; dtype: string; shape: number[]; bytes: Uint8Array }

const tensorName = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 10 }).filter((s) => s !== '__metadata__') },
  { weight: 1, arbitrary: fc.constantFrom(...HOSTILE_KEYS, '', 'a"b', 'x\\y', '\u{1F600}', '</script>', 'stages.0.layers.0.weight', '\u0000') },
);
const tensorSpec: fc.Arbitrary<TensorSpec> = fc
  .record({ name: tensorName, dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }) })
  .chain(({ name, dtype, shape }) => {
    const length = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    return fc.uint8Array({ minLength: length, maxLength: length }).map((bytes) => ({ name, dtype, shape, bytes }));
  });

/** A valid file's parts: tensors (unique names) in header order, the order their bytes are stored in, metadata, padding. */
const validParts = fc
  .uniqueArray(tensorSpec, { selector: (t) => t.name, maxLength: 5 })
  .chain((tensors) =>
    fc.record({
      tensors: fc.constant(tensors),
      storage: fc.shuffledSubarray(tensors.map((_, i) => i), { minLength: tensors.length, maxLength: tensors.length }),
      metadata: fc.option(fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), { maxKeys: 3 }), { nil: undefined }),
      padding: fc.integer({ min: 0, max: 9 }),
    }),
  );
type ValidParts = typeof validParts extends fc.Arbitrary<infer T> ? T : never;

/** Ways a structured file is corrupted. `duplicate` writes one tensor's name twice into the raw JSON text. */
type Mutation =
  | { kind: 'none' }
  | { kind: 'headerLength'; value: bigint }
  | { kind: 'headerLengthDelta'; delta: number }
  | { kind: 'headerText'; text: string }
  | { kind: 'headerBytes'; bytes: Uint8Array }
  | { kind: 'nonObjectHeader'; value: unknown }
  | { kind: 'field'; index: number; field: 'dtype' | 'shape' | 'data_offsets'; value: unknown }
  | { kind: 'entry'; index: number; value: unknown }
  | { kind: 'offsets'; index: number; begin: number; end: number }
  | { kind: 'swapOffsets'; index: number }
  | { kind: 'hugeShape'; index: number; shape: number[]; claimBytes: boolean }
  | { kind: 'unknownDtype'; index: number; dtype: string }
  | { kind: 'duplicate'; index: number; same: boolean }
  | { kind: 'metadata'; value: unknown }
  | { kind: 'truncate'; fraction: number }
  | { kind: 'append'; bytes: Uint8Array }
  | { kind: 'flip'; positions: number[]; values: number[] };

const hugeDim = fc.constantFrom(1e6, 1e9, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 - 1, 65536, 1e12);
const index = fc.nat(4);
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ kind: 'none' as const }) },
  fc.record({ kind: fc.constant('headerLength' as const), value: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.bigInt({ min: 0n, max: 400n }), fc.constantFrom(2n ** 63n, 2n ** 64n - 1n, 100_000_001n)) }),
  fc.record({ kind: fc.constant('headerLengthDelta' as const), delta: fc.integer({ min: -16, max: 16 }) }),
  fc.record({ kind: fc.constant('headerText' as const), text: fc.oneof(fc.string({ maxLength: 40 }), fc.json(), fc.constantFrom('{', '{"a":', '{"a":{}', '{}}', '{"a":1,}', "{'a':1}", 'null', '')) }),
  fc.record({ kind: fc.constant('headerBytes' as const), bytes: fc.uint8Array({ maxLength: 40 }) }),
  fc.record({ kind: fc.constant('nonObjectHeader' as const), value: fc.oneof(fc.constantFrom(null, true, 0, 'x', [] as unknown), fc.array(junk, { maxLength: 3 })) }),
  fc.record({ kind: fc.constant('field' as const), index, field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const), value: anyJunk }),
  fc.record({ kind: fc.constant('entry' as const), index, value: anyJunk }),
  fc.record({ kind: fc.constant('offsets' as const), index, begin: fc.integer({ min: -8, max: 300 }), end: fc.integer({ min: -8, max: 300 }) }),
  fc.record({ kind: fc.constant('swapOffsets' as const), index }),
  fc.record({ kind: fc.constant('hugeShape' as const), index, shape: fc.array(fc.oneof(hugeDim, fc.integer({ min: 0, max: 4 })), { minLength: 1, maxLength: 4 }), claimBytes: fc.boolean() }),
  fc.record({ kind: fc.constant('unknownDtype' as const), index, dtype: fc.oneof(fc.string({ maxLength: 5 }), fc.constantFrom('F8', 'f32', 'float32', 'U32', 'U64', 'C64', 'F8_E4M3', ...HOSTILE_KEYS)) }),
  fc.record({ kind: fc.constant('duplicate' as const), index, same: fc.boolean() }),
  fc.record({ kind: fc.constant('metadata' as const), value: anyJunk }),
  fc.record({ kind: fc.constant('truncate' as const), fraction: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }) }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('flip' as const), positions: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), values: fc.array(fc.nat(255), { minLength: 4, maxLength: 4 }) }),
);

const encoder = new TextEncoder();

/** JSON text of an object from pairs, written by hand so that a key can appear twice. */
function jsonObjectText(pairs: Array<[string, unknown]>): string {
  return `{${pairs.map(([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value === undefined ? null : value, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}`).join(',')}}`;
}

function withLength(headerBytes: Uint8Array, data: Uint8Array, length = BigInt(headerBytes.length)): Uint8Array {
  const out = new Uint8Array(8 + headerBytes.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length, true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.length);
  return out;
}

function buildFile(parts: ValidParts, m: Mutation): Uint8Array {
  const { tensors, storage } = parts;
  const offsets: Array<[number, number]> = new Array(tensors.length);
  let cursor = 0;
  for (const i of storage) {
    offsets[i] = [cursor, cursor + tensors[i].bytes.length];
    cursor += tensors[i].bytes.length;
  }
  const data = new Uint8Array(cursor);
  for (const i of storage) data.set(tensors[i].bytes, offsets[i][0]);
  const pairs: Array<[string, unknown]> = [];
  if (parts.metadata) pairs.push(['__metadata__', parts.metadata]);
  tensors.forEach((t, i) => pairs.push([t.name, { dtype: t.dtype, shape: t.shape, data_offsets: offsets[i] }]));
  const at = (i: number) => (tensors.length ? pairs.length - tensors.length + (i % tensors.length) : -1);
  const entry = (i: number) => pairs[at(i)][1] as Record<string, unknown>;

  switch (m.kind) {
    case 'field':
      if (at(m.index) >= 0) entry(m.index)[m.field] = m.value;
      break;
    case 'entry':
      if (at(m.index) >= 0) pairs[at(m.index)][1] = m.value;
      break;
    case 'offsets':
      if (at(m.index) >= 0) entry(m.index).data_offsets = [m.begin, m.end];
      break;
    case 'swapOffsets':
      if (at(m.index) >= 0) entry(m.index).data_offsets = [...(entry(m.index).data_offsets as number[])].reverse();
      break;
    case 'hugeShape':
      if (at(m.index) >= 0) {
        const e = entry(m.index);
        e.shape = m.shape;
        const begin = (e.data_offsets as number[])[0];
        // Claim the bytes the shape needs (an overflowing product, most of the time), or keep the real ones.
        if (m.claimBytes) e.data_offsets = [begin, begin + m.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[e.dtype as string]];
      }
      break;
    case 'unknownDtype':
      if (at(m.index) >= 0) entry(m.index).dtype = m.dtype;
      break;
    case 'duplicate':
      if (at(m.index) >= 0) {
        const [name, value] = pairs[at(m.index)];
        const copy = m.same ? value : { ...(value as object), data_offsets: [0, 0], shape: [0] };
        pairs.push([name, copy]);
      }
      break;
    case 'metadata':
      pairs.unshift(['__metadata__', m.value]);
      break;
  }

  let text = m.kind === 'nonObjectHeader' ? JSON.stringify(m.value) ?? 'null' : m.kind === 'headerText' ? m.text : jsonObjectText(pairs);
  text += ' '.repeat(parts.padding);
  const headerBytes = m.kind === 'headerBytes' ? m.bytes : encoder.encode(text);
  let length = BigInt(headerBytes.length);
  if (m.kind === 'headerLength') length = m.value;
  if (m.kind === 'headerLengthDelta') length = BigInt(Math.max(0, headerBytes.length + m.delta));
  let file = withLength(headerBytes, data, length);
  if (m.kind === 'truncate') file = file.slice(0, Math.floor(file.length * m.fraction));
  if (m.kind === 'append') file = Uint8Array.from([...file, ...m.bytes]);
  if (m.kind === 'flip' && file.length) {
    file = file.slice();
    m.positions.forEach((p, i) => (file[p % file.length] = m.values[i]));
  }
  return file;
}

/** An independent decoder of one stored value, for the oracle. */
function referenceValue(dtype: string, view: DataView, at: number): number {
  switch (dtype) {
    case 'F64': return Math.fround(view.getFloat64(at, true));
    case 'F32': return view.getFloat32(at, true);
    case 'F16': {
      const h = view.getUint16(at, true);
      const e = (h >> 10) & 31;
      const f = h & 1023;
      const magnitude = e === 0 ? f / 1024 / 16384 : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * Math.pow(2, e - 15);
      return h & 0x8000 ? -magnitude : magnitude;
    }
    case 'BF16': {
      const scratch = new DataView(new ArrayBuffer(4));
      scratch.setUint16(0, view.getUint16(at, true), false);
      return scratch.getFloat32(0, false);
    }
    case 'I64': return Math.fround(Number(view.getBigInt64(at, true)));
    case 'I32': return Math.fround(view.getInt32(at, true));
    case 'I16': return view.getInt16(at, true);
    case 'U16': return view.getUint16(at, true);
    case 'I8': return view.getInt8(at);
    default: return view.getUint8(at);
  }
}

/** When readSafetensors accepts a file: what it returns must be exactly what the header and bytes say. */
function checkTensorsAgainstFile(file: Uint8Array, tensors: ReturnType<typeof readSafetensors>, m: Mutation | undefined, parts?: ValidParts): void {
  check(file.length >= 8, 'accepted a file under 8 bytes');
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  check(8 + headerLength <= file.length, 'accepted a header length past the end');
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + headerLength))) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  check(header && typeof header === 'object' && !Array.isArray(header), 'accepted a non-object header');
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  check(m?.kind !== 'duplicate', 'accepted a header that names a tensor twice');
  check(tensors.size === names.length, `returned ${tensors.size} tensors for ${names.length} header entries`);
  const dataStart = 8 + headerLength;
  const spans: Array<[number, number]> = [];
  let outputBytes = 0;
  for (const name of names) {
    const entry = header[name];
    const tensor = tensors.get(name);
    check(tensor, `tensor ${JSON.stringify(name)} of the header is missing`);
    check(tensor.dtype === entry.dtype && JSON.stringify(tensor.shape) === JSON.stringify(entry.shape), `${name}: dtype/shape differ from the header`);
    const elements = entry.shape.reduce((a, b) => a * b, 1);
    const [begin, end] = entry.data_offsets;
    check(Number.isSafeInteger(begin) && Number.isSafeInteger(end) && 0 <= begin && begin <= end, `${name}: bad offsets accepted`);
    check(end - begin === elements * DTYPE_BYTES[entry.dtype], `${name}: byte length disagrees with dtype x shape`);
    check(tensor.data.length === elements, `${name}: ${tensor.data.length} values for ${elements} elements`);
    const isBytes = entry.dtype === 'U8' || entry.dtype === 'BOOL';
    check(isBytes ? tensor.data instanceof Uint8Array : tensor.data instanceof Float32Array, `${name}: wrong array type`);
    for (let i = 0; i < elements; i++) {
      const expected = referenceValue(entry.dtype, view, dataStart + begin + i * DTYPE_BYTES[entry.dtype]);
      const actual = tensor.data[i];
      check(Object.is(actual, expected) || (Number.isNaN(actual) && Number.isNaN(expected)), `${name}[${i}] is ${actual}, the bytes say ${expected}`);
    }
    spans.push([begin, end]);
    outputBytes += tensor.data.byteLength;
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cursor = 0;
  for (const [begin, end] of spans) {
    check(begin === cursor, 'accepted overlapping or gapped tensors');
    cursor = end;
  }
  check(cursor === file.length - dataStart, 'accepted stray bytes after the last tensor');
  check(outputBytes <= 4 * file.length, `returned ${outputBytes} bytes from a ${file.length}-byte file`);
  if (parts && m?.kind === 'none') {
    // An untouched valid file round-trips exactly.
    check(names.length === parts.tensors.length, 'a valid file lost tensors');
  }
}

describe('fuzz (a): safetensors bytes through readSafetensors', () => {
  const SOURCE = 'fuzz.safetensors';
  const classify = (file: Uint8Array, m?: Mutation, parts?: ValidParts): Outcome => {
    let tensors: ReturnType<typeof readSafetensors>;
    try {
      tensors = readSafetensors(file, SOURCE);
    } catch (error) {
      if (m?.kind === 'none') throw new Error(`a valid file was refused: ${(error as Error).message}`);
      return expectCxcError(error, SOURCE);
    }
    checkTensorsAgainstFile(file, tensors, m, parts);
    return 'accepted';
  };

  test('structured files, valid and corrupted', async () => {
    const tally = await fuzz('safetensors (structured)', fc.tuple(validParts, mutation), ([parts, m]) =>
      // Without tensors there is no name to write twice.
      classify(buildFile(parts, m), m.kind === 'duplicate' && parts.tensors.length === 0 ? { kind: 'none' } : m, parts));
    expect(tally.crashes).toBe(0);
    expect(tally.accepted + tally.refused).toBeGreaterThanOrEqual(RUNS);
    expect(tally.accepted).toBeGreaterThan(RUNS / 10);
    expect(tally.refused).toBeGreaterThan(RUNS / 3);
  }, FORMAT_TIMEOUT_MS);

  test('random bytes', async () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 256 }),
      // A plausible header length in front of random bytes, so the JSON stage is reached.
      fc.tuple(fc.nat(64), fc.uint8Array({ maxLength: 96 })).map(([n, rest]) => withLength(rest.subarray(0, Math.min(n, rest.length)), rest.subarray(Math.min(n, rest.length)))),
      fc.tuple(fc.string({ maxLength: 60 }), fc.uint8Array({ maxLength: 32 })).map(([text, rest]) => withLength(encoder.encode(text), rest)),
    );
    const tally = await fuzz('safetensors (random bytes)', bytes, (file) => classify(file));
    expect(tally.crashes).toBe(0);
    expect(tally.accepted + tally.refused).toBeGreaterThanOrEqual(RUNS);
  }, FORMAT_TIMEOUT_MS);

  test('a header that claims a 1e12-element tensor is refused without allocating it', () => {
    const claims: Array<{ shape: number[]; offsets: [number, number] }> = [
      { shape: [1_000_000, 1_000_000], offsets: [0, 4e12] },
      { shape: [1_000_000, 1_000_000], offsets: [0, 4] },
      { shape: [2 ** 26, 2 ** 26, 2 ** 26], offsets: [0, 2 ** 52] },
      { shape: [2 ** 53 - 1, 2 ** 53 - 1], offsets: [0, 0] },
    ];
    for (const { shape, offsets } of claims) {
      const file = withLength(encoder.encode(JSON.stringify({ big: { dtype: 'F32', shape, data_offsets: offsets } })), new Uint8Array(4));
      const before = process.memoryUsage().arrayBuffers;
      const start = performance.now();
      expect(() => readSafetensors(file, SOURCE)).toThrow(CxcError);
      expect(performance.now() - start).toBeLessThan(100);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * 2 ** 20);
    }
  });

  test('a tensor named twice in the raw JSON is refused, even with identical entries', () => {
    const entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}';
    const file = withLength(encoder.encode(`{"w":${entry},"w":${entry}}`), new Uint8Array(4));
    expect(() => readSafetensors(file, SOURCE)).toThrow(/tensor "w" appears twice/);
  });
});

// ---------------------------------------------------------------------------------------
// (b) config.json
// ---------------------------------------------------------------------------------------

const STAGE_NAMES = (n: number) => ['stem', ...Array.from({ length: n }, (_, i) => `stage${i + 1}`)];
const ARCHITECTURES = ['ConvNextForImageClassification', 'ConvNextV2ForImageClassification', 'ConvNextModel', 'ConvNextV2Model', 'ConvNextBackbone', 'ConvNextV2Backbone'];

const smallSize = fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 96 }) }, { weight: 1, arbitrary: fc.constantFrom(16384, 16385, 100_000, 2 ** 31, 0, -4) });
/** Mostly small models; now and then big ones (up to every limit), so that the size guard is exercised from both sides. */
const mostly = <T>(usual: fc.Arbitrary<T>, rare: fc.Arbitrary<T>) => fc.oneof({ weight: 8, arbitrary: usual }, { weight: 1, arbitrary: rare });
const configArbitrary = mostly(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 7, max: 16 })).chain((stages) => {
  const list = (item: fc.Arbitrary<number>) =>
    fc.oneof({ weight: 6, arbitrary: fc.array(item, { minLength: stages, maxLength: stages }) }, { weight: 1, arbitrary: fc.array(item, { maxLength: 8 }) });
  const labelKey = fc.oneof({ weight: 6, arbitrary: fc.nat(6).map(String) }, { weight: 1, arbitrary: fc.constantFrom('01', '-1', '1e0', ' 1', '1.0', '0x1', '', ...HOSTILE_KEYS) });
  const id2label = fc.oneof(
    // dense: "0".."n-1" in shuffled order
    fc.array(fc.string({ maxLength: 8 }), { maxLength: 8 }).chain((labels) =>
      fc.shuffledSubarray(labels.map((l, i): [string, unknown] => [String(i), l]), { minLength: labels.length, maxLength: labels.length }).map(objectFrom)),
    fc.array(fc.tuple(labelKey, fc.oneof({ weight: 6, arbitrary: fc.string({ maxLength: 6 }) }, { weight: 1, arbitrary: junk })), { maxLength: 8 }).map(objectFrom),
  );
  const fields = (dirty: boolean) => ({
    model_type: field(fc.constantFrom('convnext', 'convnextv2'), fc.constantFrom('ConvNext', 'resnet', 'vit', ...HOSTILE_KEYS), dirty),
    num_stages: field(fc.constant(stages), fc.integer({ min: -1, max: 20 }), dirty),
    hidden_sizes: field(mostly(list(fc.integer({ min: 1, max: 96 })), list(fc.integer({ min: 1, max: 16384 }))), list(smallSize), dirty),
    depths: field(mostly(list(fc.integer({ min: 1, max: 4 })), list(fc.integer({ min: 1, max: 256 }))), list(fc.oneof(fc.integer({ min: 1, max: 4 }), fc.constantFrom(256, 257, 0, -1, 1e6))), dirty),
    hidden_act: field(fc.constantFrom(...ACTIVATIONS), fc.constantFrom('GELU', 'gelu ', 'elu', 'prelu', ...HOSTILE_KEYS), dirty),
    num_channels: field(fc.integer({ min: 1, max: 4 }), fc.constantFrom(64, 65, 0, 3.5), dirty),
    patch_size: field(mostly(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 64 })), fc.constantFrom(64, 65, 0, 2.5), dirty),
    image_size: field(mostly(fc.integer({ min: 1, max: 512 }), fc.integer({ min: 1, max: 16384 })), fc.constantFrom(16384, 16385, 0), dirty),
    layer_norm_eps: field(fc.double({ min: 0, max: 1e-3, noNaN: true }), fc.constantFrom(1, 1.5, -1e-6), dirty),
    layer_scale_init_value: field(fc.double({ noNaN: true, noDefaultInfinity: true, min: -1, max: 1 }), undefined, dirty),
    drop_path_rate: field(fc.double({ min: 0, max: 0.5, noNaN: true }), fc.constantFrom(1, -0.1, 1.5), dirty),
    initializer_range: field(fc.double({ noNaN: true, noDefaultInfinity: true }), undefined, dirty),
    num_labels: field(mostly(fc.nat(10), fc.nat(100_000)), fc.constantFrom(1_000_000, 1_000_001, -1), dirty),
    id2label: field(id2label, undefined, dirty),
    architectures: field(
      fc.array(fc.constantFrom(...ARCHITECTURES), { minLength: 1, maxLength: 2 }),
      fc.array(fc.constantFrom(...HOSTILE_KEYS, 'ResNetForImageClassification'), { minLength: 1, maxLength: 2 }),
      dirty,
    ),
    out_features: field(fc.array(fc.constantFrom(...STAGE_NAMES(stages + 1), 'stage0', '__proto__'), { maxLength: 3 }), undefined, dirty),
    out_indices: field(fc.array(fc.integer({ min: -stages - 2, max: stages + 1 }), { maxLength: 3 }), undefined, dirty),
  });
  return configObjects(fields);
});

/** Float32 weights of the WASM layout of an accepted spec must fit in WebAssembly's 4 GiB. */
const WEIGHT_LIMIT_BYTES = 2 ** 32;
const ACTIVATION_LIMIT_BYTES = 2 ** 32;

function checkSpec(spec: ModelSpec): void {
  const integerIn = (value: unknown, min: number, max: number) => Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max;
  check(spec.modelType === 'convnext' || spec.modelType === 'convnextv2', `modelType ${String(spec.modelType)}`);
  check(['classification', 'base', 'backbone'].includes(spec.head as string), `head ${typeof spec.head} ${String(spec.head)}`);
  check(typeof spec.architecture === 'string' && spec.architecture.startsWith(spec.modelType === 'convnext' ? 'ConvNext' : 'ConvNextV2'), 'architecture');
  check(integerIn(spec.numStages, 1, 16), `numStages ${spec.numStages}`);
  check(integerIn(spec.numChannels, 1, 64) && integerIn(spec.patchSize, 1, 64) && integerIn(spec.imageSize, 1, 16384), 'numChannels/patchSize/imageSize');
  check(Array.isArray(spec.hiddenSizes) && spec.hiddenSizes.length === spec.numStages, 'hiddenSizes length');
  check(Array.isArray(spec.depths) && spec.depths.length === spec.numStages, 'depths length');
  check(spec.hiddenSizes.every((c) => integerIn(c, 1, 16384)) && spec.depths.every((d) => integerIn(d, 1, 256)), 'sizes within limits');
  check((ACTIVATIONS as readonly string[]).includes(spec.hiddenAct), `hiddenAct ${spec.hiddenAct}`);
  check(Number.isFinite(spec.layerNormEps) && spec.layerNormEps >= 0 && spec.layerNormEps <= 1, 'layerNormEps');
  check(spec.grn === (spec.modelType === 'convnextv2') && typeof spec.layerScale === 'boolean' && !(spec.grn && spec.layerScale), 'grn/layerScale');
  check(integerIn(spec.numLabels, 0, 1_000_000) && Array.isArray(spec.labels) && spec.labels.length === spec.numLabels, 'numLabels/labels length');
  for (let i = 0; i < spec.labels.length; i++) check(i in spec.labels && typeof spec.labels[i] === 'string', `label ${i} missing (labels not dense)`);
  if (spec.head !== 'classification') check(spec.numLabels === 0, 'labels on a head without classifier');
  const stages = STAGE_NAMES(spec.numStages);
  check(Array.isArray(spec.outFeatures) && spec.outFeatures.every((f) => stages.includes(f)), 'outFeatures');
  check(spec.head === 'backbone' ? spec.outFeatures.length > 0 : spec.outFeatures.length === 0, 'outFeatures only for a backbone');
  check(Object.getPrototypeOf(spec) === Object.prototype, 'spec is not a plain object');
  const floats = layoutWeights(spec, TARGETS.wasm.packing).floats;
  check(floats * 4 <= WEIGHT_LIMIT_BYTES, `accepted a model whose weights need ${(floats * 4 / 2 ** 30).toFixed(1)} GiB`);
  // One image at the configured size (or the smallest the network takes, when larger) must fit too:
  // the widest activation is a block's MLP, 4x the stage's channels, at that stage's resolution.
  const side = Math.max(spec.imageSize, spec.patchSize * 2 ** (spec.numStages - 1));
  const levels = levelSizes(spec, side, side);
  const activation = Math.max(...levels.map((l, s) => l.height * l.width * 4 * spec.hiddenSizes[s] * 4));
  check(activation <= ACTIVATION_LIMIT_BYTES, `accepted a model whose ${side}x${side} activation needs ${(activation / 2 ** 30).toFixed(1)} GiB`);
}

describe('fuzz (b): config.json through parseModelConfig', () => {
  const SOURCE = 'config.json';
  const classify = (json: unknown): Outcome => {
    let spec: ModelSpec;
    try {
      spec = parseModelConfig(json, SOURCE);
    } catch (error) {
      checkNoPollution();
      return expectCxcError(error, SOURCE);
    }
    checkNoPollution();
    checkSpec(spec);
    return 'accepted';
  };

  test('generated configs', async () => {
    const input = fc.oneof({ weight: 20, arbitrary: configArbitrary }, { weight: 1, arbitrary: anyJunk });
    const tally = await fuzz('config.json', input, classify);
    expect(tally.crashes).toBe(0);
    expect(tally.accepted + tally.refused).toBeGreaterThanOrEqual(RUNS);
    expect(tally.accepted).toBeGreaterThan(RUNS / 20);
    expect(tally.refused).toBeGreaterThan(RUNS / 3);
  }, FORMAT_TIMEOUT_MS);

  // show() in compiler/errors.ts must survive values that overflow both JSON.stringify and
  // String() (an array nested ~5000 deep is a 10 KB config.json).
  test('a value nested 100,000 deep gives a CxcError', () => {
    const deep = JSON.parse(`${'['.repeat(100_000)}1${']'.repeat(100_000)}`) as unknown;
    expect(() => parseModelConfig({ hidden_sizes: deep }, SOURCE)).toThrow(CxcError);
    expect(() => parseProcessorConfig({ size: { shortest_edge: deep } }, 'preprocessor_config.json')).toThrow(CxcError);
  });

  test('class names that are Object.prototype members are unknown architectures', () => {
    for (const name of HOSTILE_KEYS) {
      expect(() => parseModelConfig({ architectures: [name] }, SOURCE), name).toThrow(/"architectures" is .*unknown class/);
    }
  });

  test('configs whose weights or activations would need more than ~4 GiB are refused, naming the fields', () => {
    // 4 stages x 256 blocks of 16384 channels: about 2e12 parameters, refused at once.
    const huge = { hidden_sizes: Array(4).fill(16384), depths: Array(4).fill(256) };
    const start = performance.now();
    expect(() => parseModelConfig(huge, SOURCE)).toThrow(/"hidden_sizes".*parameters/);
    expect(performance.now() - start).toBeLessThan(500);
    expect(() => parseModelConfig({ ...huge, num_stages: 16, hidden_sizes: Array(16).fill(16384), depths: Array(16).fill(256) }, SOURCE)).toThrow(CxcError);
    // Just past the limit by the classifier alone: 16384 x 1e6 labels.
    expect(() => parseModelConfig({ hidden_sizes: [8, 8, 8, 16384], depths: [1, 1, 1, 1], num_labels: 1_000_000 }, SOURCE)).toThrow(/num_labels|id2label/);
    // Small weights, but 16 stages make the smallest input 4 * 2^15 pixels square.
    expect(() => parseModelConfig({ num_stages: 16, hidden_sizes: Array(16).fill(8), depths: Array(16).fill(1) }, SOURCE)).toThrow(/activation/);
    expect(() => parseModelConfig({ image_size: 16384, patch_size: 1 }, SOURCE)).toThrow(/"image_size".*activation/);
    // Real checkpoints stay well inside: ConvNeXt-XLarge with 21841 labels, ConvNeXt V2-Huge at 512.
    expect(parseModelConfig({ hidden_sizes: [256, 512, 1024, 2048], depths: [3, 3, 27, 3], num_labels: 21841 }, SOURCE).numLabels).toBe(21841);
    expect(parseModelConfig({ model_type: 'convnextv2', hidden_sizes: [352, 704, 1408, 2816], depths: [3, 3, 27, 3], image_size: 512, num_labels: 1000 }, SOURCE).grn).toBe(true);
  });

  describe('through loadModelSource / compileModel with a bare config', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxc-fuzz-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const config = join(dir, 'huge', 'config.json');
    mkdirSync(join(dir, 'huge'));
    writeFileSync(config, JSON.stringify({ model_type: 'convnext', num_stages: 4, hidden_sizes: Array(4).fill(16384), depths: Array(4).fill(256), num_labels: 1000 }));

    test('loadModelSource refuses before allocating anything', () => {
      const before = process.memoryUsage();
      const start = performance.now();
      expect(() => loadModelSource({ input: config })).toThrow(CxcError);
      expect(() => loadModelSource({ input: join(dir, 'huge') })).toThrow(/config\.json: field "hidden_sizes"/);
      expect(performance.now() - start).toBeLessThan(1000);
      const after = process.memoryUsage();
      expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(16 * 2 ** 20);
    });

    test('compileModel rejects with a CxcError', async () => {
      const start = performance.now();
      await expect(compileModel({ input: config, target: 'wasm' })).rejects.toThrow(CxcError);
      expect(performance.now() - start).toBeLessThan(1000);
    });
  });
});

// ---------------------------------------------------------------------------------------
// (c) preprocessor_config.json
// ---------------------------------------------------------------------------------------

const processorArbitrary = configObjects((dirty) => ({
  image_processor_type: field(fc.constantFrom('ConvNextImageProcessor', 'ConvNextImageProcessorFast'), fc.constantFrom('ViTImageProcessor', ...HOSTILE_KEYS), dirty),
  feature_extractor_type: field(fc.constant('ConvNextFeatureExtractor'), fc.constant('CLIPFeatureExtractor'), dirty),
  size: field(
    fc.oneof(fc.integer({ min: 1, max: 600 }), fc.record({ shortest_edge: fc.integer({ min: 1, max: 600 }) })),
    fc.oneof(
      fc.record({ shortest_edge: fc.constantFrom(MAX_IMAGE_EDGE, MAX_IMAGE_EDGE + 1, 0, -1, 1.5, 1e9) }),
      fc.record({ height: fc.nat(400), width: fc.nat(400) }),
      fc.array(fc.tuple(fc.constantFrom('shortest_edge', ...HOSTILE_KEYS), junk), { maxLength: 3 }).map(objectFrom),
    ),
    dirty,
  ),
  crop_pct: field(fc.double({ min: 0.5, max: 2, noNaN: true }), fc.constantFrom(0, -1, 1e-300, 0.001, 1e300), dirty),
  resample: field(fc.integer({ min: 0, max: 5 }), fc.constantFrom(-1, 6, 2.5, '2', -0), dirty),
  do_resize: field(fc.boolean(), fc.constantFrom(0, 1, 'true'), dirty),
  do_rescale: field(fc.boolean(), fc.constantFrom(0, 1, 'true'), dirty),
  do_normalize: field(fc.boolean(), fc.constantFrom(0, 1, 'true'), dirty),
  rescale_factor: field(fc.oneof(fc.constant(1 / 255), fc.double({ min: 1e-6, max: 10, noNaN: true })), fc.constantFrom(0, -1, 1e300, 1e39, 1e-320), dirty),
  image_mean: field(
    fc.oneof(fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: 3, maxLength: 3 }), fc.double({ min: -2, max: 2, noNaN: true })),
    fc.oneof(fc.array(fc.double(), { maxLength: 4 }), fc.constantFrom(1e300, -1e39, [0, 0, 3.5e38])),
    dirty,
  ),
  image_std: field(
    fc.oneof(fc.array(fc.double({ min: 0.01, max: 2, noNaN: true }), { minLength: 3, maxLength: 3 }), fc.double({ min: 0.01, max: 2, noNaN: true })),
    fc.oneof(fc.array(fc.double(), { maxLength: 4 }), fc.double({ min: -2, max: 2, noNaN: true }), fc.constantFrom(0, 1e-50, 1e-300, 1e-45, [0.5, 0.5, 1e-46])),
    dirty,
  ),
}));

/** Every float32 value preprocess() can produce from bytes 0..255 under this spec. */
function channelValues(spec: PreprocessSpec, channel: number): number[] {
  const values: number[] = [];
  for (let byte = 0; byte < 256; byte++) {
    let value = spec.doRescale ? Math.fround(byte * spec.rescaleFactor) : byte;
    if (spec.doNormalize) value = Math.fround(Math.fround(value - Math.fround(spec.mean[channel])) / Math.fround(spec.std[channel]));
    values.push(value);
  }
  return values;
}

function checkProcessorSpec(spec: PreprocessSpec): void {
  check(Number.isSafeInteger(spec.shortestEdge) && spec.shortestEdge >= 1 && spec.shortestEdge <= MAX_IMAGE_EDGE, `shortestEdge ${spec.shortestEdge}`);
  check(Number.isFinite(spec.cropPct) && spec.cropPct > 0, `cropPct ${spec.cropPct}`);
  if (spec.shortestEdge < 384) {
    const resized = Math.trunc(spec.shortestEdge / spec.cropPct);
    check(resized >= 1 && resized <= MAX_IMAGE_EDGE, `resized short side ${resized}`);
  }
  check([0, 1, 2, 3, 4, 5].includes(spec.resample), `resample ${spec.resample}`);
  check(Number.isFinite(spec.rescaleFactor) && spec.rescaleFactor > 0, `rescaleFactor ${spec.rescaleFactor}`);
  for (const key of ['doResize', 'doRescale', 'doNormalize'] as const) check(typeof spec[key] === 'boolean', key);
  for (const key of ['mean', 'std'] as const) {
    check(Array.isArray(spec[key]) && spec[key].length === 3 && spec[key].every((v) => typeof v === 'number' && Number.isFinite(v)), key);
  }
  for (let c = 0; c < 3; c++) {
    const bad = channelValues(spec, c).findIndex((v) => !Number.isFinite(v));
    check(bad < 0, `byte ${bad} of channel ${c} becomes ${channelValues(spec, c)[bad]} (mean ${spec.mean[c]}, std ${spec.std[c]}, rescale ${spec.rescaleFactor})`);
  }
}

describe('fuzz (c): preprocessor_config.json through parseProcessorConfig', () => {
  const SOURCE = 'preprocessor_config.json';
  test('generated processor configs', async () => {
    const input = fc.oneof({ weight: 20, arbitrary: processorArbitrary }, { weight: 1, arbitrary: anyJunk });
    const tally = await fuzz('preprocessor_config.json', input, (json) => {
      let spec: PreprocessSpec;
      try {
        spec = parseProcessorConfig(json, SOURCE);
      } catch (error) {
        checkNoPollution();
        return expectCxcError(error, SOURCE);
      }
      checkNoPollution();
      checkProcessorSpec(spec);
      return 'accepted';
    });
    expect(tally.crashes).toBe(0);
    expect(tally.accepted + tally.refused).toBeGreaterThanOrEqual(RUNS);
    expect(tally.accepted).toBeGreaterThan(RUNS / 20);
    expect(tally.refused).toBeGreaterThan(RUNS / 3);
  }, FORMAT_TIMEOUT_MS);

  test('statistics whose float32 normalization overflows are refused', () => {
    expect(() => parseProcessorConfig({ image_std: [0.5, 0.5, 1e-50] }, SOURCE)).toThrow(/image_std/);
    expect(() => parseProcessorConfig({ image_mean: 1e300 }, SOURCE)).toThrow(/image_mean/);
    expect(() => parseProcessorConfig({ rescale_factor: 1e300 }, SOURCE)).toThrow(/rescale_factor/);
    // With normalization off, the statistics are never used.
    expect(parseProcessorConfig({ image_std: 1e-50, do_normalize: false }, SOURCE).doNormalize).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------
// (d) images through the runtime's preprocess()
// ---------------------------------------------------------------------------------------

/** Specs as parseProcessorConfig gives them, kept small so that each call is cheap. */
const smallSpec: fc.Arbitrary<PreprocessSpec> = fc.record({
  doResize: fc.boolean(),
  shortestEdge: fc.oneof({ weight: 30, arbitrary: fc.integer({ min: 1, max: 40 }) }, { weight: 1, arbitrary: fc.integer({ min: 384, max: 392 }) }),
  cropPct: fc.double({ min: 0.5, max: 2, noNaN: true }),
  resample: fc.integer({ min: 0, max: 5 }),
  doRescale: fc.boolean(),
  rescaleFactor: fc.oneof(fc.constant(1 / 255), fc.double({ min: 1e-4, max: 4, noNaN: true })),
  doNormalize: fc.boolean(),
  mean: fc.array(fc.double({ min: -3, max: 3, noNaN: true }), { minLength: 3, maxLength: 3 }),
  std: fc.array(fc.double({ min: 0.01, max: 3, noNaN: true }), { minLength: 3, maxLength: 3 }),
});

/** A spec with one field replaced by junk. */
const corruptSpec = fc.tuple(smallSpec, fc.constantFrom('shortestEdge', 'cropPct', 'resample', 'rescaleFactor', 'mean', 'std'), fc.oneof(
  scalarJunk,
  fc.constantFrom(1e9, 2 ** 31, -1, 0, [1, 2], [NaN, 1, 1], [1, 1, Infinity], [1, 1, 0], [1, 1, 1e-50]),
)).map(([spec, key, value]) => ({ ...spec, doResize: true, doNormalize: true, doRescale: true, [key]: value }) as PreprocessSpec);

interface ImageCase { image: unknown; valid: boolean }

/** An ImageCase that fast-check prints as its shape, not as thousands of bytes. */
function imageCase(image: unknown, valid: boolean): ImageCase {
  const describeData = (data: unknown) =>
    ArrayBuffer.isView(data) ? `${data.constructor.name}(${(data as Uint8Array).length})` : Array.isArray(data) ? `Array(${data.length})` : fc.stringify(data);
  const text = () => {
    if (image === null || typeof image !== 'object') return fc.stringify(image);
    const { data, ...rest } = image as Record<string, unknown>;
    return `{ data: ${describeData(data)}, ${fc.stringify(rest).slice(1, -1)} }`;
  };
  return { image, valid, [fc.toStringMethod]: () => `{ image: ${text()}, valid: ${valid} }` } as ImageCase;
}

const validImage: fc.Arbitrary<ImageCase> = fc
  .record({ width: fc.integer({ min: 1, max: 24 }), height: fc.integer({ min: 1, max: 24 }), channels: fc.constantFrom(3 as const, 4 as const), clamped: fc.boolean() })
  .chain(({ width, height, channels, clamped }) =>
    fc.uint8Array({ minLength: width * height * channels, maxLength: width * height * channels }).map((bytes) =>
      imageCase({ data: clamped ? new Uint8ClampedArray(bytes.buffer) : bytes, width, height, channels }, true)));

const invalidImage: fc.Arbitrary<ImageCase> = fc.oneof(
  fc.tuple(validImage, fc.constantFrom('width', 'height', 'channels'), scalarJunk).map(([c, key, value]) => {
    const image = c.image as ImageInput;
    return imageCase({ ...image, [key]: value }, Object.is(image[key as keyof ImageInput], value));
  }),
  fc.tuple(validImage, fc.integer({ min: -3, max: 3 }).filter((d) => d !== 0)).map(([c, delta]) => {
    const image = c.image as ImageInput;
    const length = Math.max(0, image.data.length + delta);
    return imageCase({ ...image, data: new Uint8Array(length) }, length === image.data.length);
  }),
  fc.tuple(validImage, fc.constantFrom('floats', 'array', 'string', 'null', 'buffer')).map(([c, kind]) => {
    const image = c.image as ImageInput;
    const data = { floats: new Float32Array(image.data.length), array: Array.from(image.data), string: 'x'.repeat(image.data.length), null: null, buffer: image.data.buffer }[kind];
    return imageCase({ ...image, data }, false);
  }),
  fc.constantFrom(null, undefined, 42, {}, []).map((image) => imageCase(image, false)),
  // Claimed sizes far beyond the data: refused before anything is allocated.
  fc.tuple(fc.constantFrom(1e5, 2 ** 31, 1e9), fc.constantFrom(1e5, 2 ** 31, 1e9)).map(([width, height]) => imageCase({ data: new Uint8Array(12), width, height, channels: 3 }, false)),
);

/** A very tall, thin image whose resized size (short side to ~8000 px) would need terabytes. */
const extremeCase = fc.tuple(fc.integer({ min: 2000, max: 4000 }), fc.integer({ min: 300, max: 383 })).map(([height, edge]) => ({
  spec: { ...smallSpecDefaults(), shortestEdge: edge, cropPct: edge / MAX_IMAGE_EDGE },
  image: imageCase({ data: new Uint8Array(height * 3), width: 1, height, channels: 3 }, true),
}));

function smallSpecDefaults(): PreprocessSpec {
  return { doResize: true, shortestEdge: 32, cropPct: 0.875, resample: 3, doRescale: true, rescaleFactor: 1 / 255, doNormalize: true, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
}

describe('fuzz (d): images through preprocess()', () => {
  const classify = ({ spec, image, specValid }: { spec: PreprocessSpec; image: ImageCase; specValid: boolean }): Outcome => {
    let result: ReturnType<typeof preprocess>;
    try {
      result = preprocess(image.image as ImageInput, spec);
    } catch (error) {
      const e = error as Error;
      const named = e instanceof Error && !(e instanceof RangeError) && !(e instanceof TypeError) && /^preprocess: \S/.test(e.message);
      if (!named) throw new Crash(`${e?.name}: ${e?.message} (expected a plain "preprocess: ..." Error)\n${e?.stack ?? ''}`);
      return 'refused';
    }
    check(image.valid, 'an invalid image was accepted');
    const input = image.image as ImageInput;
    const side = spec.doResize ? spec.shortestEdge : undefined;
    check(result.height === (side ?? input.height) && result.width === (side ?? input.width), `output ${result.width}x${result.height}`);
    check(result.pixelValues instanceof Float32Array && result.pixelValues.length === 3 * result.height * result.width, 'output length');
    if (specValid) {
      const bad = result.pixelValues.findIndex((v) => !Number.isFinite(v));
      check(bad < 0, `pixelValues[${bad}] is ${result.pixelValues[bad]}`);
    }
    return 'accepted';
  };

  test('generated images and specs', async () => {
    const input = fc.oneof(
      { weight: 12, arbitrary: fc.record({ spec: smallSpec, image: validImage, specValid: fc.constant(true) }) },
      { weight: 6, arbitrary: fc.record({ spec: smallSpec, image: invalidImage, specValid: fc.constant(true) }) },
      { weight: 3, arbitrary: fc.record({ spec: corruptSpec, image: validImage, specValid: fc.constant(false) }) },
      { weight: 1, arbitrary: extremeCase.map((c) => ({ ...c, specValid: true })) },
    );
    const tally = await fuzz('preprocess()', input, classify);
    expect(tally.crashes).toBe(0);
    expect(tally.accepted + tally.refused).toBeGreaterThanOrEqual(RUNS);
    expect(tally.accepted).toBeGreaterThan(RUNS / 3);
    expect(tally.refused).toBeGreaterThan(RUNS / 10);
  }, FORMAT_TIMEOUT_MS);

  test('an image whose resized size would need terabytes is refused with a plain Error', () => {
    const spec: PreprocessSpec = { ...smallSpecDefaults(), shortestEdge: 383, cropPct: 383 / MAX_IMAGE_EDGE };
    const image: ImageInput = { data: new Uint8Array(3 * 4000), width: 1, height: 4000, channels: 3 };
    let caught: unknown;
    try {
      preprocess(image, spec);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(Error);
    expect(caught).not.toBeInstanceOf(RangeError);
    expect((caught as Error).message).toMatch(/^preprocess: .*1x4000/);
  });
});
