/**
 * PyTorch checkpoints (torch.save since 1.6): a zip holding `<archive>/data.pkl`, the pickled
 * state dict, and `<archive>/data/<key>`, one raw little-endian storage per key. The pickle is
 * read by the restricted unpickler (pickle.ts); each tensor is then read at its offset in the zip,
 * strided views gathered into contiguous order, and decoded exactly as safetensors tensors are,
 * so the same weights give bit-identical tensors from either format.
 */
import { endianness } from 'node:os';
import { CxcError } from './errors.js';
import { DTYPE_BYTES, decodeTensor, type StoredDtype, type TensorEntry } from './safetensors.js';
import { STORAGE_DTYPES, describeValue, unpickle, type PickleValue, type StorageRef, type TensorRef } from './pickle.js';
import { RandomAccessFile, withFile } from './random-access.js';
import { entryDataOffset, readZipDirectory, readZipEntry, type ZipEntry } from './zip.js';

/** data.pkl past this is refused unread: a state dict's pickle is about 200 bytes per tensor (V2-huge: 60 KB). */
const MAX_PICKLE_BYTES = 64 * 2 ** 20;
const ZIP_MAGIC = 0x04034b50;

const RESAVE_HINT =
  'load it in Python with torch < 2.6 (or torch.load(path, weights_only=False) where you trust the file) and re-save it: ' +
  'torch.save(state_dict, "pytorch_model.bin") with torch >= 1.6, or model.save_pretrained(dir, safe_serialization=True)';

/** Reads every tensor of a torch.save checkpoint, one read per tensor. */
export function readPytorchCheckpoint(path: string): Map<string, TensorEntry> {
  return withFile(path, 'PyTorch checkpoint', (file) => {
    refuseLegacyFormat(file);
    const archive = openArchive(file);
    const refs = stateDictTensors(unpickle(archive.pickle, path, (pid) => archive.storage(pid)), path);
    const tensors = new Map<string, TensorEntry>();
    for (const [name, ref] of refs) tensors.set(name, readTensor(file, archive.storageEntry(ref.storage), ref, name));
    return tensors;
  });
}

/** torch < 1.6 wrote a bare pickle stream (and torch < 0.4 a tar): recognised and refused with the way out. */
function refuseLegacyFormat(file: RandomAccessFile): void {
  const head = file.read(0, Math.min(file.size, 512), 'the start of the file');
  if (head.byteLength >= 4 && new DataView(head.buffer).getUint32(0, true) === ZIP_MAGIC) return;
  const isPickle = head[0] === 0x80 && head[1] >= 2 && head[1] <= 5;
  const isTar = head.byteLength >= 262 && new TextDecoder().decode(head.subarray(257, 262)) === 'ustar';
  if (isPickle || isTar) {
    throw new CxcError(`this is PyTorch's legacy ${isTar ? 'tar' : 'pickle'} format (torch.save before 1.6), which cxc does not read: it cannot be read without running its pickle`, {
      file: file.path,
      hint: RESAVE_HINT,
    });
  }
  throw new CxcError('not a PyTorch checkpoint (no zip signature at the start of the file)', { file: file.path });
}

interface Archive {
  pickle: Uint8Array;
  /** Resolves a persistent id ('storage', StorageType, key, location, numel) to a StorageRef. */
  storage: (pid: PickleValue) => StorageRef;
  storageEntry: (storage: StorageRef) => { entry: ZipEntry; dataStart: number };
}

function openArchive(file: RandomAccessFile): Archive {
  const entries = readZipDirectory(file);
  const pickles = [...entries.keys()].filter((name) => /^[^/]+\/data\.pkl$/.test(name));
  if (pickles.length !== 1) {
    throw new CxcError(`not a torch.save checkpoint: ${pickles.length === 0 ? 'no <archive>/data.pkl' : `${pickles.length} data.pkl entries`} in the zip`, { file: file.path });
  }
  const prefix = pickles[0].slice(0, -'data.pkl'.length);
  const byteorder = entries.get(`${prefix}byteorder`);
  if (byteorder) {
    const order = new TextDecoder().decode(readZipEntry(file, byteorder, 16));
    if (order !== 'little') throw new CxcError(`storages are stored ${order}-endian; cxc reads little-endian checkpoints`, { file: file.path, hint: RESAVE_HINT });
  }
  const storages = new Map<string, StorageRef>();
  return {
    pickle: readZipEntry(file, entries.get(pickles[0])!, MAX_PICKLE_BYTES),
    storage: (pid) => {
      const storage = storageFromPersistentId(pid, file.path);
      const known = storages.get(storage.key);
      if (known && (known.dtype !== storage.dtype || known.numel !== storage.numel)) {
        throw new CxcError(`storage ${storage.key} is named as ${known.dtype} x ${known.numel} and as ${storage.dtype} x ${storage.numel}`, { file: file.path });
      }
      if (!known) storages.set(storage.key, storage);
      return known ?? storage;
    },
    storageEntry: (storage) => {
      const entry = entries.get(`${prefix}data/${storage.key}`);
      if (!entry) throw new CxcError(`storage ${storage.key} has no entry ${prefix}data/${storage.key} in the zip (truncated?)`, { file: file.path });
      if (entry.method !== 0) throw new CxcError(`storage ${storage.key} is compressed (zip method ${entry.method}); torch.save stores storages uncompressed`, { file: file.path, hint: RESAVE_HINT });
      const bytes = storage.numel * DTYPE_BYTES[storage.dtype];
      if (entry.size !== bytes || entry.compressedSize !== bytes) {
        throw new CxcError(`storage ${storage.key} holds ${entry.size} bytes but ${storage.numel} ${storage.dtype} values need ${bytes}`, { file: file.path });
      }
      return { entry, dataStart: entryDataOffset(file, entry) };
    },
  };
}

function storageFromPersistentId(pid: PickleValue, source: string): StorageRef {
  const fail = (problem: string): never => {
    throw new CxcError(`refused the pickle (data.pkl): ${problem}`, { file: source });
  };
  if (pid === null || typeof pid !== 'object' || !('kind' in pid) || pid.kind !== 'tuple') return fail(`a persistent id that is ${describeValue(pid)}, not a tuple`);
  const [tag, type, key, location, numel] = pid.items;
  if (pid.items.length !== 5 || tag !== 'storage') return fail('a persistent id that is not (\'storage\', type, key, location, numel)');
  if (type === null || typeof type !== 'object' || !('kind' in type) || type.kind !== 'global' || !(type.name in STORAGE_DTYPES)) {
    return fail(`a storage of type ${describeValue(type ?? null)}`);
  }
  if (typeof key !== 'string' || !/^[A-Za-z0-9_]{1,64}$/.test(key)) return fail(`a storage key ${describeValue(key ?? null)}`);
  if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) return fail(`a storage size ${describeValue(numel ?? null)}`);
  return { kind: 'storage', dtype: STORAGE_DTYPES[type.name], key, location: typeof location === 'string' ? location : '', numel };
}

/** The state dict's tensors by name: the pickle must be a dict of name -> tensor. */
function stateDictTensors(root: PickleValue, source: string): Map<string, TensorRef> {
  if (root === null || typeof root !== 'object' || !('kind' in root) || root.kind !== 'dict') {
    throw new CxcError(`the checkpoint holds ${describeValue(root)}, not a state dict`, { file: source, hint: 'save the model with torch.save(model.state_dict(), path)' });
  }
  const tensors = new Map<string, TensorRef>();
  for (const [name, value] of root.entries) {
    if (typeof name !== 'string') throw new CxcError(`the state dict has a key that is not a name (${name})`, { file: source });
    if (value === null || typeof value !== 'object' || !('kind' in value) || value.kind !== 'tensor') {
      throw new CxcError(`state dict entry ${JSON.stringify(name)} is ${describeValue(value)}, not a tensor`, {
        file: source,
        hint: 'cxc reads a plain state dict: torch.save(model.state_dict(), path) (a training checkpoint nests it under a key)',
      });
    }
    tensors.set(name, value);
  }
  return tensors;
}

/** One tensor's values in row-major order, read from its storage at its offset and strides. */
function readTensor(file: RandomAccessFile, where: { entry: ZipEntry; dataStart: number }, ref: TensorRef, name: string): TensorEntry {
  const { dtype, numel: storageNumel } = ref.storage;
  const item = DTYPE_BYTES[dtype];
  const count = ref.shape.reduce((a, b) => a * b, 1);
  const shape = ref.shape;
  if (count === 0) return { dtype, shape, data: decodeTensor(dtype, new Uint8Array(0)) };
  const last = ref.offset + ref.shape.reduce((sum, size, i) => sum + (size - 1) * ref.stride[i], 0);
  if (last >= storageNumel) {
    throw new CxcError(`tensor ${JSON.stringify(name)} (offset ${ref.offset}, shape ${JSON.stringify(shape)}, strides ${JSON.stringify(ref.stride)}) reaches element ${last} of a ${storageNumel}-element storage`, { file: file.path });
  }
  const what = `tensor ${JSON.stringify(name)}`;
  if (isContiguous(shape, ref.stride)) {
    return { dtype, shape, data: decodeOwned(dtype, file.read(where.dataStart + ref.offset * item, count * item, what)) };
  }
  const span = file.read(where.dataStart + ref.offset * item, (last - ref.offset + 1) * item, what);
  return { dtype, shape, data: decodeOwned(dtype, gather(span, shape, ref.stride, item)) };
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

/** Copies a strided view (elements of `item` bytes, offsets relative to `span`) into row-major order. */
function gather(span: Uint8Array, shape: number[], stride: number[], item: number): Uint8Array {
  const count = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(count * item);
  const index = new Array<number>(shape.length).fill(0);
  let source = 0;
  for (let i = 0; i < count; i++) {
    out.set(span.subarray(source * item, source * item + item), i * item);
    // advance the multi-index, last dimension fastest
    for (let d = shape.length - 1; d >= 0; d--) {
      index[d]++;
      source += stride[d];
      if (index[d] < shape[d]) break;
      source -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
}

const LITTLE_ENDIAN = endianness() === 'LE';

/** Decodes bytes that nothing else holds: float32 is wrapped in place where the host is little-endian. */
export function decodeOwned(dtype: StoredDtype, raw: Uint8Array): Float32Array | Uint8Array {
  if (dtype === 'F32' && LITTLE_ENDIAN && raw.byteOffset % 4 === 0 && raw.byteLength === raw.buffer.byteLength) {
    return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  }
  return decodeTensor(dtype, raw);
}
