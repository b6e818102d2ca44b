/**
 * IEEE half precision for weights files stored as f16 (half the download).
 * Decoding uses the exponent-rebias trick: a half's magnitude bits shifted into a
 * float32's place, times 2^112, is the half's value for normal and subnormal halves
 * alike (weights are finite, so infinities and NaNs never occur).
 */
const REBIAS = 2 ** 112;

export function halvesToFloats(halves: Uint16Array, out = new Float32Array(halves.length)): Float32Array {
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    bits[i] = (h & 0x7fff) << 13;
    out[i] *= REBIAS;
    bits[i] |= (h & 0x8000) << 16;
  }
  return out;
}

/**
 * float32 -> IEEE half bits, round to nearest even (the f16 WebGPU kernels' weights). Returns the
 * index of the first value outside the half range (|x| > 65504), or -1 when every value fits.
 */
export function floatsToHalves(floats: Float32Array, out: Uint16Array): number {
  const bits = new Uint32Array(floats.buffer, floats.byteOffset, floats.length);
  let firstOutOfRange = -1;
  for (let i = 0; i < floats.length; i++) {
    const f = bits[i];
    const sign = (f >>> 16) & 0x8000;
    const exponent = ((f >>> 23) & 0xff) - 112; // rebias 127 -> 15
    const mantissa = f & 0x7fffff;
    let half: number;
    if (exponent >= 31) {
      half = sign | 0x7c00;
      if (firstOutOfRange < 0) firstOutOfRange = i;
    } else if (exponent <= 0) {
      // subnormal half or zero: the implicit bit shifted in, rounded to nearest even
      if (exponent < -10) half = sign;
      else {
        const shift = 14 - exponent;
        const full = mantissa | 0x800000;
        const kept = full >>> shift;
        const rest = full & ((1 << shift) - 1);
        const midpoint = 1 << (shift - 1);
        half = sign | (kept + (rest > midpoint || (rest === midpoint && kept & 1) ? 1 : 0));
      }
    } else {
      const kept = (exponent << 10) | (mantissa >>> 13);
      const rest = mantissa & 0x1fff;
      // a carry out of the mantissa bumps the exponent, as it should (up to infinity)
      half = sign | (kept + (rest > 0x1000 || (rest === 0x1000 && kept & 1) ? 1 : 0));
      if ((half & 0x7c00) === 0x7c00 && firstOutOfRange < 0) firstOutOfRange = i;
    }
    out[i] = half;
  }
  return firstOutOfRange;
}
