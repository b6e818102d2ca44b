/**
 * Reads byte ranges of a file at offsets, so checkpoints of any size are read tensor by tensor
 * (Node caps one whole-file read at 2 GiB, and holding a whole checkpoint doubles peak memory).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { CxcError } from './errors.js';

/** One read call stays below Node's 2 GiB limit per read. */
const MAX_READ_BYTES = 1 << 30;

export class RandomAccessFile {
  readonly size: number;
  private fd: number | undefined;

  private constructor(readonly path: string, fd: number) {
    this.fd = fd;
    this.size = fstatSync(fd).size;
  }

  static open(path: string, what: string): RandomAccessFile {
    try {
      return new RandomAccessFile(path, openSync(path, 'r'));
    } catch (error) {
      throw new CxcError(`cannot read the ${what} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { file: path });
    }
  }

  /** Fills `target` with the bytes at [position, position + target.byteLength); refuses reads past the end. */
  readInto(target: Uint8Array, position: number, what: string): Uint8Array {
    if (this.fd === undefined) throw new Error(`internal: ${this.path} was closed`);
    if (position < 0 || position + target.byteLength > this.size) {
      throw new CxcError(`${what} lies at bytes ${position}..${position + target.byteLength}, past the end of the ${this.size}-byte file (truncated?)`, { file: this.path });
    }
    let done = 0;
    while (done < target.byteLength) {
      const length = Math.min(MAX_READ_BYTES, target.byteLength - done);
      const read = readSync(this.fd, target, done, length, position + done);
      if (read === 0) throw new CxcError(`the file ended while reading ${what} (it shrank while being read?)`, { file: this.path });
      done += read;
    }
    return target;
  }

  read(position: number, length: number, what: string): Uint8Array {
    return this.readInto(new Uint8Array(length), position, what);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Runs `use` with the file open and closes it afterwards, whatever happens. */
export function withFile<T>(path: string, what: string, use: (file: RandomAccessFile) => T): T {
  const file = RandomAccessFile.open(path, what);
  try {
    return use(file);
  } finally {
    file.close();
  }
}
