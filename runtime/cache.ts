/**
 * weights.bin in the browser's Cache Storage, so a page pays the download once.
 *
 * - One cache per package version, named `cxc-weights:<name>@<version>`; inside it the entry's
 *   key is the weights URL with `cxc-checksum=<checksum>` added, so a rebuilt package (another
 *   version or other weights) never reads an older file. Opening a version's cache deletes the
 *   caches of this package's other versions and entries of the same file with another checksum.
 * - A cached copy goes through the same checks as a download (size, then the checksum baked into
 *   the module). One that fails is deleted, and load() starts again from the network: it is never
 *   used. A download is stored while it is read (a tee of the body), and dropped if it fails.
 * - No Cache Storage (Node, an insecure context, storage blocked): weights are read as before.
 */
import { isCachingSource, type ByteSource, type CachingSource } from './assets.js';
import type { ModelManifest } from './types.js';
import type { WeightsOrigin } from './model.js';

const PREFIX = 'cxc-weights:';

const globals = globalThis as unknown as { caches?: CacheStorage; location?: { href: string }; process?: { versions?: { node?: string } } };
const isNode = typeof globals.process?.versions?.node === 'string';

/** Thrown through load() when a cached copy failed its checks: it was deleted; load again from the network. */
export class CachedWeightsRejected extends Error {
  constructor(readonly retry: CachingSource, readonly reason: unknown) {
    super(`cxc: the cached weights ${String(retry.url)} failed their checks and were deleted (${(reason as Error)?.message ?? String(reason)})`, { cause: reason });
  }
}

export const cacheNameOf = (name: string, version: string) => `${PREFIX}${name}@${version}`;

/** The cache entry's key: the weights URL with the checksum the module expects. */
export function cacheKeyOf(url: URL, checksum: number | null): string {
  const key = new URL(url.href);
  key.hash = '';
  key.searchParams.set('cxc-checksum', checksum === null ? 'unchecked' : checksum.toString(16).padStart(8, '0'));
  return key.href;
}

/** Where weights come from when not through the cache. */
function originOf(source: ByteSource): WeightsOrigin {
  if (typeof source === 'string' || source instanceof URL) {
    const text = String(source);
    return text.startsWith('file:') || (isNode && !/^[a-z][a-z0-9+.-]*:/i.test(text)) ? 'file' : 'network';
  }
  return isCachingSource(source) ? 'network' : 'bytes';
}

/**
 * Runs `create` (which reads the weights through loadWeights) with the weights read through
 * Cache Storage where there is one and `cache` is not false; a rejected cached copy is
 * downloaded again. Returns what `create` made and where the weights came from.
 */
export async function withWeightsCache<T>(
  source: ByteSource,
  manifest: ModelManifest,
  version: string,
  enabled: boolean | undefined,
  create: (source: ByteSource) => Promise<T>,
): Promise<{ value: T; origin: WeightsOrigin }> {
  const url = cacheableUrl(source);
  const storage = globals.caches;
  if (enabled === false || isNode || !storage || !url) return { value: await create(source), origin: originOf(source) };
  let cache: Cache;
  try {
    cache = await storage.open(cacheNameOf(manifest.name, version));
  } catch {
    return { value: await create(source), origin: originOf(source) }; // storage blocked (private mode, quota): just download
  }
  const key = cacheKeyOf(url, manifest.weights.checksum);
  await dropStale(storage, cache, manifest.name, version, key).catch(() => undefined);
  const first = new CacheEntry(cache, url, key, true);
  try {
    const value = await create(first);
    return { value, origin: first.origin };
  } catch (error) {
    if (!(error instanceof CachedWeightsRejected)) throw error;
    console.warn(error.message);
    const retry = error.retry as CacheEntry;
    return { value: await create(retry), origin: retry.origin };
  }
}

/** A URL for weights that fetch would download (not bytes, not a file in Node). */
function cacheableUrl(source: ByteSource): URL | undefined {
  if (typeof source !== 'string' && !(source instanceof URL)) return undefined;
  try {
    const url = new URL(String(source), globals.location?.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url : undefined;
  } catch {
    return undefined;
  }
}

/** One cache entry, read if present (and `readCached`), else downloaded and stored. */
class CacheEntry implements CachingSource {
  origin: WeightsOrigin = 'network';
  private storing: Promise<void> | undefined;

  constructor(private readonly cache: Cache, readonly url: URL, private readonly key: string, private readonly readCached: boolean) {}

  async open(): Promise<Response> {
    const cached = this.readCached ? await this.cache.match(this.key).catch(() => undefined) : undefined;
    if (cached) {
      this.origin = 'cache';
      return cached;
    }
    this.origin = 'network';
    const response = await fetch(this.url).catch((error: unknown) => {
      throw new Error(`cxc: cannot fetch the weights file ${this.url.href}: ${(error as Error).message}`, { cause: error });
    });
    if (!response.ok) throw new Error(`cxc: fetching the weights file ${response.url || this.url.href} failed: HTTP ${response.status}`);
    if (!response.body) return response;
    // One branch is read into the model, the other written to the cache at the same time.
    const [read, store] = response.body.tee();
    const headers = { 'Content-Type': 'application/octet-stream' };
    this.storing = this.cache.put(this.key, new Response(store, { headers })).catch((error: unknown) => {
      console.warn(`cxc: could not keep the weights in Cache Storage: ${(error as Error).message}`);
    });
    return new Response(read, { status: response.status, headers: response.headers });
  }

  async accepted(): Promise<void> {
    await this.storing;
  }

  async rejected(error: unknown): Promise<unknown> {
    await this.storing;
    await this.cache.delete(this.key).catch(() => false);
    if (this.origin === 'cache') return new CachedWeightsRejected(new CacheEntry(this.cache, this.url, this.key, false), error);
    return error;
  }
}

/** Deletes this package's caches of other versions, and entries of this file under another checksum. */
async function dropStale(storage: CacheStorage, cache: Cache, name: string, version: string, key: string): Promise<void> {
  const current = cacheNameOf(name, version);
  for (const cacheName of await storage.keys()) {
    if (cacheName.startsWith(`${PREFIX}${name}@`) && cacheName !== current) await storage.delete(cacheName);
  }
  const fileOf = (href: string) => {
    const url = new URL(href);
    url.search = '';
    return url.href;
  };
  for (const request of await cache.keys()) {
    if (request.url !== key && fileOf(request.url) === fileOf(key)) await cache.delete(request);
  }
}

/** Deletes every cached copy of this package's weights (all versions); true when there was one. */
export async function clearWeightsCache(name: string): Promise<boolean> {
  const storage = globals.caches;
  if (!storage) return false;
  let deleted = false;
  for (const cacheName of await storage.keys()) {
    if (cacheName.startsWith(`${PREFIX}${name}@`)) deleted = (await storage.delete(cacheName)) || deleted;
  }
  return deleted;
}
