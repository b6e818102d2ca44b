/**
 * Sharded checkpoints: `model.safetensors.index.json` (as save_pretrained writes it when a
 * model is bigger than max_shard_size) maps every tensor name to the shard file that holds it.
 * The shards are read and merged into the one tensor map a single model.safetensors gives.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CxcError, show } from './errors.js';
import { readSafetensors, type TensorEntry } from './safetensors.js';

export interface WeightIndex {
  /** Tensor name -> shard file, relative to the index's folder. */
  weightMap: Map<string, string>;
  /** The shard files, each once, in the order the index first names them. */
  shards: string[];
}

/** Reads a weight index; every shard must be a plain relative file name (an index must not reach outside its folder). */
export function readWeightIndex(indexPath: string): WeightIndex {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (error) {
    throw new CxcError(`cannot read the weight index: ${(error as Error).message}`, { file: indexPath });
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw new CxcError('the weight index has no "weight_map" object', { file: indexPath });
  const weightMap = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || !isPlainRelativePath(shard)) throw new CxcError(`the weight index names a shard that is not a plain file name: ${show(shard)}`, { file: indexPath });
    weightMap.set(tensor, shard);
  }
  if (weightMap.size === 0) throw new CxcError('the weight index names no shards', { file: indexPath });
  return { weightMap, shards: [...new Set(weightMap.values())] };
}

function isPlainRelativePath(path: string): boolean {
  return path.split('/').every((part) => /^\w[\w.+-]*$/.test(part));
}

/** Every shard of a sharded safetensors checkpoint, merged; a tensor the index places in a shard must be there, and no name may repeat. */
export function readShardedSafetensors(indexPath: string): Map<string, TensorEntry> {
  const { weightMap, shards } = readWeightIndex(indexPath);
  const tensors = new Map<string, TensorEntry>();
  for (const shard of shards) {
    const path = join(dirname(indexPath), ...shard.split('/'));
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(readFileSync(path));
    } catch (error) {
      throw new CxcError(`cannot read a shard the weight index names (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: path });
    }
    for (const [name, tensor] of readSafetensors(bytes, path)) {
      if (tensors.has(name)) throw new CxcError(`tensor ${show(name)} is in more than one shard`, { file: path });
      tensors.set(name, tensor);
    }
  }
  const absent = [...weightMap].filter(([name]) => !tensors.has(name)).map(([name, shard]) => `${name} (in ${shard})`);
  if (absent.length > 0) throw new CxcError(`the weight index names tensors its shards do not hold: ${absent.slice(0, 5).join(', ')}${absent.length > 5 ? `, and ${absent.length - 5} more` : ''}`, { file: indexPath });
  return tensors;
}
