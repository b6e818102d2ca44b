/**
 * The Hugging Face Hub's file protocol, as huggingface_hub speaks it:
 *   HEAD {endpoint}/{repo}/resolve/{revision}/{file}, redirects not followed (relative ones are:
 *   renamed repos), gives the commit (X-Repo-Commit), the blob name (X-Linked-Etag, else ETag),
 *   the size (X-Linked-Size, else Content-Length) and where LFS files live (Location); then GET.
 * Downloads resume from a `.incomplete` file with Range and are verified against the etag
 * (sha256 for LFS files, git's blob sha1 for regular ones) before they are renamed into place.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CxcError } from './errors.js';

export interface HubSettings {
  /** e.g. https://huggingface.co, without a trailing slash. */
  endpoint: string;
  cacheDir: string;
  token?: string;
  offline: boolean;
  /** How long a HEAD may take (HF_HUB_ETAG_TIMEOUT, seconds in the environment). */
  headTimeoutMs: number;
  /** How long a download may go without receiving a byte (HF_HUB_DOWNLOAD_TIMEOUT). */
  downloadTimeoutMs: number;
}

/** What a repo, revision and file name: used in every message. */
export interface FileRef {
  repo: string;
  revision: string;
  file: string;
}

export interface FileMetadata {
  commit: string;
  /** The blob name: the etag without quotes or W/. */
  etag: string;
  size: number;
  /** Where to GET the bytes: the LFS location, or the resolve URL itself. */
  downloadUrl: string;
}

export type HeadResult = { found: true; metadata: FileMetadata } | { found: false; commit?: string };

/** The hub could not be reached at all (as opposed to answering with an error): the caller may fall back to the cache. */
export class HubUnreachableError extends CxcError {}

export function resolveUrl(settings: HubSettings, ref: FileRef): string {
  const file = ref.file.split('/').map(encodeURIComponent).join('/');
  return `${settings.endpoint}/${ref.repo}/resolve/${encodeURIComponent(ref.revision)}/${file}`;
}

export function normalizeEtag(raw: string): string {
  return raw.replace(/^W\//, '').replace(/^"|"$/g, '');
}

function baseHeaders(settings: HubSettings, url: string): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': `cxc; node/${process.versions.node}`, 'accept-encoding': 'identity' };
  // The token goes to the hub only: LFS locations are pre-signed URLs on other hosts.
  if (settings.token && new URL(url).origin === new URL(settings.endpoint).origin) headers.authorization = `Bearer ${settings.token}`;
  return headers;
}

/** HEAD of a file: its metadata, or found: false when the repo (at a known commit) has no such file. */
export async function headFile(settings: HubSettings, ref: FileRef): Promise<HeadResult> {
  let url = resolveUrl(settings, ref);
  for (let redirects = 0; ; redirects++) {
    const response = await request(settings, url, { method: 'HEAD', redirect: 'manual', headers: baseHeaders(settings, url), signal: AbortSignal.timeout(settings.headTimeoutMs) });
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location?.startsWith('/') && !location.startsWith('//')) {
      if (redirects >= 5) throw new CxcError(`too many redirects resolving ${describe(ref)} on ${settings.endpoint}`);
      url = new URL(location, url).href; // a renamed or moved repo: same host, new path
      continue;
    }
    if (response.status === 404 && response.headers.get('x-error-code') === 'EntryNotFound') {
      return { found: false, commit: response.headers.get('x-repo-commit') ?? undefined };
    }
    if (!response.ok && !(response.status >= 300 && response.status < 400)) throw hubError(settings, ref, response);
    return { found: true, metadata: metadataFrom(settings, ref, response, url) };
  }
}

function metadataFrom(settings: HubSettings, ref: FileRef, response: Response, url: string): FileMetadata {
  const headers = response.headers;
  const commit = headers.get('x-repo-commit');
  const etag = headers.get('x-linked-etag') ?? headers.get('etag');
  const size = Number(headers.get('x-linked-size') ?? headers.get('content-length'));
  if (!commit || !etag || !Number.isSafeInteger(size) || size < 0) {
    throw new CxcError(`${settings.endpoint} does not speak the Hugging Face Hub protocol: no ${!commit ? 'X-Repo-Commit' : !etag ? 'ETag' : 'file size'} in its answer for ${describe(ref)}`, {
      hint: 'check HF_ENDPOINT (it must name a Hub, e.g. https://huggingface.co, or a mirror of it)',
    });
  }
  const blob = normalizeEtag(etag);
  if (!/^[\w.-]+$/.test(blob)) throw new CxcError(`${settings.endpoint} gave ${describe(ref)} an etag that cannot name a file: ${JSON.stringify(etag)}`);
  const location = headers.get('location');
  // A regular file is fetched at the commit just named, so that its bytes match the etag even if the branch moves.
  return { commit, etag: blob, size, downloadUrl: location ? new URL(location, url).href : resolveUrl(settings, { ...ref, revision: commit }) };
}

export function describe(ref: FileRef): string {
  return `${ref.file} of ${ref.repo}@${ref.revision}`;
}

/** A fetch whose network failures become HubUnreachableError, naming the endpoint and suggesting offline mode. */
async function request(settings: HubSettings, url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (error) {
    throw unreachable(settings, url, error);
  }
}

function unreachable(settings: HubSettings, url: string, error: unknown): HubUnreachableError {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const why = ['TimeoutError', 'AbortError'].includes((error as Error).name) ? 'timed out' : cause?.code ?? cause?.message ?? (error as Error).message;
  const where = new URL(url).origin === new URL(settings.endpoint).origin ? `the Hugging Face Hub at ${settings.endpoint}` : `${new URL(url).origin} (where ${settings.endpoint} keeps large files)`;
  return new HubUnreachableError(`cannot reach ${where} (${why})`, {
    hint: `check the network or HF_ENDPOINT; to build from what is already in the cache (${settings.cacheDir}), set HF_HUB_OFFLINE=1`,
    cause: error,
  });
}

/** An HTTP error as the hub words it (X-Error-Code), else by status: what is missing or refused, and what to do. */
export function hubError(settings: HubSettings, ref: FileRef, response: Response): CxcError {
  const code = response.headers.get('x-error-code');
  const status = response.status;
  const page = `${settings.endpoint}/${ref.repo}`;
  const tokenState = settings.token ? 'the token in HF_TOKEN was sent' : 'no token was sent';
  if (code === 'GatedRepo') {
    return new CxcError(`${ref.repo} is a gated model (HTTP ${status}, ${tokenState})`, {
      hint: `accept its conditions at ${page} and set HF_TOKEN to a read token of that account (${settings.endpoint}/settings/tokens)`,
    });
  }
  if (code === 'RepoNotFound' || (status === 401 && !code)) {
    return new CxcError(`no model repo ${ref.repo} on ${settings.endpoint} (HTTP ${status}), and no local folder of that name`, {
      hint: `check the name (ORG/NAME[@REVISION]); if the repo is private, set HF_TOKEN to a token that can read it (${tokenState})`,
    });
  }
  if (code === 'RevisionNotFound') {
    return new CxcError(`${ref.repo} has no revision ${JSON.stringify(ref.revision)} on ${settings.endpoint} (HTTP ${status})`, {
      hint: `name a branch, tag or commit after @, e.g. ${ref.repo}@main`,
    });
  }
  if (status === 401 || status === 403) {
    return new CxcError(`${settings.endpoint} refused access to ${ref.repo} (HTTP ${status}: private or gated, ${tokenState})`, {
      hint: `set HF_TOKEN to a read token of an account with access (${settings.endpoint}/settings/tokens); for a gated model, accept its conditions at ${page}`,
    });
  }
  if (status === 404) {
    return new CxcError(`not found on ${settings.endpoint}: ${describe(ref)} (HTTP 404: the repo, the revision or the file)`, { hint: `check ${page}` });
  }
  return new CxcError(`${settings.endpoint} answered HTTP ${status} ${response.statusText} for ${describe(ref)}`, { hint: 'try again later' });
}

/** Verifies bytes against an etag: sha256 for LFS blobs (64 hex digits), git's blob sha1 for regular files (40); other etags are not content hashes. */
function hasherFor(etag: string, size: number): Hash | undefined {
  if (/^[0-9a-f]{64}$/.test(etag)) return createHash('sha256');
  if (/^[0-9a-f]{40}$/.test(etag)) return createHash('sha1').update(`blob ${size}\0`);
  return undefined;
}

export interface DownloadProgress {
  (loaded: number, total: number): void;
}

/**
 * Downloads a blob to `target`: into `target.incomplete` first (resumed with Range when one is
 * there), then size and hash checked, then renamed. A wrong hash deletes the partial file; an
 * interrupted download keeps it for the next run.
 */
export async function downloadBlob(settings: HubSettings, ref: FileRef, metadata: FileMetadata, target: string, onProgress: DownloadProgress): Promise<void> {
  const partial = `${target}.incomplete`;
  await mkdir(dirname(target), { recursive: true });
  let have = await fileSize(partial);
  if (have > metadata.size) {
    await rm(partial, { force: true });
    have = 0;
  }
  if (have < metadata.size) have = await receive(settings, ref, metadata, partial, have, onProgress);
  if (have !== metadata.size) {
    throw new CxcError(`the download of ${describe(ref)} ended at ${have} of ${metadata.size} bytes`, { hint: 'run the same command again: it resumes where this one stopped' });
  }
  // Hashed as written, read back from disk: what is renamed into the cache is exactly what was verified.
  const hasher = hasherFor(metadata.etag, metadata.size);
  const digest = hasher && (await hashFile(partial, hasher));
  if (digest !== undefined && digest !== metadata.etag) {
    await rm(partial, { force: true });
    throw new CxcError(`the download of ${describe(ref)} is corrupt: its ${metadata.etag.length === 64 ? 'sha256' : 'git sha1'} is ${digest}, the hub says ${metadata.etag}; nothing was cached`, {
      hint: 'run the same command again; if it fails the same way, something between you and the hub (a proxy, a mirror) alters the file',
    });
  }
  await rename(partial, target);
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function hashFile(path: string, hasher: Hash): Promise<string> {
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hasher.update(chunk as Buffer);
  return hasher.digest('hex');
}

/** GETs the rest of a file into `partial`, appending from `offset` when the server honours Range, else starting over; returns the size reached. */
async function receive(settings: HubSettings, ref: FileRef, metadata: FileMetadata, partial: string, offset: number, onProgress: DownloadProgress): Promise<number> {
  const url = metadata.downloadUrl;
  const headers = baseHeaders(settings, url);
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const stall = new AbortController();
  let timer = setTimeout(() => stall.abort(), settings.downloadTimeoutMs);
  try {
    const response = await request(settings, url, { headers, signal: stall.signal });
    if (response.status !== 200 && response.status !== 206) throw hubError(settings, ref, response);
    const resumed = response.status === 206 && contentRangeStart(response) === offset;
    const out = await open(partial, resumed ? 'a' : 'w'); // a 200 is the whole file: start over
    let size = resumed ? offset : 0;
    try {
      if (!response.body) throw new CxcError(`${settings.endpoint} sent no body for ${describe(ref)}`);
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        clearTimeout(timer);
        timer = setTimeout(() => stall.abort(), settings.downloadTimeoutMs);
        await out.write(chunk);
        size += chunk.byteLength;
        onProgress(size, metadata.size);
      }
    } catch (error) {
      // Ours, or the disk's (a full disk is not a network hiccup that a retry resumes)
      if (error instanceof CxcError || typeof (error as NodeJS.ErrnoException).syscall === 'string') throw error;
      throw new CxcError(`the download of ${describe(ref)} was interrupted at ${size} of ${metadata.size} bytes (${(error as Error).name === 'AbortError' ? `no data for ${settings.downloadTimeoutMs / 1000} s` : (error as Error).message})`, {
        hint: 'run the same command again: it resumes where this one stopped',
        cause: error,
      });
    } finally {
      await out.close();
    }
    return size;
  } finally {
    clearTimeout(timer);
  }
}

function contentRangeStart(response: Response): number | undefined {
  const match = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '');
  return match ? Number(match[1]) : undefined;
}
