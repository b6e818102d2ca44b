/**
 * The safetensors format: 8-byte little-endian header length, a JSON header
 * { name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: {...} },
 * then the tensor bytes. Every field is checked before a byte is trusted,
 * because checkpoints come from the internet.
 */
import { CxcError, show } from './errors.js';

export type StoredDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'U8' | 'I8' | 'I32' | 'I64' | 'I16' | 'U16' | 'BOOL';

export const DTYPE_BYTES: Record<StoredDtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1,
};

export interface TensorEntry {
  dtype: StoredDtype;
  shape: number[];
  /** Float dtypes decode to float32; U8/BOOL stay bytes; other integers decode to float32 too. */
  data: Float32Array | Uint8Array;
}

export interface SafetensorsHeaderEntry {
  dtype: StoredDtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Headers past this are refused before parsing: real ones are a few hundred KB. */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Parses and checks the header. `bytes` holds at least the 8-byte length and the header (the whole
 * file, or just its start when the tensors are read later at their offsets); `fileLength` is the
 * whole file's size.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, source: string, fileLength = bytes.byteLength): { entries: Map<string, SafetensorsHeaderEntry>; dataStart: number; metadata: Record<string, string> } {
  const fail = (problem: string): never => {
    throw new CxcError(`not a valid safetensors file: ${problem}`, { file: source });
  };
  if (bytes.byteLength < 8) fail(`only ${fileLength} bytes, too short for the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLength} is over the ${MAX_HEADER_BYTES}-byte limit`);
  if (Number(headerLength) + 8 > Math.min(bytes.byteLength, fileLength)) {
    fail(`header length ${headerLength} runs past the end of the ${fileLength}-byte file (truncated?)`);
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  let headerText = '';
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart));
    header = JSON.parse(headerText);
  } catch (error) {
    fail(`header is not UTF-8 JSON (${(error as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');
  // JSON.parse keeps the last of two equal keys without a word; a checkpoint that names a tensor twice is ambiguous.
  const duplicate = duplicateTopLevelKey(headerText);
  if (duplicate !== undefined) fail(`tensor ${JSON.stringify(duplicate)} appears twice in the header`);

  const entries = new Map<string, SafetensorsHeaderEntry>();
  let metadata: Record<string, string> = {};
  const dataLength = fileLength - dataStart;
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw === 'object' && raw !== null && !Array.isArray(raw)) metadata = raw as Record<string, string>;
      continue;
    }
    const where = `tensor "${name}"`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`${where} is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) fail(`${where} has unknown dtype ${show(dtype)}`);
    if (!Array.isArray(shape) || shape.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)) {
      fail(`${where} has invalid shape ${show(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || offsets.some((o) => typeof o !== 'number' || !Number.isSafeInteger(o) || o < 0)) {
      fail(`${where} has invalid data_offsets ${show(offsets)}`);
    }
    const [begin, end] = offsets as number[];
    if (begin > end) fail(`${where} has data_offsets [${begin}, ${end}] with begin after end`);
    if (end > dataLength) fail(`${where} ends at byte ${end} but the file holds only ${dataLength} data bytes (truncated?)`);
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = elements * DTYPE_BYTES[dtype as StoredDtype];
    if (end - begin !== expected) {
      fail(`${where} holds ${end - begin} bytes but ${dtype} ${show(shape)} needs ${expected}`);
    }
    entries.set(name, { dtype: dtype as StoredDtype, shape: shape as number[], begin, end });
  }
  // Tensors must tile the data area exactly: no overlaps, no gaps (as the format requires).
  const spans = [...entries.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let cursor = 0;
  for (const [name, entry] of spans) {
    if (entry.begin < cursor) fail(`tensor "${name}" overlaps the tensor before it (begins at ${entry.begin}, previous ends at ${cursor})`);
    if (entry.begin > cursor) fail(`gap of ${entry.begin - cursor} bytes before tensor "${name}"`);
    cursor = entry.end;
  }
  if (cursor !== dataLength) fail(`${dataLength - cursor} bytes after the last tensor`);
  return { entries, dataStart, metadata };
}

/**
 * The first key that the top-level object of `text` (valid JSON, an object) holds twice.
 * A string directly inside that object is a key when a colon follows it.
 */
function duplicateTopLevelKey(text: string): string | undefined {
  const seen = new Set<string>();
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      for (i++; text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c /* \ */) i++;
      if (depth !== 1) continue;
      let next = i + 1;
      while (text.charCodeAt(next) <= 0x20) next++; // JSON whitespace
      if (text.charCodeAt(next) !== 0x3a /* : */) continue;
      const key = JSON.parse(text.slice(start, i + 1)) as string;
      if (seen.has(key)) return key;
      seen.add(key);
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    }
  }
  return undefined;
}

/** Reads every tensor of a safetensors file into memory. */
export function readSafetensors(bytes: Uint8Array, source: string): Map<string, TensorEntry> {
  const { entries, dataStart } = parseSafetensorsHeader(bytes, source);
  const tensors = new Map<string, TensorEntry>();
  for (const [name, entry] of entries) {
    const raw = bytes.subarray(dataStart + entry.begin, dataStart + entry.end);
    tensors.set(name, { dtype: entry.dtype, shape: entry.shape, data: decodeTensor(entry.dtype, raw) });
  }
  return tensors;
}

/** A tensor's stored bytes as float32 (float dtypes and integers) or bytes (U8, BOOL); shared by every checkpoint format. */
export function decodeTensor(dtype: StoredDtype, raw: Uint8Array): Float32Array | Uint8Array {
  if (dtype === 'U8' || dtype === 'BOOL') return raw.slice();
  const count = raw.byteLength / DTYPE_BYTES[dtype];
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Float32Array(count);
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      break;
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(i * 8, true);
      break;
    case 'F16':
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      break;
    case 'BF16': {
      // bfloat16 is the top half of a float32: shifting it back up is exact.
      const bits = new Uint32Array(1);
      const asFloat = new Float32Array(bits.buffer);
      for (let i = 0; i < count; i++) {
        bits[0] = view.getUint16(i * 2, true) << 16;
        out[i] = asFloat[0];
      }
      break;
    }
    case 'I8': for (let i = 0; i < count; i++) out[i] = view.getInt8(i); break;
    case 'I16': for (let i = 0; i < count; i++) out[i] = view.getInt16(i * 2, true); break;
    case 'U16': for (let i = 0; i < count; i++) out[i] = view.getUint16(i * 2, true); break;
    case 'I32': for (let i = 0; i < count; i++) out[i] = view.getInt32(i * 4, true); break;
    case 'I64': for (let i = 0; i < count; i++) out[i] = Number(view.getBigInt64(i * 8, true)); break;
  }
  return out;
}

/** IEEE half -> number, exact (every half is a float32). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

export interface TensorToWrite {
  shape: number[];
  data: Float32Array | Uint8Array;
}

/** Writes float32 (or U8) tensors in the order given, as safetensors. */
export function writeSafetensors(tensors: Array<[string, TensorToWrite]>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const dtype = tensor.data instanceof Float32Array ? 'F32' : 'U8';
    const expected = tensor.shape.reduce((a, b) => a * b, 1);
    if (expected !== tensor.data.length) {
      throw new Error(`tensor "${name}": shape ${show(tensor.shape)} needs ${expected} elements, got ${tensor.data.length}`);
    }
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + tensor.data.byteLength] };
    offset += tensor.data.byteLength;
  }
  let headerText = JSON.stringify(header);
  // Pad the header with spaces so tensor data starts 8-byte aligned, as the reference writer does.
  headerText += ' '.repeat((8 - ((8 + new TextEncoder().encode(headerText).byteLength) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(headerText);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let cursor = 8 + headerBytes.byteLength;
  for (const [, tensor] of tensors) {
    out.set(new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength), cursor);
    cursor += tensor.data.byteLength;
  }
  return out;
}
