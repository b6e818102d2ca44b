/**
 * huggingface_hub's cache layout, so that files are shared with Python both ways:
 *
 *   <cache>/models--ORG--NAME/
 *     blobs/<etag>                      file contents, named by sha256 (LFS) or git sha1 (regular files)
 *     blobs/<etag>.incomplete           a download in progress, resumed with Range
 *     snapshots/<commit>/<file>         relative symlinks to ../../blobs/<etag> (copies where symlinks fail)
 *     refs/<revision>                   the commit a branch or tag pointed to when last resolved
 *     .no_exist/<commit>/<file>         empty: the file is known to be absent at that commit
 *   <cache>/.locks/models--ORG--NAME/<etag>.cxc-lock   a cxc process downloading that blob (pid@host)
 */
import { closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A 40-hex-digit git commit id: such a revision needs no lookup in refs/. */
export const COMMIT_HASH = /^[0-9a-f]{40}$/;

export interface RepoCache {
  /** models--ORG--NAME */
  root: string;
}

/** Where the hub cache lives, as huggingface_hub decides it: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub. */
export function hubCacheDir(env: NodeJS.ProcessEnv): string {
  const explicit = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
  if (explicit) return expandHome(explicit);
  return join(hfHome(env), 'hub');
}

/** HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (where `huggingface-cli login` keeps its token too). */
export function hfHome(env: NodeJS.ProcessEnv): string {
  if (env.HF_HOME) return expandHome(env.HF_HOME);
  return join(env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME) : join(homedir(), '.cache'), 'huggingface');
}

function expandHome(path: string): string {
  return path === '~' || path.startsWith('~/') ? join(homedir(), path.slice(1)) : path;
}

export function repoCache(cacheDir: string, repo: string): RepoCache {
  return { root: join(cacheDir, `models--${repo.split('/').join('--')}`) };
}

export function blobPath(cache: RepoCache, etag: string): string {
  return join(cache.root, 'blobs', etag);
}

export function snapshotDir(cache: RepoCache, commit: string): string {
  return join(cache.root, 'snapshots', commit);
}

export function snapshotFile(cache: RepoCache, commit: string, file: string): string {
  return join(snapshotDir(cache, commit), ...file.split('/'));
}

/** The commit a revision names: itself when it is a commit id, else what refs/<revision> recorded. */
export function cachedCommit(cache: RepoCache, revision: string): string | undefined {
  if (COMMIT_HASH.test(revision)) return revision;
  try {
    const commit = readFileSync(join(cache.root, 'refs', ...revision.split('/')), 'utf8').trim();
    return COMMIT_HASH.test(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/** Records that `revision` (a branch or tag; never a commit id, as huggingface_hub does) points at `commit`. */
export function writeRef(cache: RepoCache, revision: string, commit: string): void {
  if (revision === commit) return;
  const path = join(cache.root, 'refs', ...revision.split('/'));
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, commit);
}

/** Puts `file` into the snapshot of `commit`, pointing at its blob: a relative symlink, or a copy where the file system refuses symlinks. */
export function linkIntoSnapshot(cache: RepoCache, commit: string, file: string, etag: string): string {
  const pointer = snapshotFile(cache, commit, file);
  const blob = blobPath(cache, etag);
  mkdirSync(dirname(pointer), { recursive: true });
  if (isUsable(pointer)) return pointer;
  rmSync(pointer, { force: true });
  try {
    symlinkSync(relative(dirname(pointer), blob), pointer);
  } catch {
    copyFileSync(blob, pointer);
  }
  return pointer;
}

/** A snapshot entry that exists and (when a symlink) reaches its blob. */
export function isUsable(path: string): boolean {
  try {
    lstatSync(path);
  } catch {
    return false;
  }
  return existsSync(path);
}

/** Remembers that `file` does not exist at `commit` (huggingface_hub's .no_exist), so offline runs know not to look for it. */
export function markMissing(cache: RepoCache, commit: string, file: string): void {
  const path = join(cache.root, '.no_exist', commit, ...file.split('/'));
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '');
}

export function isMarkedMissing(cache: RepoCache, commit: string, file: string): boolean {
  return existsSync(join(cache.root, '.no_exist', commit, ...file.split('/')));
}

/** A lock left by a process that died (same host), or idle for this long (another host sharing the cache), is taken over. */
const FOREIGN_LOCK_IDLE_MS = 60_000;
const LOCK_POLL_MS = 200;

/**
 * Runs `download` while holding the lock of one blob, so that two cxc processes sharing the cache
 * (say, a wasm and a webgpu build started together) never write the same `.incomplete` file:
 * the second waits (told once through `onWait`) and then usually finds the blob in place.
 */
export async function withBlobLock<T>(cache: RepoCache, etag: string, onWait: (holder: string) => void, download: () => Promise<T>): Promise<T> {
  const lock = join(dirname(cache.root), '.locks', basename(cache.root), `${etag}.cxc-lock`);
  mkdirSync(dirname(lock), { recursive: true });
  let told = false;
  while (!tryLock(lock)) {
    const holder = readHolder(lock);
    if (isStale(holder, lock, `${blobPath(cache, etag)}.incomplete`)) {
      rmSync(lock, { force: true });
      continue;
    }
    if (!told) onWait(holder ?? 'another process');
    told = true;
    await sleep(LOCK_POLL_MS);
  }
  try {
    return await download();
  } finally {
    rmSync(lock, { force: true });
  }
}

function tryLock(lock: string): boolean {
  let fd: number;
  try {
    fd = openSync(lock, 'wx');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
  writeSync(fd, `${process.pid}@${hostname()}`);
  closeSync(fd);
  return true;
}

function readHolder(lock: string): string | undefined {
  try {
    return readFileSync(lock, 'utf8');
  } catch {
    return undefined; // released meanwhile
  }
}

function isStale(holder: string | undefined, lock: string, partial: string): boolean {
  const match = /^(\d+)@(.*)$/.exec(holder ?? '');
  if (match && match[2] === hostname()) return !isAlive(Number(match[1]));
  const lastActivity = Math.max(mtimeMs(lock), mtimeMs(partial));
  return Date.now() - lastActivity > FOREIGN_LOCK_IDLE_MS;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function mtimeMs(path: string): number {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}
