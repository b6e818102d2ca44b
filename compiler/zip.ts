/**
 * The ZIP container of PyTorch checkpoints (torch.save since 1.6), read through its central
 * directory with random access: only the directory and the entries asked for are read.
 * torch.save stores entries uncompressed (and 64-byte aligned), so a stored entry is a plain
 * byte range of the file; ZIP64 records (files or entries past 4 GiB) are understood.
 */
import { inflateRawSync } from 'node:zlib';
import { CxcError } from './errors.js';
import type { RandomAccessFile } from './random-access.js';

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflated. */
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  localHeaderOffset: number;
}

const EOCD_SIGNATURE = 0x06054b50;
const EOCD64_LOCATOR_SIGNATURE = 0x07064b50;
const EOCD64_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_BYTES = 22;
const MAX_COMMENT = 0xffff;
/** A directory past this is refused before it is read: real checkpoints list a few thousand entries. */
const MAX_DIRECTORY_BYTES = 64 * 2 ** 20;

const fail = (file: RandomAccessFile, problem: string): never => {
  throw new CxcError(`not a valid PyTorch zip checkpoint: ${problem}`, { file: file.path });
};

/** Where the central directory is, from the end-of-central-directory record (ZIP64 where present). */
function findDirectory(file: RandomAccessFile): { offset: number; size: number; entries: number } {
  const tailLength = Math.min(file.size, EOCD_BYTES + MAX_COMMENT);
  const tail = file.read(file.size - tailLength, tailLength, 'the end of the zip');
  const view = new DataView(tail.buffer);
  let at = -1;
  for (let i = tailLength - EOCD_BYTES; i >= 0; i--) {
    if (view.getUint32(i, true) === EOCD_SIGNATURE) { at = i; break; }
  }
  if (at < 0) fail(file, 'no end-of-central-directory record (truncated, or not a zip file)');
  let entries = view.getUint16(at + 10, true);
  let size = view.getUint32(at + 12, true);
  let offset = view.getUint32(at + 16, true);
  if (entries === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    if (at < 20 || view.getUint32(at - 20, true) !== EOCD64_LOCATOR_SIGNATURE) fail(file, 'ZIP64 fields without a ZIP64 locator');
    const record = file.read(safeNumber(file, view.getBigUint64(at - 20 + 8, true)), 56, 'the ZIP64 end-of-directory record');
    const record64 = new DataView(record.buffer);
    if (record64.getUint32(0, true) !== EOCD64_SIGNATURE) fail(file, 'the ZIP64 locator points at no ZIP64 record');
    entries = safeNumber(file, record64.getBigUint64(32, true));
    size = safeNumber(file, record64.getBigUint64(40, true));
    offset = safeNumber(file, record64.getBigUint64(48, true));
  }
  if (size > MAX_DIRECTORY_BYTES) fail(file, `central directory of ${size} bytes is over the ${MAX_DIRECTORY_BYTES}-byte limit`);
  if (offset + size > file.size) fail(file, `central directory at ${offset}..${offset + size} runs past the end of the ${file.size}-byte file (truncated?)`);
  return { offset, size, entries };
}

function safeNumber(file: RandomAccessFile, value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(file, `a size or offset of ${value} bytes`);
  return Number(value);
}

/** Every entry of the archive by name; duplicate names are refused (which one would be meant?). */
export function readZipDirectory(file: RandomAccessFile): Map<string, ZipEntry> {
  const { offset, size, entries: count } = findDirectory(file);
  const bytes = file.read(offset, size, 'the central directory');
  const view = new DataView(bytes.buffer);
  const entries = new Map<string, ZipEntry>();
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 46 > size || view.getUint32(at, true) !== CENTRAL_SIGNATURE) fail(file, `central directory entry ${i} is damaged`);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    const next = at + 46 + nameLength + extraLength + commentLength;
    if (next > size) fail(file, `central directory entry ${i} runs past the directory`);
    const name = new TextDecoder('utf-8').decode(bytes.subarray(at + 46, at + 46 + nameLength));
    const entry: ZipEntry = {
      name,
      method: view.getUint16(at + 10, true),
      crc32: view.getUint32(at + 16, true),
      compressedSize: view.getUint32(at + 20, true),
      size: view.getUint32(at + 24, true),
      localHeaderOffset: view.getUint32(at + 42, true),
    };
    applyZip64(file, entry, new DataView(bytes.buffer, at + 46 + nameLength, extraLength));
    if (entries.has(name)) fail(file, `entry ${JSON.stringify(name)} appears twice`);
    entries.set(name, entry);
    at = next;
  }
  return entries;
}

/** ZIP64 extra field (id 1): 64-bit values for exactly the fields saturated at 0xffffffff, in this order. */
function applyZip64(file: RandomAccessFile, entry: ZipEntry, extra: DataView): void {
  for (let at = 0; at + 4 <= extra.byteLength; ) {
    const id = extra.getUint16(at, true);
    const length = extra.getUint16(at + 2, true);
    if (at + 4 + length > extra.byteLength) fail(file, `entry ${JSON.stringify(entry.name)} has a damaged extra field`);
    if (id === 1) {
      let field = at + 4;
      const next = (): number => {
        if (field + 8 > at + 4 + length) fail(file, `entry ${JSON.stringify(entry.name)} has a short ZIP64 field`);
        const value = safeNumber(file, extra.getBigUint64(field, true));
        field += 8;
        return value;
      };
      if (entry.size === 0xffffffff) entry.size = next();
      if (entry.compressedSize === 0xffffffff) entry.compressedSize = next();
      if (entry.localHeaderOffset === 0xffffffff) entry.localHeaderOffset = next();
    }
    at += 4 + length;
  }
}

/** Where an entry's bytes start in the file (past its local header), checked to lie inside the file. */
export function entryDataOffset(file: RandomAccessFile, entry: ZipEntry): number {
  const header = file.read(entry.localHeaderOffset, 30, `the local header of ${entry.name}`);
  const view = new DataView(header.buffer);
  if (view.getUint32(0, true) !== LOCAL_SIGNATURE) fail(file, `entry ${JSON.stringify(entry.name)} has no local header where the directory says`);
  const start = entry.localHeaderOffset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
  if (start + entry.compressedSize > file.size) {
    fail(file, `entry ${JSON.stringify(entry.name)} (${entry.compressedSize} bytes at ${start}) runs past the end of the ${file.size}-byte file (truncated?)`);
  }
  return start;
}

/** The whole (small) entry, inflated when it was compressed; `limit` bounds what it may expand to. */
export function readZipEntry(file: RandomAccessFile, entry: ZipEntry, limit: number): Uint8Array {
  if (entry.size > limit) fail(file, `entry ${JSON.stringify(entry.name)} is ${entry.size} bytes, over the ${limit}-byte limit`);
  const raw = file.read(entryDataOffset(file, entry), entry.compressedSize, entry.name);
  let data = raw;
  if (entry.method === 8) {
    try {
      data = new Uint8Array(inflateRawSync(raw, { maxOutputLength: limit }));
    } catch (error) {
      fail(file, `entry ${JSON.stringify(entry.name)} does not inflate (${(error as Error).message})`);
    }
  } else if (entry.method !== 0) {
    fail(file, `entry ${JSON.stringify(entry.name)} uses compression method ${entry.method}; cxc reads stored or deflated entries`);
  }
  if (data.byteLength !== entry.size) fail(file, `entry ${JSON.stringify(entry.name)} holds ${data.byteLength} bytes, the directory says ${entry.size}`);
  if (crc32(data) !== entry.crc32) fail(file, `entry ${JSON.stringify(entry.name)} fails its CRC-32 check (corrupted)`);
  return data;
}

let crcTable: Uint32Array | undefined;

/** CRC-32 (the zip polynomial), for the small entries read whole. */
export function crc32(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
