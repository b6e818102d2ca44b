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
