/**
 * float32 -> IEEE half for weights files stored as f16 (runtime/half.ts decodes them).
 */
import { CxcError } from './errors.js';

/** float32 bits -> half bits, rounding to nearest even; past the half range gives infinity. */
function halfBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow: infinity
  if (e <= 0) {
    // subnormal half (or zero): shift the implicit bit in, round to nearest even
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const midpoint = 1 << (shift - 1);
    return sign | (half + (rest > midpoint || (rest === midpoint && (half & 1)) ? 1 : 0));
  }
  const half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // a carry out of the mantissa correctly bumps the exponent (and can reach infinity)
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && (half & 1)) ? 1 : 0));
}

/** Every float as a half; refuses weights past the half range (they would become infinity). */
export function floatsToHalves(data: Float32Array, what: string): Uint16Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const h = halfBits(bits[i]);
    if ((h & 0x7c00) === 0x7c00) {
      throw new CxcError(`${what}: weight ${data[i]} at packed index ${i} is outside the float16 range (|x| <= 65504)`, { hint: 'build with --weights-dtype f32' });
    }
    out[i] = h;
  }
  return out;
}
