/**
 * Hub ids on the command line: `cxc build ORG/NAME[@REVISION]` fetches config.json,
 * preprocessor_config.json (when the repo has one) and the weights into huggingface_hub's
 * cache, and hands the snapshot folder to the ordinary folder loader. Weights, first found:
 * model.safetensors; model.safetensors.index.json + shards; pytorch_model.bin; its index + shards.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CxcError, show } from './errors.js';
import {
  blobPath, cachedCommit, COMMIT_HASH, hfHome, hubCacheDir, isMarkedMissing, isUsable, linkIntoSnapshot, markMissing,
  repoCache, snapshotDir, snapshotFile, withBlobLock, writeRef, type RepoCache,
} from './hub-cache.js';
import { downloadBlob, headFile, HubUnreachableError, type FileRef, type HubSettings } from './hub-http.js';
import { mebibytes, progressBar, type ProgressStream } from './progress.js';
import { readWeightIndex } from './checkpoint-files.js';

export type { HubSettings } from './hub-http.js';

export interface HubId {
  repo: string;
  /** A branch, tag or commit id; main when the argument names none. */
  revision: string;
}

/** Where a model argument was found: a local path as given, or a hub snapshot folder in the cache. */
export interface ResolvedModel {
  path: string;
  hub?: HubId & { commit: string };
}

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  /** Where the download bar and notes go (stderr); the bar is drawn only on a terminal. */
  stream?: ProgressStream;
}

const REPO_PART = /^[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?$/;

/** ORG/NAME[@REVISION] as huggingface_hub validates repo ids (no `--` or `..`, at most 96 characters), else undefined. */
export function parseHubId(argument: string): HubId | undefined {
  const at = argument.indexOf('@');
  const repo = at < 0 ? argument : argument.slice(0, at);
  const revision = at < 0 ? 'main' : argument.slice(at + 1);
  const parts = repo.split('/');
  if (parts.length !== 2 || !parts.every((part) => REPO_PART.test(part))) return undefined;
  if (repo.length > 96 || repo.includes('--') || repo.includes('..')) return undefined;
  if (!revision || /[\s\0]/.test(revision) || revision.split('/').some((part) => part === '' || part === '.' || part === '..')) return undefined;
  return { repo, revision };
}

/** The hub settings huggingface_hub reads from the environment. */
export function hubSettings(env: NodeJS.ProcessEnv = process.env): HubSettings {
  return {
    endpoint: (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, ''),
    cacheDir: hubCacheDir(env),
    token: hubToken(env),
    offline: /^(1|on|yes|true)$/i.test(env.HF_HUB_OFFLINE ?? ''),
    headTimeoutMs: seconds(env.HF_HUB_ETAG_TIMEOUT, 10) * 1000,
    downloadTimeoutMs: seconds(env.HF_HUB_DOWNLOAD_TIMEOUT, 10) * 1000,
  };
}

/** HF_TOKEN, else the token `huggingface-cli login` saved (HF_TOKEN_PATH, else HF_HOME/token). */
function hubToken(env: NodeJS.ProcessEnv): string | undefined {
  const fromEnv = (env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN)?.trim();
  if (fromEnv) return fromEnv;
  try {
    return readFileSync(env.HF_TOKEN_PATH || join(hfHome(env), 'token'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function seconds(value: string | undefined, fallback: number): number {
  const n = Number(value);
  return value && Number.isFinite(n) && n > 0 ? n : fallback;
}

/**
 * A model argument as the CLI takes it: an existing path is used as is; otherwise ORG/NAME[@REVISION]
 * is fetched into the hub cache (or found there, offline) and its snapshot folder returned.
 * Anything else is returned unchanged for the folder loader to report.
 */
export async function resolveModelArgument(argument: string, options: ResolveOptions = {}): Promise<ResolvedModel> {
  const id = existsSync(argument) ? undefined : parseHubId(argument);
  if (!id) return { path: argument };
  const settings = hubSettings(options.env);
  const stream = options.stream ?? process.stderr;
  const snapshot = await fetchSnapshot(id, settings, stream);
  checkModelType(join(snapshot.path, 'config.json'), id);
  return { path: snapshot.path, hub: { ...id, commit: snapshot.commit } };
}

interface Snapshot {
  path: string;
  commit: string;
}

async function fetchSnapshot(id: HubId, settings: HubSettings, stream: ProgressStream): Promise<Snapshot> {
  const cache = repoCache(settings.cacheDir, id.repo);
  if (settings.offline) {
    const cached = findCachedSnapshot(cache, id);
    if ('missing' in cached) {
      throw new CxcError(`HF_HUB_OFFLINE is set and ${id.repo}@${id.revision} is not in the cache (${settings.cacheDir}): ${cached.missing}`, {
        hint: 'run once without HF_HUB_OFFLINE to download it, or give cxc a local model folder',
      });
    }
    return cached;
  }
  try {
    return await downloadSnapshot({ id, settings, cache, stream });
  } catch (error) {
    if (isFileSystemError(error)) throw cacheWriteError(error, settings);
    if (!(error instanceof HubUnreachableError)) throw error;
    const cached = findCachedSnapshot(cache, id);
    if ('missing' in cached) throw error;
    stream.write(`cxc: ${error.message}; using ${id.repo}@${id.revision} from the cache (snapshot ${cached.commit})\n`);
    return cached;
  }
}

function isFileSystemError(error: unknown): error is NodeJS.ErrnoException {
  return error instanceof Error && !(error instanceof CxcError) && typeof (error as NodeJS.ErrnoException).syscall === 'string' && typeof (error as NodeJS.ErrnoException).code === 'string';
}

function cacheWriteError(error: NodeJS.ErrnoException, settings: HubSettings): CxcError {
  const full = error.code === 'ENOSPC' || error.code === 'EDQUOT';
  return new CxcError(`cannot write the Hugging Face cache (${error.code}: ${error.syscall}${error.path ? ` ${error.path}` : ''})`, {
    hint: full ? `free some space, or set HF_HUB_CACHE to a folder on a disk with room (now ${settings.cacheDir})` : `set HF_HUB_CACHE (now ${settings.cacheDir}) or HF_HOME to a folder you can write`,
    cause: error,
  });
}

/** One snapshot download: every file is asked for at the commit the first answer named, so a branch moving meanwhile cannot mix commits. */
interface Session {
  id: HubId;
  settings: HubSettings;
  cache: RepoCache;
  stream: ProgressStream;
  commit?: string;
}

async function downloadSnapshot(session: Session): Promise<Snapshot> {
  await requireFile(session, 'config.json', 'a transformers model repo has one (save_pretrained writes it)');
  checkModelType(snapshotFile(session.cache, session.commit!, 'config.json'), session.id);
  await fetchFile(session, 'preprocessor_config.json');
  await fetchWeights(session);
  return { path: snapshotDir(session.cache, session.commit!), commit: session.commit! };
}

/** The weight files cxc reads, in the order transformers prefers them. */
const WEIGHTS = [
  { file: 'model.safetensors', sharded: false },
  { file: 'model.safetensors.index.json', sharded: true },
  { file: 'pytorch_model.bin', sharded: false },
  { file: 'pytorch_model.bin.index.json', sharded: true },
] as const;

async function fetchWeights(session: Session): Promise<void> {
  for (const candidate of WEIGHTS) {
    const path = await fetchFile(session, candidate.file);
    if (!path) continue;
    if (candidate.sharded) {
      for (const shard of readWeightIndex(path).shards) await requireFile(session, shard, `${candidate.file} names it`);
    }
    return;
  }
  throw new CxcError(`${session.id.repo}@${session.id.revision} has no weights cxc reads: none of ${WEIGHTS.map((w) => w.file).join(', ')}`, {
    hint: 'cxc reads the PyTorch weights transformers saves (safetensors or pytorch_model.bin), not TensorFlow or Flax ones',
  });
}

async function requireFile(session: Session, file: string, why: string): Promise<string> {
  const path = await fetchFile(session, file);
  if (path) return path;
  throw new CxcError(`${session.id.repo}@${session.id.revision} has no ${file} on ${session.settings.endpoint} (HTTP 404)`, {
    hint: `${why}; check ${session.settings.endpoint}/${session.id.repo}/tree/${session.id.revision}`,
  });
}

/** One file into the snapshot: its path there, or undefined when the repo has no such file. Cached blobs are not downloaded again. */
async function fetchFile(session: Session, file: string): Promise<string | undefined> {
  const { id, settings, cache } = session;
  const revision = session.commit ?? id.revision;
  if (COMMIT_HASH.test(revision)) {
    // A commit's files never change: what the cache holds for it needs no request.
    if (isUsable(snapshotFile(cache, revision, file))) return adopt(session, revision, snapshotFile(cache, revision, file));
    if (isMarkedMissing(cache, revision, file)) return adopt(session, revision, undefined);
  }
  const ref: FileRef = { repo: id.repo, revision, file };
  const head = await headFile(settings, ref);
  if (!head.found) {
    if (head.commit && COMMIT_HASH.test(head.commit)) {
      markMissing(cache, head.commit, file);
      adopt(session, head.commit, undefined);
    }
    return undefined;
  }
  const { metadata } = head;
  adopt(session, metadata.commit, undefined);
  const blob = blobPath(cache, metadata.etag);
  if (!existsSync(blob)) {
    const waiting = (holder: string) => session.stream.write(`cxc: waiting for ${holder}, which is downloading ${file} of ${id.repo} into the cache\n`);
    await withBlobLock(cache, metadata.etag, waiting, async () => {
      if (existsSync(blob)) return; // the process we waited for finished it
      const bar = progressBar(`downloading ${file}`, session.stream);
      try {
        await downloadBlob(settings, ref, metadata, blob, (loaded, total) => bar.update(loaded / total, `${mebibytes(loaded)} / ${mebibytes(total)} MiB`));
      } finally {
        bar.done();
      }
    });
  }
  return linkIntoSnapshot(cache, session.commit!, file, metadata.etag);
}

/** Takes the first commit the hub names as the session's, and records the revision's ref to it. */
function adopt<T>(session: Session, commit: string, value: T): T {
  if (session.commit === undefined) {
    if (!COMMIT_HASH.test(commit)) throw new CxcError(`${session.settings.endpoint} named ${show(commit)} as the commit of ${session.id.repo}@${session.id.revision}, which is not a commit id`);
    session.commit = commit;
    writeRef(session.cache, session.id.revision, commit);
  }
  return value;
}

/** A complete snapshot in the cache for this revision (config.json and weights), or what it lacks. */
function findCachedSnapshot(cache: RepoCache, id: HubId): Snapshot | { missing: string } {
  const commit = cachedCommit(cache, id.revision);
  if (!commit) return { missing: `revision ${JSON.stringify(id.revision)} was never downloaded` };
  const has = (file: string) => isUsable(snapshotFile(cache, commit, file));
  if (!has('config.json')) return { missing: `config.json of snapshot ${commit}` };
  for (const candidate of WEIGHTS) {
    if (!has(candidate.file)) continue;
    if (!candidate.sharded) return { path: snapshotDir(cache, commit), commit };
    const absent = readWeightIndex(snapshotFile(cache, commit, candidate.file)).shards.filter((shard) => !has(shard));
    if (absent.length === 0) return { path: snapshotDir(cache, commit), commit };
    return { missing: `${absent.join(', ')} of snapshot ${commit}` };
  }
  return { missing: `the weights of snapshot ${commit} (${WEIGHTS.map((w) => w.file).join(', ')})` };
}

const CONVNEXT_TYPES = ['convnext', 'convnextv2'];

/** Refuses a repo that is not a ConvNeXt by its config's model_type, before any weights are downloaded. */
function checkModelType(configPath: string, id: HubId): void {
  let modelType: unknown;
  try {
    modelType = (JSON.parse(readFileSync(configPath, 'utf8')) as { model_type?: unknown })?.model_type;
  } catch {
    return; // unreadable or not JSON: the folder loader reports it with the file's path
  }
  if (typeof modelType === 'string' && !CONVNEXT_TYPES.includes(modelType)) {
    throw new CxcError(`${id.repo} is not a ConvNeXt: its config.json has model_type ${JSON.stringify(modelType)}`, {
      hint: 'cxc compiles ConvNeXt V1 and V2 checkpoints (model_type "convnext" or "convnextv2"), e.g. facebook/convnext-tiny-224',
    });
  }
}
