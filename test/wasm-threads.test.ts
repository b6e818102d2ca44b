/**
 * The WASM thread pool when a worker cannot do its part: the calling thread must not wait forever
 * (it used to: a worker that trapped never counted itself done, and the caller's blocking wait kept
 * the worker's error event from ever being delivered). A kernel that traps in a worker's slice, and
 * a module that does not instantiate in the worker, each make the run reject with a message that
 * names the thread and the cause; every later run rejects the same way.
 */
import wabtInit from 'wabt';
import { describe, expect, test } from 'vitest';
import { startThreadPool } from '../runtime/wasm-threads.js';

async function compile(wat: string): Promise<WebAssembly.Module> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('pool.wat', wat, { threads: true });
  try {
    return await WebAssembly.compile(new Uint8Array(parsed.toBinary({}).buffer));
  } finally {
    parsed.destroy();
  }
}

const memory = () => new WebAssembly.Memory({ initial: 1, maximum: 16, shared: true });

describe('WASM thread pool failures', () => {
  test('a kernel that traps in a worker\'s slice rejects the run, naming the thread and the trap', { timeout: 20_000 }, async () => {
    // Adds 1 to byte i for i in [start, end); traps for any i >= 6 (only the worker's slice reaches it).
    const module = await compile(`(module (import "env" "memory" (memory 1 16 shared))
      (func (export "count") (param $start i32) (param $end i32)
        (loop $each
          (if (i32.ge_s (local.get $start) (i32.const 6)) (then unreachable))
          (i32.store8 (local.get $start) (i32.add (i32.load8_u (local.get $start)) (i32.const 1)))
          (br_if $each (i32.lt_s (local.tee $start (i32.add (local.get $start) (i32.const 1))) (local.get $end))))))`);
    const shared = memory();
    const instance = await WebAssembly.instantiate(module, { env: { memory: shared } });
    const kernel = instance.exports.count as (...args: number[]) => void;
    const pool = await startThreadPool(2, module, shared, ['count']);
    try {
      // A range the worker can do: both halves run.
      await pool.run({ kernel: 0, args: [0, 6], rangeArg: 0, perThread: [] }, kernel);
      expect(Array.from(new Uint8Array(shared.buffer, 0, 6))).toEqual([1, 1, 1, 1, 1, 1]);
      const started = performance.now();
      await expect(pool.run({ kernel: 0, args: [0, 12], rangeArg: 0, perThread: [] }, kernel)).rejects.toThrow(/WASM worker thread 1 of 2 failed \(RuntimeError: unreachable/);
      expect(performance.now() - started).toBeLessThan(5000);
      await expect(pool.run({ kernel: 0, args: [0, 4], rangeArg: 0, perThread: [] }, kernel)).rejects.toThrow(/cannot run on threads any more/);
    } finally {
      pool.stop();
    }
  });

  test('a module that does not instantiate in the worker rejects the first run', { timeout: 20_000 }, async () => {
    const module = await compile(`(module (import "env" "memory" (memory 1 16 shared)) (import "env" "missing" (func $missing))
      (func (export "noop") (param i32 i32)))`);
    const pool = await startThreadPool(2, module, memory(), ['noop']);
    try {
      await expect(pool.run({ kernel: 0, args: [0, 8], rangeArg: 0, perThread: [] }, () => {})).rejects.toThrow(/WASM worker thread 1 of 2 failed \(LinkError/);
    } finally {
      pool.stop();
    }
  });
});
