/**
 * `cxc build ORG/NAME[@REVISION]` as users run it: the real CLI in its own process, against a
 * local server speaking the Hub's protocol (HF_ENDPOINT), with huggingface_hub's cache layout
 * in a temporary HF_HUB_CACHE. The served repos are the golden checkpoint folders, read in place.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';

// For the in-process tests: a file system that refuses symlinks (as Windows without developer mode does).
const fsFaults = vi.hoisted(() => ({ refuseSymlinks: false }));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const symlinkSync: typeof fs.symlinkSync = (...args) => {
    if (fsFaults.refuseSymlinks) throw Object.assign(new Error('EPERM: operation not permitted, symlink'), { code: 'EPERM' });
    return fs.symlinkSync(...args);
  };
  return { ...fs, default: { ...fs, symlinkSync }, symlinkSync };
});
import { hubSettings, parseHubId, resolveModelArgument } from '../compiler/hub.js';
import { readWeightIndex } from '../compiler/checkpoint-files.js';
import { runCli, type CliResult } from './helpers/cli.js';
import { hubCacheDir } from '../compiler/hub-cache.js';
import { readSafetensors, writeSafetensors } from '../compiler/safetensors.js';
import { goldenPath } from './helpers/golden.js';
import { commitId, gitBlobSha1, sha256, startHubServer, type HubServer } from './helpers/hub-server.js';

const work = mkdtempSync(join(tmpdir(), 'cxc-hub-'));
let caseCount = 0;

const read = (...parts: string[]) => new Uint8Array(readFileSync(goldenPath(...parts)));
const microFiles = () => ({
  'config.json': read('models', 'micro', 'config.json'),
  'preprocessor_config.json': read('models', 'micro', 'preprocessor_config.json'),
  'model.safetensors': read('models', 'micro', 'model.safetensors'),
});
const v2Files = () => ({ 'config.json': read('models', 'v2-micro', 'config.json'), 'model.safetensors': read('models', 'v2-micro', 'model.safetensors') });
const MAIN = commitId('micro main');
const V2 = commitId('micro v2');
const GATED = commitId('gated');
const TOKEN = 'hf_cxc_test_token';

/** micro's model.safetensors split in two shards with their index, as save_pretrained writes a big model. */
function shardedMicro(): Record<string, Uint8Array> {
  const tensors = [...readSafetensors(read('models', 'micro', 'model.safetensors'), 'micro')];
  const half = tensors.length >> 1;
  const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const parts = [tensors.slice(0, half), tensors.slice(half)];
  const weightMap = Object.fromEntries(parts.flatMap((part, i) => part.map(([name]) => [name, names[i]])));
  return {
    'config.json': read('models', 'micro', 'config.json'),
    'model.safetensors.index.json': Buffer.from(JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap })),
    [names[0]]: writeSafetensors(parts[0].map(([name, t]) => [name, { shape: t.shape, data: t.data }])),
    [names[1]]: writeSafetensors(parts[1].map(([name, t]) => [name, { shape: t.shape, data: t.data }])),
  };
}

function oneCommit(label: string, files: Record<string, Uint8Array>) {
  return { commits: { [commitId(label)]: files }, refs: { main: commitId(label) } };
}

let hub: HubServer;
beforeAll(async () => {
  const micro = microFiles();
  hub = await startHubServer({
    'golden/micro': { commits: { [MAIN]: micro, [V2]: v2Files() }, refs: { main: MAIN, v2: V2 } },
    'golden/gated': { commits: { [GATED]: micro }, refs: { main: GATED }, gatedToken: TOKEN },
    'golden/old-micro': { commits: {}, refs: {}, movedTo: 'golden/micro' },
    'golden/bert': oneCommit('bert', { 'config.json': Buffer.from(JSON.stringify({ model_type: 'bert', hidden_size: 64 })), 'model.safetensors': micro['model.safetensors'] }),
    'golden/tf-only': oneCommit('tf', { 'config.json': micro['config.json'], 'tf_model.h5': Buffer.from('not read') }),
    'golden/no-config': oneCommit('no config', { 'model.safetensors': micro['model.safetensors'] }),
    'golden/sharded': oneCommit('sharded', shardedMicro()),
    'golden/pt-only': oneCommit('pt', { 'config.json': micro['config.json'], 'pytorch_model.bin': Buffer.from('a pytorch checkpoint stands here') }),
  });
});
afterAll(async () => {
  await hub?.close();
  rmSync(work, { recursive: true, force: true });
});

/** A fresh HF_HOME (so no real token or cache leaks in) with its hub cache. */
function freshCache(): { home: string; cache: string } {
  const home = join(work, `home-${++caseCount}`);
  mkdirSync(home, { recursive: true });
  return { home, cache: join(home, 'hub') };
}

interface Run extends CliResult {
  /** The requests the server saw during this run. */
  requests: HubServer['requests'];
}

/** Runs the CLI (without blocking this process, which serves the hub) with the hub settings in its environment. */
function cxc(env: Record<string, string | undefined>, ...args: string[]): Promise<Run> {
  return cxcIn(undefined, env, ...args);
}

async function cxcIn(cwd: string | undefined, env: Record<string, string | undefined>, ...args: string[]): Promise<Run> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(HF_|HUGGING_FACE_|HUGGINGFACE_)/.test(key)));
  const first = hub.requests.length;
  const result = await runCli(args, { cwd, env: { ...clean, HF_ENDPOINT: hub.endpoint, ...env }, timeoutMs: 120_000 });
  return { ...result, requests: hub.requests.slice(first) };
}

const hubEnv = (c: { home: string; cache: string }, extra: Record<string, string> = {}) => ({ HF_HOME: c.home, HF_HUB_CACHE: c.cache, ...extra });

function expectUserError(run: Run, message: RegExp) {
  expect(run.code, run.stderr).toBe(1);
  expect(run.stderr).toMatch(message);
  expect(run.stderr).not.toMatch(/\n\s+at |internal error/);
}

const weightGets = (run: Run) => run.requests.filter((r) => r.method === 'GET' && (r.server === 'cdn' || /\.(safetensors|bin)$/.test(r.path)));
const repoRoot = (cache: string, repo: string) => join(cache, `models--${repo.replace('/', '--')}`);

describe('hub ids on the command line', () => {
  const shared = freshCache();
  const out = join(work, 'out-micro');

  test('the first build downloads into huggingface_hub\'s cache layout; the package matches the goldens', async () => {
    const build = await cxc(hubEnv(shared), 'build', 'golden/micro', '-o', out);
    expect(build.code, build.stderr).toBe(0);
    expect(build.stdout).toMatch(/built micro-wasm \(ConvNextForImageClassification, wasm, golden\/micro at /);
    expect(weightGets(build).filter((r) => r.server === 'cdn')).toHaveLength(1);

    const root = repoRoot(shared.cache, 'golden/micro');
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(MAIN);
    const files = microFiles();
    const expectedBlobs = {
      'config.json': gitBlobSha1(files['config.json']),
      'preprocessor_config.json': gitBlobSha1(files['preprocessor_config.json']),
      'model.safetensors': sha256(files['model.safetensors']),
    };
    expect(readdirSync(join(root, 'blobs')).sort()).toEqual(Object.values(expectedBlobs).sort());
    for (const [file, blob] of Object.entries(expectedBlobs)) {
      const pointer = join(root, 'snapshots', MAIN, file);
      expect(lstatSync(pointer).isSymbolicLink(), file).toBe(true);
      expect(readlinkSync(pointer)).toBe(`../../blobs/${blob}`);
      expect(new Uint8Array(readFileSync(pointer))).toEqual(files[file as keyof typeof files]);
    }

    // `check` takes hub ids too: the cached snapshot against the golden outputs
    const check = await cxc(hubEnv(shared), 'check', 'golden/micro', '--golden', goldenPath('models', 'micro', 'golden.safetensors'), '--json');
    expect(check.code, check.stderr).toBe(0);
    expect(JSON.parse(check.stdout)).toMatchObject({ failed: 0 });
    expect(JSON.parse(check.stdout).passed).toBeGreaterThan(3);
    expect(weightGets(check)).toEqual([]);
  });

  test('a second build asks only for metadata; a commit id and HF_HUB_OFFLINE=1 make no request at all', async () => {
    const again = await cxc(hubEnv(shared), 'build', 'golden/micro', '-o', out);
    expect(again.code, again.stderr).toBe(0);
    expect(again.requests.length).toBeGreaterThan(0);
    expect(again.requests.every((r) => r.method === 'HEAD' && r.server === 'hub')).toBe(true);

    const pinned = await cxc(hubEnv(shared), 'build', `golden/micro@${MAIN}`, '-o', out);
    expect(pinned.code, pinned.stderr).toBe(0);
    expect(pinned.requests).toEqual([]);

    const offline = await cxc(hubEnv(shared, { HF_HUB_OFFLINE: '1' }), 'build', 'golden/micro', '-o', out);
    expect(offline.code, offline.stderr).toBe(0);
    expect(offline.requests).toEqual([]);

    const notCached = await cxc(hubEnv(shared, { HF_HUB_OFFLINE: '1' }), 'build', 'golden/micro@v2', '-o', join(work, 'never'));
    expectUserError(notCached, /HF_HUB_OFFLINE is set and golden\/micro@v2 is not in the cache .*revision "v2" was never downloaded/);
    expect(notCached.requests).toEqual([]);
  });

  test('@revision builds that revision and records its ref; a file it lacks is remembered in .no_exist', async () => {
    const build = await cxc(hubEnv(shared), 'build', 'golden/micro@v2', '-o', join(work, 'out-v2'));
    expect(build.code, build.stderr).toBe(0);
    expect(build.stdout).toMatch(/ConvNextV2ForImageClassification/);
    const root = repoRoot(shared.cache, 'golden/micro');
    expect(readFileSync(join(root, 'refs', 'v2'), 'utf8')).toBe(V2);
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe(MAIN);
    expect(existsSync(join(root, '.no_exist', V2, 'preprocessor_config.json'))).toBe(true);
    expect(readdirSync(join(root, 'snapshots')).sort()).toEqual([MAIN, V2].sort());
    // every request after the first named the commit, not the branch
    const resolved = build.requests.filter((r) => r.server === 'hub').map((r) => r.path);
    expect(resolved[0]).toMatch(/\/resolve\/v2\/config\.json$/);
    expect(resolved.slice(1).every((path) => path.includes(`/resolve/${V2}/`))).toBe(true);
  });

  test('an interrupted download keeps its .incomplete file and the next build resumes it with Range', async () => {
    const c = freshCache();
    const size = microFiles()['model.safetensors'].byteLength;
    const blob = join(repoRoot(c.cache, 'golden/micro'), 'blobs', sha256(microFiles()['model.safetensors']));
    hub.faults.dropLfsAfter = 100_000;
    const cut = await cxc(hubEnv(c, { HF_HUB_DOWNLOAD_TIMEOUT: '5' }), 'build', 'golden/micro', '-o', join(work, 'out-resume'));
    expectUserError(cut, /download of model\.safetensors of golden\/micro@[0-9a-f]{40} (was interrupted|ended) at \d+ of \d+ bytes/);
    expect(cut.stderr).toMatch(/hint: run the same command again: it resumes/);
    const partial = statSync(`${blob}.incomplete`).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(size);
    expect(existsSync(blob)).toBe(false);

    const resumed = await cxc(hubEnv(c), 'build', 'golden/micro', '-o', join(work, 'out-resume'));
    expect(resumed.code, resumed.stderr).toBe(0);
    const cdn = resumed.requests.filter((r) => r.server === 'cdn');
    expect(cdn).toMatchObject([{ method: 'GET', range: `bytes=${partial}-`, status: 206 }]);
    expect(sha256(readFileSync(blob))).toBe(sha256(microFiles()['model.safetensors']));
    expect(existsSync(`${blob}.incomplete`)).toBe(false);
  });

  test('two builds sharing a cache download a blob once: the second waits for the first; a dead process\'s lock is taken over', async () => {
    const c = freshCache();
    const blob = sha256(microFiles()['model.safetensors']);
    const locks = join(c.cache, '.locks', 'models--golden--micro');
    mkdirSync(locks, { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeFileSync(join(locks, `${blob}.cxc-lock`), `${dead}@${hostname()}`);
    const first = hub.requests.length;
    hub.faults.lfsPieceDelayMs = 400;
    let runs: Run[];
    try {
      runs = await Promise.all([1, 2].map((n) => cxc(hubEnv(c), 'build', 'golden/micro', '-o', join(work, `out-together-${n}`))));
    } finally {
      hub.faults.lfsPieceDelayMs = undefined;
    }
    for (const run of runs) expect(run.code, run.stderr).toBe(0);
    expect(hub.requests.slice(first).filter((r) => r.server === 'cdn')).toHaveLength(1);
    expect(runs.map((run) => run.stderr).join('')).toMatch(new RegExp(`cxc: waiting for \\d+@${hostname()}, which is downloading model\\.safetensors of golden/micro into the cache`));
    expect(readdirSync(locks)).toEqual([]);
    expect(sha256(readFileSync(join(repoRoot(c.cache, 'golden/micro'), 'blobs', blob)))).toBe(blob);
  });

  test('a corrupted LFS blob is refused (sha256 mismatch) and nothing enters the cache', async () => {
    const c = freshCache();
    hub.faults.corruptLfs = true;
    let run: Run;
    try {
      run = await cxc(hubEnv(c), 'build', 'golden/micro', '-o', join(work, 'out-corrupt'));
    } finally {
      hub.faults.corruptLfs = false;
    }
    expectUserError(run, /download of model\.safetensors of golden\/micro@[0-9a-f]{40} is corrupt: its sha256 is [0-9a-f]{64}, the hub says [0-9a-f]{64}; nothing was cached/);
    const root = repoRoot(c.cache, 'golden/micro');
    const blobs = readdirSync(join(root, 'blobs'));
    expect(blobs.some((name) => name.startsWith(sha256(microFiles()['model.safetensors'])))).toBe(false);
    expect(existsSync(join(root, 'snapshots', MAIN, 'model.safetensors'))).toBe(false);
    expect(existsSync(join(work, 'out-corrupt'))).toBe(false);
  });

  test('a gated repo: 401 and 403 say to set HF_TOKEN; with it, the token goes to the hub as Bearer and never to the LFS host', async () => {
    const c = freshCache();
    const anonymous = await cxc(hubEnv(c), 'build', 'golden/gated', '-o', join(work, 'out-gated'));
    expectUserError(anonymous, /golden\/gated is a gated model \(HTTP 401, no token was sent\)\nhint: accept its conditions at .*\/golden\/gated and set HF_TOKEN/);
    const wrong = await cxc(hubEnv(c, { HF_TOKEN: 'hf_wrong' }), 'build', 'golden/gated', '-o', join(work, 'out-gated'));
    expectUserError(wrong, /golden\/gated is a gated model \(HTTP 403, the token in HF_TOKEN was sent\)\nhint: .*HF_TOKEN/);

    const allowed = await cxc(hubEnv(c, { HF_TOKEN: TOKEN }), 'build', 'golden/gated', '-o', join(work, 'out-gated'));
    expect(allowed.code, allowed.stderr).toBe(0);
    const toHub = allowed.requests.filter((r) => r.server === 'hub');
    expect(toHub.length).toBeGreaterThanOrEqual(5);
    expect(toHub.every((r) => r.authorization === `Bearer ${TOKEN}`)).toBe(true);
    const toCdn = allowed.requests.filter((r) => r.server === 'cdn');
    expect(toCdn).toHaveLength(1);
    expect(toCdn[0].authorization).toBeUndefined();
  });

  test('sharded safetensors: the index and every shard are fetched, and the merged weights match the goldens', async () => {
    const c = freshCache();
    const check = await cxc(hubEnv(c), 'check', 'golden/sharded', '--golden', goldenPath('models', 'micro', 'golden.safetensors'), '--json');
    expect(check.code, check.stderr).toBe(0);
    expect(JSON.parse(check.stdout)).toMatchObject({ failed: 0 });
    expect(check.requests.filter((r) => r.server === 'cdn')).toHaveLength(2);
    const snapshot = join(repoRoot(c.cache, 'golden/sharded'), 'snapshots', commitId('sharded'));
    expect(readdirSync(snapshot).sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
  });

  test('404s name what is missing: the repo, the revision, config.json, the weights', async () => {
    const c = freshCache();
    const o = join(work, 'out-404');
    expectUserError(await cxc(hubEnv(c), 'build', 'golden/nope', '-o', o), /no model repo golden\/nope on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\), and no local folder of that name\nhint: .*private.*HF_TOKEN/);
    expectUserError(await cxc(hubEnv(c), 'build', 'golden/micro@nope', '-o', o), /golden\/micro has no revision "nope" on http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/);
    expectUserError(await cxc(hubEnv(c), 'build', 'golden/no-config', '-o', o), /golden\/no-config@main has no config\.json on http/);
    const tf = await cxc(hubEnv(c), 'build', 'golden/tf-only', '-o', o);
    expectUserError(tf, /golden\/tf-only@main has no weights cxc reads: none of model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin, pytorch_model\.bin\.index\.json/);
    expect(existsSync(o)).toBe(false);
  });

  test('a repo that is not a ConvNeXt is refused by its model_type before any weights are downloaded', async () => {
    const run = await cxc(hubEnv(freshCache()), 'build', 'golden/bert', '-o', join(work, 'out-bert'));
    expectUserError(run, /golden\/bert is not a ConvNeXt: its config\.json has model_type "bert"/);
    expect(run.requests.filter((r) => r.path.includes('model.safetensors'))).toEqual([]);
  });

  test('a repo with only pytorch_model.bin: it is downloaded into the snapshot for the folder loader', async () => {
    const c = freshCache();
    const run = await cxc(hubEnv(c), 'build', 'golden/pt-only', '-o', join(work, 'out-pt'));
    // whatever the loader says of this (fake) checkpoint, it names the file it read
    expect(run.stderr).toMatch(/pytorch_model\.bin/);
    const pointer = join(repoRoot(c.cache, 'golden/pt-only'), 'snapshots', commitId('pt'), 'pytorch_model.bin');
    expect(readFileSync(pointer, 'utf8')).toBe('a pytorch checkpoint stands here');
    expect(run.requests.filter((r) => r.server === 'hub').map((r) => `${r.method} ${r.path.replace(/^.*\/resolve\/[^/]+\//, '')} ${r.status}`)).toEqual([
      'HEAD config.json 200', 'GET config.json 200',
      'HEAD preprocessor_config.json 404',
      'HEAD model.safetensors 404', 'HEAD model.safetensors.index.json 404', 'HEAD pytorch_model.bin 302',
    ]);
  });

  test('a renamed repo: the hub\'s relative redirect is followed', async () => {
    const run = await cxc(hubEnv(freshCache()), 'build', 'golden/old-micro', '-o', join(work, 'out-renamed'));
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/built old-micro-wasm/);
    expect(run.requests.some((r) => r.path.startsWith('/golden/old-micro/') && r.status === 307)).toBe(true);
  });

  test('no network: the endpoint is named and HF_HUB_OFFLINE suggested; a cached snapshot still builds', async () => {
    const closed = await startHubServer({});
    const deadEndpoint = closed.endpoint;
    await closed.close();
    const empty = await cxc({ ...hubEnv(freshCache()), HF_ENDPOINT: deadEndpoint }, 'build', 'golden/micro', '-o', join(work, 'out-offline'));
    expectUserError(empty, new RegExp(`cannot reach the Hugging Face Hub at ${deadEndpoint.replace(/\./g, '\\.')} \\(ECONNREFUSED\\)\\nhint: .*HF_HUB_OFFLINE=1`));
    const cached = await cxc({ ...hubEnv(shared), HF_ENDPOINT: deadEndpoint }, 'build', 'golden/micro', '-o', join(work, 'out-offline'));
    expect(cached.code, cached.stderr).toBe(0);
    expect(cached.stderr).toMatch(/ECONNREFUSED.*using golden\/micro@main from the cache \(snapshot [0-9a-f]{40}\)/);
  });

  test('a cache that cannot be written is named, with what to set', async () => {
    const c = freshCache();
    writeFileSync(c.cache, 'a file where the cache folder should be');
    const run = await cxc(hubEnv(c), 'build', 'golden/micro', '-o', join(work, 'out-unwritable'));
    expectUserError(run, /cannot write the Hugging Face cache \((ENOTDIR|EEXIST): mkdir .*\)\nhint: set HF_HUB_CACHE/);
  });

  test('the download bar is drawn on a terminal only', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, ...hubEnv(freshCache()) };
    const piped: string[] = [];
    await resolveModelArgument('golden/micro', { env, stream: { isTTY: false, write: (text: string) => piped.push(text) } });
    expect(piped).toEqual([]);
    const terminal: string[] = [];
    const resolved = await resolveModelArgument('golden/micro', { env: { ...env, HF_HUB_CACHE: join(env.HF_HOME, 'other') }, stream: { isTTY: true, columns: 120, write: (text: string) => terminal.push(text) } });
    expect(resolved).toMatchObject({ hub: { repo: 'golden/micro', revision: 'main', commit: MAIN } });
    expect(resolved.path).toBe(join(env.HF_HOME, 'other', 'models--golden--micro', 'snapshots', MAIN));
    expect(terminal.join('')).toMatch(/downloading model\.safetensors .*100%  0\.3 \/ 0\.3 MiB/);
    expect(terminal.at(-1)).toBe('\r\x1b[2K');
  });

  test('where symlinks fail, the snapshot holds copies of the blobs', async () => {
    const c = freshCache();
    fsFaults.refuseSymlinks = true;
    let resolved;
    try {
      resolved = await resolveModelArgument('golden/micro', { env: { HF_ENDPOINT: hub.endpoint, ...hubEnv(c) }, stream: { write: () => true } });
    } finally {
      fsFaults.refuseSymlinks = false;
    }
    const files = microFiles();
    for (const file of Object.keys(files) as Array<keyof typeof files>) {
      const path = join(resolved.path, file);
      expect(lstatSync(path).isFile(), file).toBe(true);
      expect(new Uint8Array(readFileSync(path))).toEqual(files[file]);
    }
    expect(readdirSync(join(repoRoot(c.cache, 'golden/micro'), 'blobs'))).toHaveLength(3);
  });

  test('an existing folder is never taken for a hub id, and a missing one that is not an id says so', async () => {
    const here = join(work, 'cwd');
    mkdirSync(join(here, 'golden'), { recursive: true });
    symlinkSync(goldenPath('models', 'v2-micro'), join(here, 'golden', 'micro'));
    const local = await cxcIn(here, hubEnv(freshCache()), 'build', 'golden/micro', '-o', join(work, 'out-local'));
    expect(local.code, local.stderr).toBe(0);
    expect(local.stdout).toMatch(/built micro-wasm \(ConvNextV2ForImageClassification, wasm\) in /);
    expect(local.requests).toEqual([]);

    const missing = await cxc(hubEnv(freshCache()), 'build', 'no/such/folder', '-o', join(work, 'out-local'));
    expectUserError(missing, /no\/such\/folder: no such file or folder/);
    expect(missing.requests).toEqual([]);
  });
});

describe('hub settings and ids', () => {
  test('ids: ORG/NAME[@REVISION] as huggingface_hub validates them', () => {
    expect(parseHubId('facebook/convnext-tiny-224')).toEqual({ repo: 'facebook/convnext-tiny-224', revision: 'main' });
    expect(parseHubId('facebook/convnext-tiny-224@refs/pr/3')).toEqual({ repo: 'facebook/convnext-tiny-224', revision: 'refs/pr/3' });
    for (const notAnId of ['convnext', './a/b', '/abs/path', 'a/b/c', 'a--b/c', 'a/b..c', '-a/b', 'a/b@', 'a/b@x/../y', `a/${'x'.repeat(96)}`]) {
      expect(parseHubId(notAnId), notAnId).toBeUndefined();
    }
  });

  test('environment: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache; offline values; endpoint', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/c', HF_HOME: '/h' })).toBe('/c');
    expect(hubCacheDir({ HF_HOME: '/h' })).toBe('/h/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/huggingface/hub');
    expect(hubCacheDir({})).toMatch(/\/\.cache\/huggingface\/hub$/);
    for (const value of ['1', 'true', 'YES', 'on']) expect(hubSettings({ HF_HUB_OFFLINE: value, HF_HOME: work }).offline).toBe(true);
    for (const value of ['0', '', 'false']) expect(hubSettings({ HF_HUB_OFFLINE: value, HF_HOME: work }).offline).toBe(false);
    expect(hubSettings({ HF_HOME: work }).endpoint).toBe('https://huggingface.co');
    expect(hubSettings({ HF_ENDPOINT: 'https://mirror.example/', HF_HOME: work }).endpoint).toBe('https://mirror.example');
  });

  test('the token `huggingface-cli login` saved in HF_HOME/token is used when HF_TOKEN is not set', () => {
    const home = mkdtempSync(join(work, 'token-'));
    expect(hubSettings({ HF_HOME: home }).token).toBeUndefined();
    writeFileSync(join(home, 'token'), 'hf_saved\n');
    expect(hubSettings({ HF_HOME: home }).token).toBe('hf_saved');
    expect(hubSettings({ HF_HOME: home, HF_TOKEN: 'hf_env' }).token).toBe('hf_env');
    expect(hubSettings({ HF_HOME: home, HF_TOKEN_PATH: join(home, 'none') }).token).toBeUndefined();
  });

  test('a weight index may only name plain relative shard files', () => {
    const index = join(work, 'index.json');
    writeFileSync(index, JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' } }));
    expect(readWeightIndex(index).shards).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    for (const bad of ['../../etc/passwd', '/abs.safetensors', 'a/../../b', './a', '', 7]) {
      writeFileSync(index, JSON.stringify({ weight_map: { a: bad } }));
      expect(() => readWeightIndex(index), String(bad)).toThrow(/not a file name in its folder/);
    }
    for (const bad of [{}, { weight_map: [] }, { weight_map: {} }]) {
      writeFileSync(index, JSON.stringify(bad));
      expect(() => readWeightIndex(index)).toThrow(/weight_map|lists no tensors/);
    }
  });
});
