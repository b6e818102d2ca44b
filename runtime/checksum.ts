/**
 * A fast 32-bit checksum of a weights file, baked into the generated module and
 * verified at load. It is not cryptographic: it catches truncation, corruption
 * and a weights file packed for a different build.
 */
export function checksum32(data: Float32Array | Uint8Array | ArrayBuffer): number {
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const words = bytes.byteLength >>> 2;
  const aligned = bytes.byteOffset % 4 === 0;
  const view = aligned ? new Uint32Array(bytes.buffer, bytes.byteOffset, words) : new Uint32Array(bytes.slice(0, words * 4).buffer);
  // FNV-1a over 32-bit words, with a final avalanche so nearby files differ in every bit.
  let hash = 0x811c9dc5 ^ bytes.byteLength;
  for (let i = 0; i < words; i++) hash = Math.imul(hash ^ view[i], 0x01000193);
  for (let i = words * 4; i < bytes.byteLength; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193);
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  return hash >>> 0;
}
