/**
 * A stand-in for the Hugging Face Hub on 127.0.0.1, speaking the protocol huggingface_hub
 * and cxc use: HEAD/GET {endpoint}/{org}/{name}/resolve/{revision}/{file} with X-Repo-Commit,
 * ETag / X-Linked-Etag / X-Linked-Size, X-Error-Code on errors, LFS files (*.safetensors, *.bin)
 * redirected with 302 to a second server (the "CDN", another origin) that honours Range.
 * Every request is logged so that tests can count what was downloaded.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HubRepo {
  /** Files by commit id. */
  commits: Record<string, Record<string, Uint8Array>>;
  /** Branches and tags: name -> commit id. */
  refs: Record<string, string>;
  /** A gated repo: this Bearer token is required (401 without one, 403 with another). */
  gatedToken?: string;
  /** A renamed repo: every resolve is redirected (307, relative) to this repo id. */
  movedTo?: string;
}

export interface LoggedRequest {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  range?: string;
  authorization?: string;
  status: number;
}

export interface HubFaults {
  /** Serve LFS blobs with one byte flipped (the etag stays the true sha256). */
  corruptLfs?: boolean;
  /** Cut the connection of the next LFS download after this many bytes (then reset). */
  dropLfsAfter?: number;
  /** Send LFS blobs in 8 pieces this many milliseconds apart (a slow link). */
  lfsPieceDelayMs?: number;
}

export interface HubServer {
  endpoint: string;
  cdnOrigin: string;
  requests: LoggedRequest[];
  faults: HubFaults;
  close(): Promise<void>;
}

const isLfs = (file: string) => /\.(safetensors|bin)$/.test(file);
export const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
export const gitBlobSha1 = (bytes: Uint8Array) => createHash('sha1').update(`blob ${bytes.byteLength}\0`).update(bytes).digest('hex');
/** A made-up commit id for a label. */
export const commitId = (label: string) => createHash('sha1').update(label).digest('hex');

export async function startHubServer(repos: Record<string, HubRepo>): Promise<HubServer> {
  const requests: LoggedRequest[] = [];
  const faults: HubFaults = {};
  const blobs = new Map<string, Uint8Array>();
  for (const repo of Object.values(repos)) {
    for (const files of Object.values(repo.commits)) for (const bytes of Object.values(files)) blobs.set(sha256(bytes), bytes);
  }
  const cdn = await listen((req, res) => serveCdn(req, res, blobs, faults, log('cdn', req, res)));
  const cdnOrigin = origin(cdn);
  const hub = await listen((req, res) => serveHub(req, res, repos, cdnOrigin, log('hub', req, res)));
  function log(server: 'hub' | 'cdn', req: IncomingMessage, res: ServerResponse) {
    const entry: LoggedRequest = { server, method: req.method ?? '', path: req.url ?? '', range: req.headers.range, authorization: req.headers.authorization, status: 0 };
    requests.push(entry);
    res.on('close', () => (entry.status = res.statusCode));
    return entry;
  }
  return {
    endpoint: origin(hub),
    cdnOrigin,
    requests,
    faults,
    close: async () => {
      await Promise.all([hub, cdn].map((s) => new Promise((resolve) => { s.closeAllConnections(); s.close(resolve); })));
    },
  };
}

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Server> {
  const server = createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function origin(server: Server): string {
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function fail(res: ServerResponse, status: number, code: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { 'x-error-code': code, 'x-error-message': code, 'content-type': 'text/plain', ...extra });
  res.end(code);
}

function serveHub(req: IncomingMessage, res: ServerResponse, repos: Record<string, HubRepo>, cdnOrigin: string, entry: LoggedRequest): void {
  const url = new URL(req.url ?? '/', 'http://hub');
  const [org, name, verb, revisionPart, ...fileParts] = url.pathname.slice(1).split('/');
  if (verb !== 'resolve' || !revisionPart || fileParts.length === 0) return fail(res, 404, 'NotFound');
  const repoId = `${org}/${name}`;
  const repo = repos[repoId];
  if (!repo) return fail(res, 404, 'RepoNotFound');
  if (repo.movedTo) {
    res.writeHead(307, { location: `/${repo.movedTo}/resolve/${revisionPart}/${fileParts.join('/')}` });
    return void res.end();
  }
  if (repo.gatedToken && entry.authorization !== `Bearer ${repo.gatedToken}`) return fail(res, entry.authorization ? 403 : 401, 'GatedRepo');
  const revision = decodeURIComponent(revisionPart);
  const commit = repo.commits[revision] ? revision : repo.refs[revision];
  if (!commit) return fail(res, 404, 'RevisionNotFound');
  const file = fileParts.map(decodeURIComponent).join('/');
  const bytes = repo.commits[commit][file];
  if (!bytes) return fail(res, 404, 'EntryNotFound', { 'x-repo-commit': commit });
  if (isLfs(file)) {
    const blob = sha256(bytes);
    res.writeHead(302, {
      location: `${cdnOrigin}/lfs/${blob}?signature=made-up`,
      'x-repo-commit': commit,
      'x-linked-etag': `"${blob}"`,
      'x-linked-size': String(bytes.byteLength),
      etag: `"${gitBlobSha1(Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${blob}\n`))}"`,
      'content-length': '0',
    });
    return void res.end();
  }
  res.writeHead(200, { 'x-repo-commit': commit, etag: `"${gitBlobSha1(bytes)}"`, 'content-length': String(bytes.byteLength), 'content-type': 'application/octet-stream' });
  res.end(req.method === 'HEAD' ? undefined : bytes);
}

function serveCdn(req: IncomingMessage, res: ServerResponse, blobs: Map<string, Uint8Array>, faults: HubFaults, entry: LoggedRequest): void {
  const match = /^\/lfs\/([0-9a-f]{64})(\?|$)/.exec(req.url ?? '');
  const original = match ? blobs.get(match[1]) : undefined;
  if (!original) return fail(res, 404, 'NoSuchKey');
  let bytes = original;
  if (faults.corruptLfs) {
    bytes = Uint8Array.from(original);
    bytes[bytes.length >> 1] ^= 0xff;
  }
  const range = /^bytes=(\d+)-$/.exec(entry.range ?? '');
  const start = range ? Number(range[1]) : 0;
  if (start >= bytes.byteLength) return fail(res, 416, 'InvalidRange', { 'content-range': `bytes */${bytes.byteLength}` });
  const body = bytes.subarray(start);
  const headers: Record<string, string> = { 'content-length': String(body.byteLength), 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' };
  if (range) headers['content-range'] = `bytes ${start}-${bytes.byteLength - 1}/${bytes.byteLength}`;
  res.writeHead(range ? 206 : 200, headers);
  if (req.method === 'HEAD') return void res.end();
  const drop = faults.dropLfsAfter;
  if (drop !== undefined && drop < body.byteLength) {
    faults.dropLfsAfter = undefined;
    res.write(body.subarray(0, drop), () => setTimeout(() => res.destroy(), 50));
    return;
  }
  if (faults.lfsPieceDelayMs) return void sendSlowly(res, body, faults.lfsPieceDelayMs);
  res.end(body);
}

async function sendSlowly(res: ServerResponse, body: Uint8Array, delayMs: number): Promise<void> {
  const piece = Math.ceil(body.byteLength / 8);
  for (let start = 0; start < body.byteLength; start += piece) {
    if (res.destroyed) return;
    res.write(body.subarray(start, start + piece));
    await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  res.end();
}
