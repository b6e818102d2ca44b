/**
 * `cxc serve OUT [OUT2 ...]`: the browser demo (examples/browser) and the built packages on
 * a small static server, on 127.0.0.1 by default.
 *
 * - Every response is cross-origin isolated (COOP same-origin + COEP require-corp), so the
 *   WASM target may use threads (SharedArrayBuffer).
 * - Packages are served under /models/<name>/ and listed in /models.json for the page.
 * - Only GET and HEAD; paths are resolved inside their root (symbolic links included) and
 *   anything outside it, hidden files too, is refused. On loopback, requests naming another
 *   host are refused, so a web page elsewhere cannot reach this server through DNS rebinding.
 *
 * node:http and node:fs only: a static server this small needs no library.
 */
import { createReadStream, existsSync, realpathSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CxcError } from './errors.js';
import { weightsFileBytes, type ModelManifest, type WeightsFileDtype } from '../runtime/types.js';

export const MIME_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.bin': 'application/octet-stream',
  '.safetensors': 'application/octet-stream',
  '.ts': 'text/plain; charset=utf-8',
  '.wat': 'text/plain; charset=utf-8',
  '.wgsl': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

/** Headers on every response: cross-origin isolation (WASM threads), no sniffing, always fresh (rebuilds show at once). */
const COMMON_HEADERS = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-cache',
};

/** A built package as the demo page sees it (GET /models.json). */
export interface ServedModel {
  name: string;
  /** Where its files are: /models/<slug>/ (index.js, weights.bin, ...). */
  path: string;
  target: 'wasm' | 'webgpu';
  architecture: string;
  modelType: ModelManifest['modelType'];
  head: ModelManifest['head'];
  hiddenSizes: number[];
  depths: number[];
  imageSize: number;
  numLabels: number;
  parameters: number;
  weightsBytes: number;
  weightsDtype: WeightsFileDtype;
  /** False when built from a bare config: the page cannot run it without a weights file. */
  bundledWeights: boolean;
}

export interface ServeOptions {
  /** Folders made by `cxc build`. */
  packages: string[];
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** The page (default: examples/browser of this cxc). */
  demoDir?: string;
}

export interface RunningServer {
  url: string;
  models: ServedModel[];
  close(): Promise<void>;
}

/** examples/browser of this cxc, from sources (compiler/) or from dist/compiler/. */
export function defaultDemoDir(): string {
  for (const relative of ['../examples/browser/', '../../examples/browser/']) {
    const dir = fileURLToPath(new URL(relative, import.meta.url));
    if (existsSync(join(dir, 'index.html'))) return dir;
  }
  throw new CxcError('the browser demo (examples/browser) is missing from this installation of cxc');
}

/** Reads a built package: its package.json and the manifest its index.js exports. */
async function readPackage(dir: string): Promise<{ root: string; manifest: ModelManifest }> {
  const root = resolve(dir);
  const hint = 'build one with `cxc build MODEL_DIR --target wasm|webgpu -o OUT`';
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new CxcError('no such folder', { file: dir, hint });
  if (!existsSync(join(root, 'index.js')) || !existsSync(join(root, 'package.json'))) {
    throw new CxcError('not a package built by cxc (no index.js and package.json)', { file: dir, hint });
  }
  let manifest: ModelManifest | undefined;
  try {
    manifest = ((await import(pathToFileURL(join(root, 'index.js')).href)) as { manifest?: ModelManifest }).manifest;
  } catch (error) {
    throw new CxcError(`not a package built by cxc (${(error as Error).message.split('\n')[0]})`, { file: dir, hint });
  }
  if (!manifest || (manifest.target !== 'wasm' && manifest.target !== 'webgpu')) throw new CxcError('not a package built by cxc (no manifest)', { file: dir, hint });
  return { root, manifest };
}

/** A URL path segment for a package name ("@acme/x" -> "acme__x"). */
function slug(name: string): string {
  return name.replace(/^@/, '').replace(/\//g, '__');
}

/** Resolves a URL path inside `root`, or undefined when it would leave it (or names a hidden file). */
export function resolveInside(root: string, urlPath: string): string | undefined {
  const segments = urlPath.split('/').filter((s) => s.length > 0);
  if (segments.some((s) => s === '..' || s.startsWith('.') || s.includes('\\') || s.includes('\0'))) return undefined;
  const base = resolve(root);
  const path = resolve(base, ...segments);
  if (path !== base && !path.startsWith(base + sep)) return undefined;
  if (!existsSync(path)) return path; // a 404, not a refusal
  // Symbolic links must not lead out either.
  const real = realpathSync(path);
  const realBase = realpathSync(base);
  if (real !== realBase && !real.startsWith(realBase + sep)) return undefined;
  return path;
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  if (options.packages.length === 0) throw new CxcError('no package to serve', { hint: 'cxc serve OUT [OUT2 ...], each made by `cxc build`' });
  const demoDir = resolve(options.demoDir ?? defaultDemoDir());
  const packages = await Promise.all(options.packages.map(readPackage));
  const roots = new Map<string, string>();
  const models: ServedModel[] = [];
  for (const [i, { root, manifest }] of packages.entries()) {
    const key = slug(manifest.name);
    if (roots.has(key)) throw new CxcError(`two packages are named ${manifest.name}`, { file: options.packages[i], hint: 'serve one of them, or rebuild one with --package NAME' });
    roots.set(key, root);
    models.push({
      name: manifest.name,
      path: `/models/${key}/`,
      target: manifest.target,
      architecture: manifest.architecture,
      modelType: manifest.modelType,
      head: manifest.head,
      hiddenSizes: manifest.hiddenSizes,
      depths: manifest.depths,
      imageSize: manifest.imageSize,
      numLabels: manifest.numLabels,
      parameters: manifest.parameters,
      weightsBytes: weightsFileBytes(manifest.weights),
      weightsDtype: manifest.weights.dtype,
      bundledWeights: manifest.weights.checksum !== null,
    });
  }
  const modelsJson = JSON.stringify({ models }, null, 2);
  const host = options.host ?? '127.0.0.1';
  const loopback = ['127.0.0.1', 'localhost', '::1'].includes(host);
  let port = 0;

  const server: Server = createServer((request, response) => {
    try {
      handle(request, response);
    } catch (error) {
      send(response, 500, `internal error: ${(error as Error).message}`);
    }
  });

  function handle(request: IncomingMessage, response: ServerResponse): void {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('Allow', 'GET, HEAD');
      return send(response, 405, 'only GET and HEAD');
    }
    // On a loopback address, only requests that name it: a page elsewhere cannot reach in through DNS rebinding.
    const allowedHosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]);
    if (loopback && !allowedHosts.has(request.headers.host ?? '')) return send(response, 403, 'unknown host');
    let path: string;
    try {
      path = decodeURIComponent(new URL(request.url ?? '/', 'http://localhost').pathname);
    } catch {
      return send(response, 400, 'malformed path');
    }
    if (path === '/models.json') return sendText(response, request, 200, modelsJson, MIME_TYPES['.json']);
    let file: string | undefined;
    const match = /^\/models\/([^/]+)(\/.*)?$/.exec(path);
    if (match) {
      const root = roots.get(match[1]);
      if (!root) return send(response, 404, 'no such model');
      file = resolveInside(root, match[2] ?? '/');
    } else {
      file = resolveInside(demoDir, path);
    }
    if (file === undefined) return send(response, 403, 'outside the served folders');
    if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!existsSync(file) || !statSync(file).isFile()) return send(response, 404, 'not found');
    const size = statSync(file).size;
    response.writeHead(200, {
      ...COMMON_HEADERS,
      'Content-Type': MIME_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream',
      'Content-Length': size,
    });
    if (request.method === 'HEAD') return void response.end();
    createReadStream(file)
      .on('error', () => response.destroy())
      .pipe(response);
  }

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EADDRINUSE') reject(new CxcError(`port ${options.port} on ${host} is in use`, { hint: 'choose another with --port, or --port 0 for any free one' }));
      else if (error.code === 'EADDRNOTAVAIL' || error.code === 'ENOTFOUND') reject(new CxcError(`cannot listen on ${host}: ${error.code}`, { hint: 'use --host 127.0.0.1' }));
      else reject(error);
    });
    server.listen(options.port ?? 8080, host, () => resolveListen());
  });
  port = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${port}/`,
    models,
    close: () => new Promise<void>((done) => {
      server.closeAllConnections();
      server.close(() => done());
    }),
  };
}

function send(response: ServerResponse, status: number, message: string): void {
  sendText(response, undefined, status, `${status} ${message}\n`, MIME_TYPES['.txt']);
}

function sendText(response: ServerResponse, request: IncomingMessage | undefined, status: number, body: string, type: string): void {
  const bytes = Buffer.from(body, 'utf8');
  response.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': type, 'Content-Length': bytes.byteLength });
  response.end(request?.method === 'HEAD' ? undefined : bytes);
}
