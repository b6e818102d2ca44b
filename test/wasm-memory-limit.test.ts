/**
 * The WASM runtime and WebAssembly's one 4 GiB wasm32 memory: weights that cannot fit are refused
 * at load, before any memory is allocated, with a message naming the sizes and the way out.
 * (Inputs too large to run next to the weights are refused before the memory grows: see
 * bench/huge-checkpoint.mjs, which checks it on ConvNeXt V2-huge at 4096x4096.)
 */
import { describe, expect, test } from 'vitest';
import { compileModel } from '../compiler/build.js';
import { TARGETS } from '../compiler/targets.js';
import { createWasmBackend, type WasmKernelInfo } from '../runtime/wasm.js';
import { goldenPath } from './helpers/golden.js';

describe('WASM memory limit', () => {
  test('weights past 4 GiB are refused before allocating', async () => {
    const compiled = await compileModel({ input: goldenPath('models', 'micro'), target: 'wasm' });
    const rendered = await TARGETS.wasm.render(compiled.plan, compiled.layout);
    const binaries = rendered.assets;
    // The same module, told its weights file holds 4.3 GB (the compiler itself refuses such configs).
    const manifest = { ...compiled.manifest, weights: { ...compiled.manifest.weights, floats: 1_075_000_000 } };
    const before = process.memoryUsage().arrayBuffers;
    // An empty weights file: were it read first, its size would be the complaint.
    await expect(
      createWasmBackend(manifest, rendered.program as WasmKernelInfo, async (variant) => binaries[variant].data as Uint8Array, new Uint8Array(0)),
    ).rejects.toThrow(/weights \(4\.00 GiB\) and its smallest run need 4\.\d\d GiB, over WebAssembly's 4 GiB memory; use --target webgpu/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 2 ** 20);
  }, 120_000);
});
