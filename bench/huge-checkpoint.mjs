#!/usr/bin/env node
/**
 * The largest published size end to end: streams a random ConvNeXt V2-huge checkpoint
 * (examples/configs/convnextv2-huge-224, 660M parameters, 2.64 GB of float32 safetensors, as on
 * the Hub; or with --format pytorch a torch.save zip, pytorch_model.bin) to a temporary folder without ever holding it in memory, builds it with the CLI
 * (`cxc build --target wasm`), runs it at 224x224 on one thread (`cxc run`), and prints wall time
 * and peak RSS of both (from /usr/bin/time -v). Temporary files are removed at the end.
 *
 *   npm run build && npm run bench:huge -- [--config examples/configs/NAME] [--format safetensors|pytorch] [--keep]
 *
 * Needs ~5.5 GB of free disk (checkpoint + weights.bin) and ~6 GB of memory.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync, copyFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { crc32 } from 'node:zlib';
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
/** safetensors (as the Hub's V2-huge) or pytorch (a torch.save zip, as older fine-tuned repos). */
const format = args.includes('--format') ? args[args.indexOf('--format') + 1] : 'safetensors';
if (format !== 'safetensors' && format !== 'pytorch') throw new Error(`--format safetensors|pytorch, not ${format}`);

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

/** Writes one tensor's random values through a reused 16 MiB buffer; `onChunk` sees every chunk written. */
function writeValues(fd, name, shape, fill, chunk, onChunk = () => {}) {
  // LayerNorm scales near 1, everything else small: activations stay finite through 36 blocks.
  const isScale = /(layernorm|downsampling_layer\.0)\.weight$/.test(name);
  let left = shape.reduce((a, b) => a * b, 1);
  while (left > 0) {
    const part = chunk.subarray(0, Math.min(chunk.length, left));
    fill(part, isScale ? 1 : 0, isScale ? 0.1 : 0.04);
    const bytes = new Uint8Array(part.buffer, 0, part.byteLength);
    writeSync(fd, bytes);
    onChunk(bytes);
    left -= part.length;
  }
}

/** A safetensors file, written tensor by tensor. */
function streamSafetensors(path, tensors) {
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
    for (const { name, shape } of tensors) writeValues(fd, name, shape, fill, chunk);
  } finally {
    closeSync(fd);
  }
  return statSync(path).size;
}

/** The data.pkl torch.save writes for a float32 state dict (pickle protocol 2), storage i holding tensor i. */
function statePickle(tensors) {
  const parts = [];
  const text = (value) => {
    const bytes = Buffer.from(value, 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32LE(bytes.length);
    parts.push(Buffer.from([0x58]), length, bytes); // BINUNICODE
  };
  const int = (value) => {
    const bytes = Buffer.alloc(5);
    bytes[0] = 0x4a; // BININT
    bytes.writeInt32LE(value, 1);
    parts.push(bytes);
  };
  const raw = (value) => parts.push(Buffer.from(value, 'latin1'));
  raw('\x80\x02ccollections\nOrderedDict\n)R(');
  tensors.forEach(({ name, shape }, key) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    text(name);
    raw('ctorch._utils\n_rebuild_tensor_v2\n((');
    text('storage');
    raw('ctorch\nFloatStorage\n');
    text(String(key));
    text('cpu');
    int(numel);
    raw('tQ'); // the persistent id tuple, then BINPERSID
    int(0);
    raw('(');
    shape.forEach(int);
    raw('t(');
    strides.forEach(int);
    raw('t\x89ccollections\nOrderedDict\n)RtR'); // requires_grad False, empty hooks; REDUCE
  });
  raw('u.');
  return Buffer.concat(parts);
}

/** A pytorch_model.bin as torch.save writes it: a stored zip, entries 64-byte aligned, storages streamed. */
function streamTorchZip(path, tensors) {
  const fd = openSync(path, 'w');
  const central = [];
  let offset = 0;
  const writeEntry = (name, writeData) => {
    const nameBytes = Buffer.from(`archive/${name}`);
    // Pad with an extra field so the data starts 64-byte aligned, as torch does.
    const padding = (64 - ((offset + 30 + nameBytes.length + 4) % 64)) % 64;
    const header = Buffer.alloc(30 + nameBytes.length + 4 + padding);
    header.writeUInt32LE(0x04034b50, 0);
    header.writeUInt16LE(20, 4);
    header.writeUInt16LE(nameBytes.length, 26);
    header.writeUInt16LE(4 + padding, 28);
    nameBytes.copy(header, 30);
    header.writeUInt16LE(0x4246, 30 + nameBytes.length); // torch's "FB" padding field
    header.writeUInt16LE(padding, 32 + nameBytes.length);
    const headerAt = offset;
    writeSync(fd, header);
    let size = 0;
    let crc = 0;
    writeData((bytes) => {
      crc = crc32(bytes, crc);
      size += bytes.byteLength;
    });
    // Now that they are known: CRC and sizes into the local header.
    const fields = Buffer.alloc(12);
    fields.writeUInt32LE(crc >>> 0, 0);
    fields.writeUInt32LE(size, 4);
    fields.writeUInt32LE(size, 8);
    writeSync(fd, fields, 0, 12, headerAt + 14);
    offset = headerAt + header.length + size;
    central.push({ nameBytes, crc, size, headerAt });
  };
  const chunk = new Float32Array(4 * 2 ** 20);
  const fill = randomFiller(12345);
  try {
    const pickle = statePickle(tensors);
    writeEntry('data.pkl', (seen) => {
      writeSync(fd, pickle);
      seen(pickle);
    });
    tensors.forEach(({ name, shape }, key) => writeEntry(`data/${key}`, (seen) => writeValues(fd, name, shape, fill, chunk, seen)));
    const version = Buffer.from('3\n');
    writeEntry('version', (seen) => {
      writeSync(fd, version);
      seen(version);
    });
    const directoryAt = offset;
    for (const { nameBytes, crc, size, headerAt } of central) {
      const entry = Buffer.alloc(46 + nameBytes.length);
      entry.writeUInt32LE(0x02014b50, 0);
      entry.writeUInt16LE(20, 4);
      entry.writeUInt16LE(20, 6);
      entry.writeUInt32LE(crc >>> 0, 16);
      entry.writeUInt32LE(size, 20);
      entry.writeUInt32LE(size, 24);
      entry.writeUInt16LE(nameBytes.length, 28);
      entry.writeUInt32LE(headerAt, 42);
      nameBytes.copy(entry, 46);
      writeSync(fd, entry);
      offset += entry.length;
    }
    const end = Buffer.alloc(22);
    end.writeUInt32LE(0x06054b50, 0);
    end.writeUInt16LE(central.length, 8);
    end.writeUInt16LE(central.length, 10);
    end.writeUInt32LE(offset - directoryAt, 12);
    end.writeUInt32LE(directoryAt, 16);
    writeSync(fd, end);
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
  const checkpointBytes = format === 'pytorch'
    ? streamTorchZip(join(model, 'pytorch_model.bin'), expectedTensors(spec))
    : streamSafetensors(join(model, 'model.safetensors'), expectedTensors(spec));
  console.log(`checkpoint (${format === 'pytorch' ? 'pytorch_model.bin' : 'model.safetensors'}): ${spec.architecture} ${spec.hiddenSizes.join('/')} x ${spec.depths.join('/')}, ${(checkpointBytes / 1e9).toFixed(2)} GB written in ${((performance.now() - started) / 1000).toFixed(1)} s`);

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
