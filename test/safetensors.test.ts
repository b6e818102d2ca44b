import { describe, expect, test } from 'vitest';
import { readSafetensors, writeSafetensors, halfToFloat } from '../compiler/safetensors.js';
import { CxcError } from '../compiler/errors.js';

function file(header: object | string, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Uint8Array {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + bytes.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(bytes.length), true);
  out.set(bytes, 8);
  out.set(data, 8 + bytes.length);
  return out;
}

describe('safetensors', () => {
  test('round trip of float32 tensors', () => {
    const a = new Float32Array([1, -2.5, 3e-8]);
    const b = new Float32Array([7]);
    const back = readSafetensors(writeSafetensors([['a', { data: a, shape: [3] }], ['b', { data: b, shape: [1, 1] }]]), 'x');
    expect(Array.from(back.get('a')!.data)).toEqual(Array.from(a));
    expect(back.get('b')!.shape).toEqual([1, 1]);
  });

  test('F16 and BF16 decode exactly', () => {
    const f16 = new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7bff]).buffer);
    const bf16 = new Uint8Array(new Uint16Array([0x3f80, 0xc0a0]).buffer);
    const data = new Uint8Array([...f16, ...bf16]);
    const t = readSafetensors(file({
      h: { dtype: 'F16', shape: [4], data_offsets: [0, 8] },
      b: { dtype: 'BF16', shape: [2], data_offsets: [8, 12] },
    }, data), 'x');
    expect(Array.from(t.get('h')!.data)).toEqual([1, -2, 2 ** -24, 65504]);
    expect(Array.from(t.get('b')!.data)).toEqual([1, -5]);
    expect(halfToFloat(0x7c00)).toBe(Infinity);
  });

  const four = new Uint8Array(4);
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ['a file shorter than 8 bytes', new Uint8Array(3), /too short/],
    ['a header length past the end (truncated)', file('{}', new Uint8Array(0), 1000n), /runs past the end/],
    ['an absurd header length', file('{}', new Uint8Array(0), 2n ** 40n), /over the 100000000-byte limit/],
    ['a header that is not JSON', file('{nope'), /not UTF-8 JSON/],
    ['a header that is not an object', file('[1,2]'), /not a JSON object/],
    ['an unknown dtype', file({ t: { dtype: 'F8', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)), /tensor "t" has unknown dtype "F8"/],
    ['offsets out of range', file({ t: { dtype: 'F32', shape: [1], data_offsets: [0, 8] } }, four), /ends at byte 8 but the file holds only 4/],
    ['begin after end', file({ t: { dtype: 'F32', shape: [0], data_offsets: [4, 0] } }, four), /begin after end/],
    ['a byte length that disagrees with dtype x shape', file({ t: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, four), /holds 4 bytes but F32 \[2\] needs 8/],
    ['overlapping tensors', file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, four), /overlaps/],
    ['a gap', file({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)), /gap of 4 bytes before tensor "a"/],
    ['bytes after the last tensor', file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)), /4 bytes after the last tensor/],
    ['a negative shape', file({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, four), /invalid shape/],
  ];
  test.each(cases)('rejects %s with a named error', (_, bytes, message) => {
    expect(() => readSafetensors(bytes, 'model.safetensors')).toThrow(CxcError);
    expect(() => readSafetensors(bytes, 'model.safetensors')).toThrow(message);
    expect(() => readSafetensors(bytes, 'model.safetensors')).toThrow(/^model\.safetensors: not a valid safetensors file/);
  });
});
