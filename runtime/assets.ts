/**
 * Reading the module's files (weights, kernels) in browsers and in Node alike:
 * bytes given directly, a file: URL or a path in Node, anything else through fetch.
 */
import { checksum32 } from './checksum.js';
import type { ModelManifest } from './types.js';

export type ByteSource = string | URL | ArrayBuffer | ArrayBufferView;
export type ProgressCallback = (progress: { loaded: number; total: number; what: string }) => void;

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';

export async function readBytes(source: ByteSource, what: string, onProgress?: ProgressCallback): Promise<Uint8Array> {
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
      const code = (error as { code?: string }).code;
      throw new Error(`cxc: cannot read the ${what} file ${String(url ?? source)}${code ? ` (${code})` : ''}`, { cause: error });
    }
  }
  const response = await fetch(url ?? (source as string)).catch((error: unknown) => {
    throw new Error(`cxc: cannot fetch the ${what} file ${String(url ?? source)}: ${(error as Error).message}`, { cause: error });
  });
  if (!response.ok) throw new Error(`cxc: fetching the ${what} file ${response.url} failed: HTTP ${response.status}`);
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

/** A string is a URL when it has a scheme; otherwise a path (Node) or a relative URL (browser). */
function toUrl(text: string): URL | undefined {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text) || text.startsWith('file:') || text.startsWith('data:')) return new URL(text);
  if (!isNode && typeof location !== 'undefined') return new URL(text, location.href);
  return undefined;
}

/** Reads the weights file and proves it is the one this module was built for. */
export async function loadWeights(source: ByteSource, manifest: ModelManifest, onProgress?: ProgressCallback): Promise<Float32Array> {
  const bytes = await readBytes(source, 'weights', onProgress);
  const expected = manifest.weights.floats * 4;
  if (bytes.byteLength !== expected) {
    throw new Error(
      `cxc: the weights file ${describe(source)} is ${bytes.byteLength} bytes but ${manifest.name} expects ${expected}: ` +
        'it was packed for a different config or target, or it is truncated (make it with `cxc weights model.safetensors --config config.json`)',
    );
  }
  // A module built from a bare config knows the layout but not the checkpoint: size is all it can check.
  const sum = manifest.weights.checksum === null ? null : checksum32(bytes);
  if (sum !== manifest.weights.checksum) {
    throw new Error(
      `cxc: the weights file ${describe(source)} has checksum ${sum!.toString(16)} but ${manifest.name} was built for ${manifest.weights.checksum!.toString(16)}: ` +
        'it is corrupt or belongs to another checkpoint',
    );
  }
  // Copy into an aligned buffer: a Float32Array view needs 4-byte alignment.
  return bytes.byteOffset % 4 === 0
    ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : new Float32Array(bytes.slice().buffer);
}

function describe(source: ByteSource): string {
  return typeof source === 'string' || source instanceof URL ? String(source) : '(given as bytes)';
}
