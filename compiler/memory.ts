/**
 * A full garbage collection on demand. Packing a large checkpoint releases its tensors group by
 * group while writing only into the already-allocated packed array, so V8 sees no allocation
 * pressure and would keep gigabytes of released tensors until the build ends; collecting every
 * few hundred MiB keeps `cxc build`'s peak memory near the checkpoint's size.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let collect: (() => void) | null | undefined;

/** Runs a full GC where the engine allows exposing it; otherwise does nothing. */
export function collectGarbage(): void {
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      // Otherwise V8 frees dead ArrayBuffers on a background sweeper that finishes only after the
      // synchronous packing loop yields, which it does not until the end.
      setFlagsFromString('--no-concurrent-array-buffer-sweeping');
      collect = runInNewContext('gc') as () => void;
    } catch {
      collect = null;
    }
  }
  collect?.();
}
