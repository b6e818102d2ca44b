#!/usr/bin/env node
/**
 * The largest published size end to end: streams a random ConvNeXt V2-huge checkpoint
 * (examples/configs/convnextv2-huge-224, 660M parameters, 2.64 GB of float32 safetensors, as on
 * the Hub) to a temporary folder without ever holding it in memory, builds it with the CLI
 * (`cxc build --target wasm`), runs it at 224x224 on one thread (`cxc run`), and prints wall time
 * and peak RSS of both (from /usr/bin/time -v). Temporary files are removed at the end.
 *
 *   npm run build && npm run bench:huge -- [--config examples/configs/NAME] [--keep]
 *
 * Needs ~5.5 GB of free disk (checkpoint + weights.bin) and ~6 GB of memory.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync, copyFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseModelConfig } from '../dist/compiler/config.js';
import { expectedTensors } from '../dist/compiler/checkpoint.js';
import { readSafetensors, writeSafetensors } from '../dist/compiler/safetensors.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'compiler', 'cli.js');
const args = process.argv.slice(2);
const configDir = resolve(args.includes('--config') ? args[args.indexOf('--config') + 1] : join(ROOT, 'examples', 'configs', 'convnextv2-huge-224'));
const keep = args.includes('--keep');

/** A small fast PRNG (xorshift32): the values only need to be finite and varied. */
function randomFiller(seed) {
  let state = seed >>> 0 || 1;
  return (target, center, spread) => {
    for (let i = 0; i < target.length; i++) {
      state ^= state << 13; state >>>= 0;
      state ^= state >>> 17;
      state ^= state << 5; state >>>= 0;
      target[i] = center + spread * (state / 2 ** 32 - 0.5);
    }
  };
}

/** Writes a safetensors file tensor by tensor through one reused 16 MiB buffer. */
function streamCheckpoint(path, tensors) {
  const header = {};
  let offset = 0;
  for (const { name, shape } of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 4;
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const prefix = Buffer.alloc(8 + Buffer.byteLength(text));
  prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(text)), 0);
  prefix.write(text, 8);
  const fd = openSync(path, 'w');
  const chunk = new Float32Array(4 * 2 ** 20);
  const fill = randomFiller(12345);
  try {
    writeSync(fd, prefix);
    for (const { name, shape } of tensors) {
      // LayerNorm scales near 1, everything else small: activations stay finite through 36 blocks.
      const isScale = /(layernorm|downsampling_layer\.0)\.weight$/.test(name);
      let left = shape.reduce((a, b) => a * b, 1);
      while (left > 0) {
        const part = chunk.subarray(0, Math.min(chunk.length, left));
        fill(part, isScale ? 1 : 0, isScale ? 0.1 : 0.04);
        writeSync(fd, part);
        left -= part.length;
      }
    }
  } finally {
    closeSync(fd);
  }
  return statSync(path).size;
}

/** Runs `node args` under /usr/bin/time -v: exit code, output, wall seconds, peak RSS in MiB. */
function timed(nodeArgs) {
  const result = spawnSync('/usr/bin/time', ['-v', process.execPath, ...nodeArgs], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
  const stderr = result.stderr ?? '';
  const rssKb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1] ?? NaN);
  const elapsed = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)/.exec(stderr)?.[1] ?? '';
  const seconds = elapsed.split(':').reduce((total, part) => total * 60 + Number(part), 0);
  return { code: result.status, stdout: result.stdout, stderr, seconds, rssMiB: rssKb / 1024 };
}

const work = mkdtempSync(join(tmpdir(), 'cxc-huge-'));
try {
  const config = JSON.parse(readFileSync(join(configDir, 'config.json'), 'utf8'));
  const spec = parseModelConfig(config, join(configDir, 'config.json'));
  const model = join(work, 'model');
  mkdirSync(model);
  copyFileSync(join(configDir, 'config.json'), join(model, 'config.json'));
  if (existsSync(join(configDir, 'preprocessor_config.json'))) copyFileSync(join(configDir, 'preprocessor_config.json'), join(model, 'preprocessor_config.json'));

  const started = performance.now();
  const checkpointBytes = streamCheckpoint(join(model, 'model.safetensors'), expectedTensors(spec));
  console.log(`checkpoint: ${spec.architecture} ${spec.hiddenSizes.join('/')} x ${spec.depths.join('/')}, ${(checkpointBytes / 1e9).toFixed(2)} GB written in ${((performance.now() - started) / 1000).toFixed(1)} s`);

  const out = join(work, 'out');
  const build = timed([CLI, 'build', model, '--target', 'wasm', '-o', out]);
  if (build.code !== 0) throw new Error(`cxc build failed:\n${build.stderr}`);
  const weightsBytes = statSync(join(out, 'weights.bin')).size;
  console.log(`cxc build --target wasm: ${build.seconds.toFixed(1)} s, peak RSS ${build.rssMiB.toFixed(0)} MiB (checkpoint ${(checkpointBytes / 2 ** 20).toFixed(0)} MiB, weights.bin ${(weightsBytes / 2 ** 20).toFixed(0)} MiB)`);

  const size = spec.imageSize;
  const pixels = new Float32Array(3 * size * size);
  randomFiller(7)(pixels, 0, 4);
  const input = join(work, 'input.safetensors');
  writeFileSync(input, writeSafetensors([['pixel_values', { shape: [1, 3, size, size], data: pixels }]]));
  const output = join(work, 'output.safetensors');
  const run = timed([CLI, 'run', out, '--input', input, '--output', output, '--json']);
  if (run.code !== 0) throw new Error(`cxc run failed:\n${run.stderr}`);
  const { ms } = JSON.parse(run.stdout.trim().split('\n').pop());
  const logits = readSafetensors(new Uint8Array(readFileSync(output)), output).get('logits');
  const finite = logits.data.every(Number.isFinite);
  console.log(`cxc run at ${size}x${size}, 1 thread: load + run ${run.seconds.toFixed(1)} s (run ${(ms / 1000).toFixed(1)} s), peak RSS ${run.rssMiB.toFixed(0)} MiB; logits ${JSON.stringify(logits.shape)} ${finite ? 'all finite' : 'NOT FINITE'}`);
  if (!finite) process.exitCode = 1;

  // An input whose activations cannot fit next to the weights in one 4 GiB wasm32 memory: refused
  // with a clear message before the memory grows.
  const big = 4096;
  const bigInput = join(work, 'input-big.safetensors');
  writeFileSync(bigInput, writeSafetensors([['pixel_values', { shape: [1, 3, big, big], data: new Float32Array(3 * big * big) }]]));
  const tooBig = timed([CLI, 'run', out, '--input', bigInput, '--output', join(work, 'unused.safetensors')]);
  const message = tooBig.stderr.split('\n').find((line) => line.startsWith('cxc:')) ?? tooBig.stderr.slice(0, 300);
  console.log(`cxc run at ${big}x${big}: exit ${tooBig.code}, ${tooBig.seconds.toFixed(1)} s, peak RSS ${tooBig.rssMiB.toFixed(0)} MiB: ${message}`);
  if (tooBig.code !== 1 || !/4 GiB/.test(message)) process.exitCode = 1;
} finally {
  if (keep) console.log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
