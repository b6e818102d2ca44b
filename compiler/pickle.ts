/**
 * A restricted unpickler for exactly what torch.save writes for a state dict (pickle protocol 2,
 * opcodes up to protocol 5 for frames and memoize): dicts, lists, tuples, strings, numbers,
 * OrderedDict, tensors rebuilt by torch._utils._rebuild_tensor_v2 / _rebuild_parameter over
 * storages named by persistent ids. Every other global is refused by name, so no code runs and
 * nothing is looked up by a name from the file: globals are matched against a fixed list and
 * dict keys live in Maps (a "__proto__" key is just a key). Memory and nesting are bounded.
 */
import { CxcError } from './errors.js';
import type { StoredDtype } from './safetensors.js';

/** The storage classes torch.save names in persistent ids, by the dtype their bytes hold. */
export const STORAGE_DTYPES: Record<string, StoredDtype> = {
  'torch.FloatStorage': 'F32',
  'torch.HalfStorage': 'F16',
  'torch.BFloat16Storage': 'BF16',
  'torch.DoubleStorage': 'F64',
  'torch.LongStorage': 'I64',
  'torch.IntStorage': 'I32',
  'torch.ShortStorage': 'I16',
  'torch.CharStorage': 'I8',
  'torch.ByteStorage': 'U8',
  'torch.BoolStorage': 'BOOL',
};

const REBUILD_TENSOR = 'torch._utils._rebuild_tensor_v2';
const REBUILD_PARAMETER = 'torch._utils._rebuild_parameter';
const REBUILD_PARAMETER_WITH_STATE = 'torch._utils._rebuild_parameter_with_state';
const ORDERED_DICT = 'collections.OrderedDict';
const ALLOWED_GLOBALS = new Set([ORDERED_DICT, REBUILD_TENSOR, REBUILD_PARAMETER, REBUILD_PARAMETER_WITH_STATE, ...Object.keys(STORAGE_DTYPES)]);

export interface StorageRef { kind: 'storage'; dtype: StoredDtype; key: string; location: string; numel: number }
export interface TensorRef { kind: 'tensor'; storage: StorageRef; offset: number; shape: number[]; stride: number[] }
export interface PickleGlobal { kind: 'global'; name: string }
export interface PickleDict { kind: 'dict'; entries: Map<string | number, PickleValue>; depth: number }
export interface PickleList { kind: 'list'; items: PickleValue[]; depth: number }
export interface PickleTuple { kind: 'tuple'; items: PickleValue[]; depth: number }
export type PickleValue = null | boolean | number | bigint | string | Uint8Array | PickleDict | PickleList | PickleTuple | PickleGlobal | StorageRef | TensorRef;

export interface PickleLimits {
  /** Containers nested deeper than this are refused (so nothing that walks a value can overflow). */
  maxDepth: number;
  /** Values on the stack at once. */
  maxStack: number;
  /** Memo entries (indices themselves may be any 32-bit number: the memo is a Map). */
  maxMemo: number;
  /** Open MARKs at once. */
  maxMarks: number;
  /** Values created in all (a state dict makes about 15 per tensor): bounds memory whatever the opcodes. */
  maxValues: number;
}

export const DEFAULT_PICKLE_LIMITS: PickleLimits = { maxDepth: 64, maxStack: 1_000_000, maxMemo: 1_000_000, maxMarks: 64, maxValues: 2_000_000 };

type Container = PickleDict | PickleList | PickleTuple;
const MARK = Symbol('mark');
type StackItem = PickleValue | typeof MARK;

const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT', 0x4a: 'BININT', 0x4b: 'BININT1',
  0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID', 0x51: 'BINPERSID', 0x52: 'REDUCE', 0x53: 'STRING', 0x54: 'BINSTRING',
  0x55: 'SHORT_BINSTRING', 0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND', 0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT', 0x7d: 'EMPTY_DICT',
  0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET', 0x69: 'INST', 0x6a: 'LONG_BINGET', 0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ',
  0x70: 'PUT', 0x71: 'BINPUT', 0x72: 'LONG_BINPUT', 0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2', 0x87: 'TUPLE3', 0x88: 'NEWTRUE',
  0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES', 0x43: 'SHORT_BINBYTES', 0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8',
  0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET', 0x90: 'ADDITEMS', 0x91: 'FROZENSET', 0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE',
  0x95: 'FRAME', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};

/** A short description of a value for error messages. */
export function describeValue(value: PickleValue): string {
  if (value === null) return 'None';
  if (value instanceof Uint8Array) return `bytes (${value.byteLength})`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value)}`;
  if (typeof value !== 'object') return `${typeof value} ${String(value)}`;
  if (value.kind === 'global') return `the global ${value.name}`;
  return value.kind;
}

/** Unpickles `bytes` (a torch.save data.pkl), resolving persistent ids with `persistentLoad`. */
export function unpickle(bytes: Uint8Array, source: string, persistentLoad: (pid: PickleValue) => PickleValue, limits: PickleLimits = DEFAULT_PICKLE_LIMITS): PickleValue {
  return new Unpickler(bytes, source, persistentLoad, limits).run();
}

class Unpickler {
  private at = 0;
  private stack: StackItem[] = [];
  private marks: number[] = [];
  private memo = new Map<number, PickleValue>();
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array, private readonly source: string, private readonly persistentLoad: (pid: PickleValue) => PickleValue, private readonly limits: PickleLimits) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(problem: string): never {
    throw new CxcError(`refused the pickle (data.pkl) at byte ${this.at}: ${problem}`, {
      file: this.source,
      hint: 'cxc reads only what torch.save writes for a state dict; re-save it with torch.save(model.state_dict(), path) or as safetensors',
    });
  }

  run(): PickleValue {
    while (true) {
      if (this.at >= this.bytes.byteLength) this.fail('ends without a STOP opcode (truncated)');
      const opcode = this.bytes[this.at++];
      if (opcode === 0x2e /* STOP */) {
        if (this.stack.length !== 1 || this.marks.length !== 0) this.fail(`STOP with ${this.stack.length} values on the stack`);
        return this.pop();
      }
      this.step(opcode);
      if (this.stack.length > this.limits.maxStack) this.fail(`more than ${this.limits.maxStack} values on the stack`);
    }
  }

  private step(opcode: number): void {
    switch (opcode) {
      case 0x80: this.u8(); return; // PROTO: any version whose opcodes are below is fine
      case 0x95: this.take(8); return; // FRAME: a hint for buffered readers
      case 0x28: this.mark(); return;
      case 0x7d: this.push({ kind: 'dict', entries: new Map(), depth: 1 }); return;
      case 0x5d: this.push({ kind: 'list', items: [], depth: 1 }); return;
      case 0x29: this.push({ kind: 'tuple', items: [], depth: 1 }); return;
      case 0x74: this.push(this.container('tuple', this.popMark())); return;
      case 0x85: case 0x86: case 0x87: {
        const items = this.popMany(opcode - 0x84);
        this.push(this.container('tuple', items));
        return;
      }
      case 0x4e: this.push(null); return;
      case 0x88: this.push(true); return;
      case 0x89: this.push(false); return;
      case 0x4b: this.push(this.u8()); return;
      case 0x4d: this.push(this.u16()); return;
      case 0x4a: this.push(this.i32()); return;
      case 0x8a: this.push(this.long1()); return;
      case 0x47: this.push(this.view.getFloat64(this.advance(8), false)); return;
      case 0x58: this.push(this.text(this.u32())); return;
      case 0x8c: this.push(this.text(this.u8())); return;
      case 0x8d: this.push(this.text(this.u64())); return;
      case 0x55: this.push(latin1(this.take(this.u8()))); return;
      case 0x54: this.push(latin1(this.take(this.i32()))); return;
      case 0x43: this.push(this.take(this.u8()).slice()); return;
      case 0x42: this.push(this.take(this.u32()).slice()); return;
      case 0x71: this.put(this.u8()); return;
      case 0x72: this.put(this.u32()); return;
      case 0x94: this.put(this.memo.size); return;
      case 0x68: this.get(this.u8()); return;
      case 0x6a: this.get(this.u32()); return;
      case 0x30: this.pop(); return;
      case 0x31: this.popMark(); return;
      case 0x63: this.push(this.global(`${this.line()}.${this.line()}`)); return;
      case 0x93: {
        const [module, name] = this.popMany(2);
        if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL with names that are not strings');
        this.push(this.global(`${module}.${name}`));
        return;
      }
      case 0x51: this.push(this.persistentLoad(this.pop())); return;
      case 0x52: {
        const args = this.pop();
        this.push(this.reduce(this.pop(), args));
        return;
      }
      case 0x62: this.build(); return;
      case 0x73: {
        const [key, value] = this.popMany(2);
        this.setItems(this.peek(), [key, value]);
        return;
      }
      case 0x75: {
        const items = this.popMark();
        this.setItems(this.peek(), items);
        return;
      }
      case 0x61: {
        const item = this.pop();
        this.append(this.peek(), [item]);
        return;
      }
      case 0x65: {
        const items = this.popMark();
        this.append(this.peek(), items);
        return;
      }
      default: {
        const name = OPCODE_NAMES[opcode];
        this.fail(name ? `opcode ${name} is not one torch.save writes for a state dict` : `unknown opcode 0x${opcode.toString(16).padStart(2, '0')}`);
      }
    }
  }

  // --- reading the byte stream -------------------------------------------------------------

  private advance(count: number): number {
    if (count < 0 || this.at + count > this.bytes.byteLength) this.fail(`needs ${count} more bytes but ${this.bytes.byteLength - this.at} remain (truncated)`);
    const start = this.at;
    this.at += count;
    return start;
  }
  private take(count: number): Uint8Array {
    const start = this.advance(count);
    return this.bytes.subarray(start, start + count);
  }
  private u8(): number { return this.bytes[this.advance(1)]; }
  private u16(): number { return this.view.getUint16(this.advance(2), true); }
  private u32(): number { return this.view.getUint32(this.advance(4), true); }
  private i32(): number { return this.view.getInt32(this.advance(4), true); }
  private u64(): number {
    const value = this.view.getBigUint64(this.advance(8), true);
    if (value > BigInt(this.bytes.byteLength)) this.fail(`a length of ${value} bytes, more than the whole pickle`);
    return Number(value);
  }
  private long1(): number | bigint {
    const bytes = this.take(this.u8());
    if (bytes.byteLength > 8) this.fail(`an integer of ${bytes.byteLength} bytes`);
    let value = 0n;
    for (let i = bytes.byteLength - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i]);
    if (bytes.byteLength > 0 && bytes[bytes.byteLength - 1] & 0x80) value -= 1n << BigInt(8 * bytes.byteLength);
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  private text(length: number): string {
    const bytes = this.take(length);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      return this.fail('a string that is not UTF-8');
    }
  }
  /** A newline-terminated ASCII line (GLOBAL's module and name), at most 256 characters. */
  private line(): string {
    const end = this.bytes.subarray(this.at, this.at + 257).indexOf(0x0a);
    if (end < 0) this.fail('a GLOBAL name without its newline (truncated, or longer than 256 characters)');
    return latin1(this.take(end + 1).subarray(0, end));
  }

  // --- the stack ----------------------------------------------------------------------------

  private created = 0;
  private push(value: PickleValue): void {
    if (++this.created > this.limits.maxValues) this.fail(`more than ${this.limits.maxValues} values (a state dict of ${Math.floor(this.limits.maxValues / 15)} tensors needs fewer)`);
    this.stack.push(value);
  }
  private mark(): void {
    if (this.marks.length >= this.limits.maxMarks) this.fail(`more than ${this.limits.maxMarks} open MARKs (nested too deeply)`);
    this.marks.push(this.stack.length);
  }
  private pop(): PickleValue {
    const floor = this.marks.length ? this.marks[this.marks.length - 1] : 0;
    if (this.stack.length <= floor) this.fail('pops from an empty stack');
    return this.stack.pop() as PickleValue;
  }
  private peek(): PickleValue {
    const floor = this.marks.length ? this.marks[this.marks.length - 1] : 0;
    if (this.stack.length <= floor) this.fail('reads from an empty stack');
    return this.stack[this.stack.length - 1] as PickleValue;
  }
  private popMany(count: number): PickleValue[] {
    const floor = this.marks.length ? this.marks[this.marks.length - 1] : 0;
    if (this.stack.length - count < floor) this.fail(`needs ${count} values on the stack`);
    return this.stack.splice(this.stack.length - count, count) as PickleValue[];
  }
  private popMark(): PickleValue[] {
    const start = this.marks.pop();
    if (start === undefined) this.fail('no MARK to pop to');
    return this.stack.splice(start) as PickleValue[];
  }
  private put(index: number): void {
    if (!this.memo.has(index) && this.memo.size >= this.limits.maxMemo) this.fail(`more than ${this.limits.maxMemo} memo entries`);
    this.memo.set(index, this.peek());
  }
  private get(index: number): void {
    if (!this.memo.has(index)) this.fail(`memo index ${index} was never stored`);
    this.stack.push(this.memo.get(index)!); // a reference to an existing value: nothing new is made
  }

  // --- containers ---------------------------------------------------------------------------

  private depthOf(items: Iterable<PickleValue>): number {
    let depth = 0;
    for (const item of items) if (item !== null && typeof item === 'object' && 'depth' in item) depth = Math.max(depth, item.depth);
    if (depth + 1 > this.limits.maxDepth) this.fail(`containers nested more than ${this.limits.maxDepth} deep`);
    return depth + 1;
  }
  private container(kind: 'tuple', items: PickleValue[]): PickleTuple {
    return { kind, items, depth: this.depthOf(items) };
  }
  private grow(target: Container, added: PickleValue[]): void {
    target.depth = Math.max(target.depth, this.depthOf(added));
  }
  private setItems(target: PickleValue, items: PickleValue[]): void {
    if (target === null || typeof target !== 'object' || !('kind' in target) || target.kind !== 'dict') this.fail(`SETITEM(S) on ${describeValue(target)}, not a dict`);
    if (items.length % 2 !== 0) this.fail('SETITEMS with an odd number of values');
    for (let i = 0; i < items.length; i += 2) {
      const key = items[i];
      if (typeof key !== 'string' && typeof key !== 'number') this.fail(`a dict key that is ${describeValue(key)}, not a string or an integer`);
      target.entries.set(key, items[i + 1]);
    }
    this.grow(target, items);
  }
  private append(target: PickleValue, items: PickleValue[]): void {
    if (target === null || typeof target !== 'object' || !('kind' in target) || target.kind !== 'list') this.fail(`APPEND(S) on ${describeValue(target)}, not a list`);
    if (target.items.length + items.length > this.limits.maxStack) this.fail(`a list of more than ${this.limits.maxStack} items`);
    target.items.push(...items);
    this.grow(target, items);
  }

  // --- globals and calls --------------------------------------------------------------------

  private global(name: string): PickleGlobal {
    if (!ALLOWED_GLOBALS.has(name)) this.fail(`refused global ${name}: a state dict names only ${[...ALLOWED_GLOBALS].filter((g) => !g.endsWith('Storage')).join(', ')} and torch's storage types`);
    return { kind: 'global', name };
  }

  private reduce(callable: PickleValue, args: PickleValue): PickleValue {
    if (callable === null || typeof callable !== 'object' || !('kind' in callable) || callable.kind !== 'global') this.fail(`REDUCE calls ${describeValue(callable)}, not a global`);
    if (args === null || typeof args !== 'object' || !('kind' in args) || args.kind !== 'tuple') this.fail(`REDUCE of ${callable.name} with arguments that are ${describeValue(args)}, not a tuple`);
    const items = args.items;
    switch (callable.name) {
      case ORDERED_DICT:
        if (items.length !== 0) this.fail('OrderedDict called with arguments (torch.save calls it with none)');
        return { kind: 'dict', entries: new Map(), depth: 1 };
      case REBUILD_TENSOR:
        return this.rebuildTensor(items);
      case REBUILD_PARAMETER:
      case REBUILD_PARAMETER_WITH_STATE: {
        const tensor = items[0];
        if (tensor === null || typeof tensor !== 'object' || !('kind' in tensor) || tensor.kind !== 'tensor') this.fail(`${callable.name} of ${describeValue(tensor ?? null)}, not a tensor`);
        return tensor;
      }
      default:
        return this.fail(`refused call of ${callable.name}`);
    }
  }

  /** _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]). */
  private rebuildTensor(items: PickleValue[]): TensorRef {
    if (items.length < 6 || items.length > 7) this.fail(`_rebuild_tensor_v2 with ${items.length} arguments (expected 6 or 7)`);
    const [storage, offset, size, stride] = items;
    if (storage === null || typeof storage !== 'object' || !('kind' in storage) || storage.kind !== 'storage') this.fail(`_rebuild_tensor_v2 of ${describeValue(storage)}, not a storage`);
    const shape = this.integers(size, 'size');
    const strides = this.integers(stride, 'stride');
    if (shape.length !== strides.length) this.fail(`a tensor with ${shape.length} sizes but ${strides.length} strides`);
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) this.fail(`a tensor with storage offset ${describeValue(offset)}`);
    return { kind: 'tensor', storage, offset, shape, stride: strides };
  }

  private integers(value: PickleValue, what: string): number[] {
    if (value === null || typeof value !== 'object' || !('kind' in value) || value.kind !== 'tuple') this.fail(`a tensor ${what} that is ${describeValue(value)}, not a tuple`);
    return value.items.map((item) => {
      if (typeof item !== 'number' || !Number.isSafeInteger(item) || item < 0) this.fail(`a tensor ${what} holding ${describeValue(item)}`);
      return item;
    });
  }

  /** BUILD sets an object's state: torch.save gives OrderedDicts their `_metadata` (module versions), which cxc does not need. */
  private build(): void {
    const state = this.pop();
    const target = this.peek();
    const isDict = target !== null && typeof target === 'object' && 'kind' in target && target.kind === 'dict';
    if (!isDict) this.fail(`BUILD on ${describeValue(target)} (torch.save sets state only on an OrderedDict)`);
    if (state !== null && (typeof state !== 'object' || !('kind' in state) || state.kind !== 'dict')) this.fail(`BUILD with a state that is ${describeValue(state)}`);
  }
}

function latin1(bytes: Uint8Array): string {
  let text = '';
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
  return text;
}
