/**
 * Where a model folder's weights are and how they are read: model.safetensors, sharded
 * safetensors (model.safetensors.index.json), pytorch_model.bin (torch.save's zip) or its shards
 * (pytorch_model.bin.index.json). Every format is read tensor by tensor at its offsets (never a
 * whole file at once), so checkpoints past Node's 2 GiB read limit load, and peak memory stays
 * near the size of the tensors themselves.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { CxcError, show } from './errors.js';
import { MAX_HEADER_BYTES, parseSafetensorsHeader, type TensorEntry } from './safetensors.js';
import { decodeOwned, readPytorchCheckpoint } from './pytorch.js';
import { withFile } from './random-access.js';

/** The weight files cxc looks for in a model folder, in the order transformers prefers them. */
export const WEIGHT_FILES = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'] as const;

/** The folder's weights file (or shard index), or undefined when it has none. */
export function findWeightsFile(folder: string): string | undefined {
  const name = WEIGHT_FILES.find((file) => existsSync(join(folder, file)));
  return name && join(folder, name);
}

/** Reads a checkpoint: safetensors, a torch.save zip, or a shard index of either. */
export function readCheckpointFile(path: string): Map<string, TensorEntry> {
  if (path.endsWith('.index.json')) return readShardedCheckpoint(path);
  return looksLikeZip(path) ? readPytorchCheckpoint(path) : readSafetensorsFile(path);
}

function looksLikeZip(path: string): boolean {
  if (/\.(bin|pt|pth|ckpt)$/.test(path)) return true;
  return withFile(path, 'weights', (file) => file.size >= 2 && file.read(0, 2, 'the start of the file').every((b, i) => b === [0x50, 0x4b][i]));
}

/** Reads a safetensors file: the header once, then one read per tensor at its offset. */
export function readSafetensorsFile(path: string): Map<string, TensorEntry> {
  return withFile(path, 'weights', (file) => {
    const lengthBytes = file.read(0, Math.min(8, file.size), 'the header length');
    const headerLength = lengthBytes.byteLength === 8 ? new DataView(lengthBytes.buffer).getBigUint64(0, true) : 0n;
    // Read no more than exists and than the parser accepts: it reports a length past either.
    const readable = BigInt(Math.min(file.size - lengthBytes.byteLength, MAX_HEADER_BYTES + 1));
    const headerBytes = file.read(0, lengthBytes.byteLength + Number(headerLength < readable ? headerLength : readable), 'the header');
    const { entries, dataStart } = parseSafetensorsHeader(headerBytes, path, file.size);
    const tensors = new Map<string, TensorEntry>();
    for (const [name, entry] of entries) {
      const raw = file.read(dataStart + entry.begin, entry.end - entry.begin, `tensor ${JSON.stringify(name)}`);
      tensors.set(name, { dtype: entry.dtype, shape: entry.shape, data: decodeOwned(entry.dtype, raw) });
    }
    return tensors;
  });
}

/**
 * A shard index ({ "weight_map": { tensor: shard file } }): every shard it names is read, and
 * every tensor must be in the shard the map names, once.
 */
export function readShardedCheckpoint(indexPath: string): Map<string, TensorEntry> {
  const weightMap = readWeightMap(indexPath);
  const folder = dirname(indexPath);
  const tensors = new Map<string, TensorEntry>();
  for (const shard of new Set(weightMap.values())) {
    const shardPath = join(folder, shard);
    if (!existsSync(shardPath) || !statSync(shardPath).isFile()) {
      throw new CxcError(`the shard index names ${shard}, which is not in the folder`, { file: indexPath, hint: 'download every shard the index lists' });
    }
    for (const [name, tensor] of readCheckpointFile(shardPath)) {
      const expected = weightMap.get(name);
      if (expected !== shard) {
        throw new CxcError(`shard ${shard} holds tensor ${JSON.stringify(name)}, which the index ${expected ? `puts in ${expected}` : 'does not list'}`, { file: indexPath });
      }
      tensors.set(name, tensor);
    }
  }
  const missing = [...weightMap.keys()].filter((name) => !tensors.has(name));
  if (missing.length > 0) {
    throw new CxcError(`${missing.length} tensors the index lists are not in their shards: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`, { file: indexPath });
  }
  return tensors;
}

/** A shard index: tensor name -> shard file, and the shard files, each once, in the order the index first names them. */
export function readWeightIndex(indexPath: string): { weightMap: Map<string, string>; shards: string[] } {
  const weightMap = readWeightMap(indexPath);
  return { weightMap, shards: [...new Set(weightMap.values())] };
}

/** The index's weight_map, checked: shard names are plain file names in the index's folder. */
function readWeightMap(indexPath: string): Map<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (error) {
    throw new CxcError(`cannot read the shard index (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: indexPath });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new CxcError('the shard index has no "weight_map" object', { file: indexPath });
  }
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard !== basename(shard) || shard === '.' || shard === '..' || shard === '' || shard.includes('\\')) {
      throw new CxcError(`the shard index maps ${JSON.stringify(name)} to ${show(shard)}, not a file name in its folder`, { file: indexPath });
    }
    if (shard.endsWith('.index.json')) throw new CxcError(`the shard index maps ${JSON.stringify(name)} to another index, ${shard}`, { file: indexPath });
    map.set(name, shard);
  }
  if (map.size === 0) throw new CxcError('the shard index lists no tensors', { file: indexPath });
  return map;
}
