/**
 * Reading the module's files (weights, kernels) in browsers and in Node alike:
 * bytes given directly, a file: URL or a path in Node, anything else through fetch.
 */
import { checksum32 } from './checksum.js';
import { weightsFileBytes, type ModelManifest } from './types.js';

export type ByteSource = string | URL | ArrayBuffer | ArrayBufferView | CachingSource;

/**
 * Weights read through a cache (browsers' Cache Storage: runtime/cache.ts). loadWeights reads
 * the response it opens, verifies the bytes as it would a download, and reports the verdict.
 */
export interface CachingSource {
  readonly url: URL;
  /** The cached response, or a download that is being stored as it is read. */
  open(): Promise<Response>;
  /** The bytes passed the checks. */
  accepted(): Promise<void>;
  /** The bytes failed: the entry is dropped; returns the error to throw. */
  rejected(error: unknown): Promise<unknown>;
}

export function isCachingSource(source: unknown): source is CachingSource {
  return typeof source === 'object' && source !== null && typeof (source as CachingSource).open === 'function' && (source as CachingSource).url instanceof URL;
}
export type ProgressCallback = (progress: { loaded: number; total: number; what: string }) => void;

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';

export async function readBytes(source: ByteSource, what: string, onProgress?: ProgressCallback): Promise<Uint8Array> {
  if (isCachingSource(source)) return readResponse(await source.open(), what, onProgress);
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  const url = typeof source === 'string' ? toUrl(source) : source;
  if (isNode && (url === undefined || url.protocol === 'file:')) {
    // Kept out of bundlers' sight: browsers never reach this branch.
    const fs = (await import(/* @vite-ignore */ 'node:fs/promises' as string)) as { readFile(path: string | URL): Promise<Uint8Array> };
    try {
      const bytes = await fs.readFile(url ?? (source as string));
      onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength, what });
      return bytes;
    } catch (error) {
      throw cannotRead(url ?? (source as string), what, error);
    }
  }
  return readResponse(await fetchOk(url ?? (source as string), what), what, onProgress);
}

/** A response's whole body, reporting progress as it arrives. */
async function readResponse(response: Response, what: string, onProgress?: ProgressCallback): Promise<Uint8Array> {
  const total = Number(response.headers.get('content-length') ?? 0);
  if (!response.body || !onProgress) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    onProgress({ loaded, total: Math.max(total, loaded), what });
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

function cannotRead(path: string | URL, what: string, error: unknown): Error {
  const code = (error as { code?: string }).code;
  return new Error(`cxc: cannot read the ${what} file ${String(path)}${code ? ` (${code})` : ''}`, { cause: error });
}

/** fetch, with a network failure or an HTTP error status turned into a message naming the file. */
async function fetchOk(url: string | URL, what: string): Promise<Response> {
  const response = await fetch(url).catch((error: unknown) => {
    throw new Error(`cxc: cannot fetch the ${what} file ${String(url)}: ${(error as Error).message}`, { cause: error });
  });
  if (!response.ok) throw new Error(`cxc: fetching the ${what} file ${response.url} failed: HTTP ${response.status}`);
  return response;
}

/** A string is a URL when it has a scheme; otherwise a path (Node) or a relative URL (browser). */
function toUrl(text: string): URL | undefined {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text) || text.startsWith('file:') || text.startsWith('data:')) return new URL(text);
  if (!isNode && typeof location !== 'undefined') return new URL(text, location.href);
  return undefined;
}

export interface WeightsDestination {
  /** Where to put the file's bytes (exactly the file's size): read straight into it. */
  into: Uint8Array;
  /**
   * Bytes [0, upTo) of `into` are final (upTo only grows). Called on this thread while later
   * chunks are still being read: the WASM backend checksums them and warms its kernels up here.
   */
  arrived?: (upTo: number) => Promise<void> | undefined;
  /** Every byte is in: their checksum, computed faster than the JavaScript one (the WASM backend's). */
  checksum?: () => number;
}

/** Node reads: chunk size and how many are in flight (the page faults of fresh memory then overlap on several cores). */
const READ_CHUNK_BYTES = 8 * 2 ** 20;
const READS_IN_FLIGHT = 4;

/**
 * Reads the weights file and proves it is the one this module was built for: the size
 * before reading where it can be known, then the checksum. With a destination, the bytes
 * go straight into it (the WASM backend's memory), with no second copy, and are
 * checksummed chunk by chunk while later chunks are still arriving.
 */
export async function loadWeights(source: ByteSource, manifest: ModelManifest, onProgress?: ProgressCallback, destination?: WeightsDestination): Promise<Uint8Array> {
  const expected = weightsFileBytes(manifest.weights);
  const wrongSize = (actual: number, atLeast = false) =>
    new Error(
      `cxc: the weights file ${describe(source)} is ${atLeast ? 'more than ' : ''}${actual} bytes but ${manifest.name} expects ${expected} (${manifest.weights.dtype} weights): ` +
        'it was packed for a different config, target or dtype, or it is truncated (make it with ' +
        `\`cxc weights model.safetensors --config config.json --target ${manifest.target}${manifest.weights.dtype === 'f32' ? '' : ` --weights-dtype ${manifest.weights.dtype}`}\`)`,
    );
  if (isCachingSource(source)) {
    let bytes: Uint8Array;
    try {
      bytes = await readWeights(await source.open(), expected, wrongSize, onProgress, destination);
      verifyChecksum(bytes, source, manifest, destination);
    } catch (error) {
      throw await source.rejected(error);
    }
    await source.accepted();
    return bytes;
  }
  const bytes = await readWeights(source, expected, wrongSize, onProgress, destination);
  verifyChecksum(bytes, source, manifest, destination);
  return bytes;
}

/** The weights file's bytes, its size checked (into the destination when there is one). */
async function readWeights(source: Exclude<ByteSource, CachingSource> | Response, expected: number, wrongSize: WrongSize, onProgress?: ProgressCallback, destination?: WeightsDestination): Promise<Uint8Array> {
  if (source instanceof Response) {
    if (destination) return responseInto(source, destination, wrongSize, onProgress);
    const bytes = await readResponse(source, 'weights', onProgress);
    if (bytes.byteLength !== expected) throw wrongSize(bytes.byteLength);
    return bytes;
  }
  const url = typeof source === 'string' ? toUrl(source) : source instanceof URL ? source : undefined;
  const isFile = (typeof source === 'string' || source instanceof URL) && (url === undefined || url.protocol === 'file:');
  if (destination && isNode && isFile) return readFileInto(url ?? (source as string), destination, wrongSize, onProgress);
  if (destination && !isFile && !(source instanceof ArrayBuffer) && !ArrayBuffer.isView(source)) {
    return responseInto(await fetchOk(url ?? (source as string), 'weights'), destination, wrongSize, onProgress);
  }
  let bytes = await readBytes(source, 'weights', onProgress);
  if (bytes.byteLength !== expected) throw wrongSize(bytes.byteLength);
  if (destination) {
    destination.into.set(bytes);
    bytes = destination.into;
    await destination.arrived?.(bytes.byteLength);
  }
  return bytes;
}

/** The checksum the module was built with, or an error naming the file. */
function verifyChecksum(bytes: Uint8Array, source: ByteSource, manifest: ModelManifest, destination?: WeightsDestination): void {
  // A module built from a bare config knows the layout but not the checkpoint: size is all it can check.
  if (manifest.weights.checksum !== null) {
    const sum = destination?.checksum ? destination.checksum() : checksum32(bytes);
    if (sum !== manifest.weights.checksum) {
      throw new Error(
        `cxc: the weights file ${describe(source)} has checksum ${sum.toString(16)} but ${manifest.name} was built for ${manifest.weights.checksum.toString(16)}: ` +
          'it is corrupt or belongs to another checkpoint',
      );
    }
  }
}

type WrongSize = (actual: number, atLeast?: boolean) => Error;

/**
 * Node: the file's size first, then its bytes straight into the destination, several
 * chunks in flight on libuv's pool; each finished chunk (in order) is checksummed on this
 * thread while the next ones are read.
 */
async function readFileInto(path: string | URL, destination: WeightsDestination, wrongSize: WrongSize, onProgress?: ProgressCallback): Promise<Uint8Array> {
  type Handle = { stat(): Promise<{ size: number }>; read(b: Uint8Array, o: number, l: number, p: number): Promise<{ bytesRead: number }>; close(): Promise<void> };
  const fs = (await import(/* @vite-ignore */ 'node:fs/promises' as string)) as { open(p: string | URL, flags: string): Promise<Handle> };
  const { into } = destination;
  let handle: Handle;
  try {
    handle = await fs.open(path, 'r');
  } catch (error) {
    throw cannotRead(path, 'weights', error);
  }
  try {
    const { size } = await handle.stat();
    if (size !== into.byteLength) throw wrongSize(size);
    const readChunk = async (at: number, length: number) => {
      for (let done = 0; done < length; ) {
        const { bytesRead } = await handle.read(into, at + done, length - done, at + done);
        if (bytesRead === 0) throw wrongSize(at + done); // truncated while being read
        done += bytesRead;
      }
    };
    const chunks: Promise<void>[] = [];
    const issue = () => {
      const at = chunks.length * READ_CHUNK_BYTES;
      if (at >= size) return;
      const pending = readChunk(at, Math.min(READ_CHUNK_BYTES, size - at));
      pending.catch(() => undefined); // awaited in order below; this only keeps a later chunk's failure from going unhandled
      chunks.push(pending);
    };
    for (let i = 0; i < READS_IN_FLIGHT; i++) issue();
    for (let index = 0; index < chunks.length; index++) {
      await chunks[index];
      issue();
      const loaded = Math.min(size, (index + 1) * READ_CHUNK_BYTES);
      await destination.arrived?.(loaded);
      onProgress?.({ loaded, total: size, what: 'weights' });
    }
    return into;
  } finally {
    await handle.close();
  }
}

/** A response (a download or a cached copy): the body streamed straight into the destination (no whole-file copy), checksummed as it arrives. */
async function responseInto(response: Response, destination: WeightsDestination, wrongSize: WrongSize, onProgress?: ProgressCallback): Promise<Uint8Array> {
  const { into } = destination;
  // Content-Length is the encoded size when the server compresses, so it is only trusted without Content-Encoding.
  const declared = response.headers.get('content-encoding') ? NaN : Number(response.headers.get('content-length') ?? NaN);
  if (Number.isFinite(declared) && declared !== into.byteLength) {
    await response.body?.cancel();
    throw wrongSize(declared);
  }
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (bytes.byteLength !== into.byteLength) throw wrongSize(bytes.byteLength);
    into.set(bytes);
    await destination.arrived?.(into.byteLength);
    onProgress?.({ loaded: into.byteLength, total: into.byteLength, what: 'weights' });
    return into;
  }
  const reader = response.body.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.byteLength > into.byteLength) {
      await reader.cancel();
      throw wrongSize(into.byteLength, true);
    }
    into.set(value, loaded);
    loaded += value.byteLength;
    await destination.arrived?.(loaded);
    onProgress?.({ loaded, total: into.byteLength, what: 'weights' });
  }
  if (loaded !== into.byteLength) throw wrongSize(loaded);
  return into;
}

function describe(source: ByteSource): string {
  if (isCachingSource(source)) return String(source.url);
  return typeof source === 'string' || source instanceof URL ? String(source) : '(given as bytes)';
}
