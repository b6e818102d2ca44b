/**
 * The compilation targets: how each packs weights and renders the fused plan.
 * Adding a target is adding an entry here (a packing and a renderer).
 */
import type { Packing, WeightLayout } from './layout.js';
import type { KernelPlan } from './plan.js';
import { renderWasm, WASM_PACKING } from './wasm.js';
import { renderWebGpu, WEBGPU_PACKING } from './webgpu.js';

export type TargetName = 'wasm' | 'webgpu';

export interface RenderedTarget {
  /** JSON data the target's backend reads (baked into the module). */
  program: unknown;
  /** Files shipped next to the module, by the role the emitted loader knows them by. */
  assets: Record<string, { file: string; data: string | Uint8Array }>;
}

export interface RenderOptions {
  /** WebGPU: 'f16' adds f16 kernels the runtime picks where the adapter has shader-f16. */
  precision?: 'f32' | 'f16';
}

export interface Target {
  packing: Packing;
  render(plan: KernelPlan, layout: WeightLayout, options?: RenderOptions): Promise<RenderedTarget>;
}

export const TARGETS: Record<TargetName, Target> = {
  wasm: {
    packing: WASM_PACKING,
    async render(plan, layout) {
      const { program, sources } = await renderWasm(plan, layout);
      const { binaries, ...info } = program;
      return {
        program: info,
        assets: {
          simd: { file: 'kernels.wasm', data: binaries.simd },
          relaxed: { file: 'kernels-relaxed.wasm', data: binaries.relaxed },
          'simd-shared': { file: 'kernels-shared.wasm', data: binaries['simd-shared'] },
          'relaxed-shared': { file: 'kernels-relaxed-shared.wasm', data: binaries['relaxed-shared'] },
          source: { file: 'kernels.wat', data: sources.simd },
        },
      };
    },
  },
  webgpu: {
    packing: WEBGPU_PACKING,
    async render(plan, layout, options = {}) {
      const program = renderWebGpu(plan, layout, { precision: options.precision });
      return { program, assets: {} };
    },
  },
};
