/**
 * A fast 32-bit checksum of a weights file, baked into the generated module and
 * verified at load. It is not cryptographic: it catches truncation, corruption and a
 * weights file packed for a different build.
 *
 * FNV-1a-style over 32-bit words in four interleaved lanes (word i feeds lane i % 4),
 * so the WASM backend computes the same value with one i32x4 multiply per 16 bytes
 * over the weights already in its memory; bytes past the last 16-byte block feed lane 0.
 */
const PRIME = 0x01000193;

export function laneSeeds(): [number, number, number, number] {
  return [0x811c9dc5, 0x811c9dc5 ^ 1, 0x811c9dc5 ^ 2, 0x811c9dc5 ^ 3];
}

/** The lanes over the whole 16-byte blocks of `bytes`. */
export function checksumLanes(bytes: Uint8Array): [number, number, number, number] {
  const lanes = laneSeeds();
  const blocks = bytes.byteLength >>> 4;
  const words = bytes.byteOffset % 4 === 0
    ? new Uint32Array(bytes.buffer, bytes.byteOffset, blocks * 4)
    : new Uint32Array(bytes.slice(0, blocks * 16).buffer);
  let [h0, h1, h2, h3] = lanes;
  for (let i = 0; i < blocks * 4; i += 4) {
    h0 = Math.imul(h0 ^ words[i], PRIME);
    h1 = Math.imul(h1 ^ words[i + 1], PRIME);
    h2 = Math.imul(h2 ^ words[i + 2], PRIME);
    h3 = Math.imul(h3 ^ words[i + 3], PRIME);
  }
  return [h0, h1, h2, h3];
}

/** Folds the lanes, the bytes after the last whole block, and the length into the checksum. */
export function finishChecksum(lanes: ArrayLike<number>, tail: Uint8Array, byteLength: number): number {
  let first = lanes[0] | 0;
  for (let i = 0; i < tail.length; i++) first = Math.imul(first ^ tail[i], PRIME);
  let hash = byteLength | 0;
  for (const lane of [first, lanes[1], lanes[2], lanes[3]]) {
    hash = Math.imul(hash ^ lane, 0x85ebca6b);
    hash ^= hash >>> 13;
  }
  return hash >>> 0;
}

export function checksum32(data: Float32Array | Uint8Array | ArrayBuffer): number {
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  // `% 16`, not `& ~15`: bitwise operators wrap lengths past 2 GiB to negative numbers.
  return finishChecksum(checksumLanes(bytes), bytes.subarray(bytes.byteLength - (bytes.byteLength % 16)), bytes.byteLength);
}
