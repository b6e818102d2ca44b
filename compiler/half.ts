/**
 * float32 -> IEEE half for weights files stored as f16 (runtime/half.ts encodes and decodes them).
 */
import { CxcError } from './errors.js';
import { floatsToHalves as encodeHalves } from '../runtime/half.js';

/** Every float as a half; refuses weights past the half range (they would become infinity). */
export function floatsToHalves(data: Float32Array, what: string): Uint16Array {
  const out = new Uint16Array(data.length);
  const outOfRange = encodeHalves(data, out);
  if (outOfRange >= 0) {
    throw new CxcError(`${what}: weight ${data[outOfRange]} at packed index ${outOfRange} is outside the float16 range (|x| <= 65504)`, { hint: 'build with --weights-dtype f32' });
  }
  return out;
}
