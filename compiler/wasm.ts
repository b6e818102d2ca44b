/**
 * Stage 5 for the CPU target: renders the fused plan into one WebAssembly module
 * (WAT from templates/wasm, assembled with wabt), once with plain SIMD128 and once
 * with relaxed-SIMD FMA. Every decision lives here: which kernels exist, their
 * constants (channel counts, byte offsets of weight fields, tile sizes) and which
 * export each plan step calls.
 */
import wabtInit from 'wabt';
import { findGroup, type WeightLayout, type Packing } from './layout.js';
import type { KernelPlan, PlanStep } from './plan.js';
import { renderTemplate } from './templates.js';
import type { WasmKernelInfo, WasmStepKernels, WasmVariant } from '../runtime/wasm.js';

/** Channels padded to 8 (two f32x4 vectors): the GEMM microkernel's column panel. */
export const WASM_PACKING: Packing = { channelAlign: 8, panelWidth: 8 };

/**
 * Rows of the GEMM register block: 4 rows x 8 columns = 8 accumulators, plus two weight
 * vectors and one broadcast. Measured on V8 (Node 20, x64): 6 rows spill and run ~20%
 * slower; unrolling K (4x) also ran slower than a tight loop.
 */
const GEMM_ROWS = 4;
/** Leftover rows (fewer than GEMM_ROWS) run as blocks of these sizes, largest first; with each at most once they cover every count below GEMM_ROWS. */
const GEMM_TAILS = [4, 2, 1].filter((t) => t < GEMM_ROWS);
/** Steps of K per loop iteration (K is always a multiple of 8: padded channels); see GEMM_ROWS. */
const GEMM_UNROLL = 1;
/**
 * Per-tile working set target (dwconv rows + hidden rows), to stay inside L2 (1-2 MiB on current
 * x86 and ARM cores). Bigger tiles stream each pointwise weight matrix fewer times per block,
 * which matters in the late stages (stage 3 of ConvNeXt-T: 9 MiB per matrix, 49 pixels):
 * 512 KiB ran ~4% faster than 256 KiB on ConvNeXt-T (AMD EPYC, 1 MiB L2).
 */
const TILE_BUDGET_BYTES = 512 * 1024;
/** Weights start after the first 64 KiB page, kept free so address 0 is never a tensor. */
export const WEIGHTS_BASE = 65536;

interface GemmSpec { name: string; k: number; n: number; epilogue: 'bias' | 'act' | 'act_sumsq' | 'residual' }

export interface WasmProgram extends WasmKernelInfo {
  binaries: Record<WasmVariant, Uint8Array>;
}

export interface RenderedWasm {
  program: WasmProgram;
  /** The WAT sources, kept for readers and for debugging. */
  sources: { simd: string; relaxed: string };
}

function tileFor(rowFloats: number): number {
  const rows = Math.floor(TILE_BUDGET_BYTES / (rowFloats * 4));
  return Math.max(GEMM_ROWS, Math.min(64, Math.floor(rows / GEMM_ROWS) * GEMM_ROWS));
}

/** Byte offset of a field inside its weight group (the group's base is a kernel argument). */
function fieldBytes(layout: WeightLayout, groupKey: string, field: string): number {
  const group = findGroup(layout, groupKey);
  const f = group.fields[field];
  if (!f) throw new Error(`internal: no field ${field} in weight group ${groupKey}`);
  return (f.offset - group.offset) * 4;
}

export async function renderWasm(plan: KernelPlan, layout: WeightLayout): Promise<RenderedWasm> {
  const { spec } = plan;
  const kernels: string[] = [];
  const gemms = new Map<string, GemmSpec>();
  const norms = new Map<string, { name: string; c: number; cs: number; padding: number; eps: number; affine: boolean }>();
  const stepKernels: WasmStepKernels[] = [];
  let scratchBytes = 0;
  let midFloats = 0;
  let hiddenFloats = 0;

  const gemm = (g: GemmSpec) => {
    gemms.set(g.name, g);
    return g.name;
  };
  const norm = (c: number, cs: number, eps: number, affine: boolean) => {
    const name = `layernorm_c${c}_${affine ? 'affine' : 'plain'}_eps${String(eps).replace(/[^0-9a-z]/gi, '_')}`;
    norms.set(name, { name, c, cs, padding: cs - c, eps, affine });
    return name;
  };

  const stagesRendered = new Set<number>();
  const featureMaps: object[] = [];
  let pool: object | undefined;
  let classifier: object | undefined;

  for (const step of plan.steps) {
    switch (step.op) {
      case 'stem': {
        const group = 'stem';
        const cs = step.out.padded;
        const k = step.inChannels * step.patch * step.patch;
        kernels.push(renderTemplate('wasm/stem.wat.hbs', {
          patch: step.patch, cin: step.inChannels, c: step.out.real, cs, panels: cs / 8, panelBytes: k * 32,
          weightBytes: fieldBytes(layout, group, 'weight'), biasBytes: fieldBytes(layout, group, 'bias'),
          normWeightBytes: fieldBytes(layout, group, 'normWeight'), normBiasBytes: fieldBytes(layout, group, 'normBias'),
          norm: norm(step.out.real, cs, step.eps, true),
        }));
        stepKernels.push({ kind: 'stem', exports: ['stem'] });
        break;
      }
      case 'downsample': {
        const group = `stages.${step.level}.downsample`;
        const name = `downsample_s${step.level}`;
        const tile = tileFor(4 * step.in.padded);
        kernels.push(renderTemplate('wasm/downsample.wat.hbs', {
          name, cin: step.in.real, cout: step.out.real, cinPadded: step.in.padded, coutPadded: step.out.padded, tile,
          norm: norm(step.in.real, step.in.padded, step.eps, false),
          gemm: gemm({ name: `gemm_${name}`, k: 4 * step.in.padded, n: step.out.padded, epilogue: 'bias' }),
          weightBytes: fieldBytes(layout, group, 'weight'), biasBytes: fieldBytes(layout, group, 'bias'),
        }));
        scratchBytes = Math.max(scratchBytes, tile * 4 * step.in.padded * 4);
        stepKernels.push({ kind: 'downsample', exports: [name] });
        break;
      }
      case 'block': {
        const s = step.stage;
        const cs = step.channels.padded;
        const hs = step.hidden.padded;
        const tile = tileFor(cs + hs);
        if (!stagesRendered.has(s)) {
          stagesRendered.add(s);
          const group = `stages.${s}.blocks.0`;
          gemm({ name: `pw1_s${s}`, k: cs, n: hs, epilogue: step.grn ? 'act_sumsq' : 'act' });
          gemm({ name: `pw2_s${s}`, k: hs, n: cs, epilogue: 'residual' });
          kernels.push(renderTemplate('wasm/block.wat.hbs', {
            stage: s, c: step.channels.real, cs, hidden: step.hidden.real, hs, panels: cs / 8, tile, grn: step.grn,
            norm: norm(step.channels.real, cs, step.eps, false),
            dwWeightBytes: fieldBytes(layout, group, 'dwWeight'), dwBiasBytes: fieldBytes(layout, group, 'dwBias'),
            pw1WeightBytes: fieldBytes(layout, group, 'pw1Weight'), pw1BiasBytes: fieldBytes(layout, group, 'pw1Bias'),
            pw2WeightBytes: fieldBytes(layout, group, 'pw2Weight'), pw2BiasBytes: fieldBytes(layout, group, 'pw2Bias'),
            grnGammaBytes: step.grn ? fieldBytes(layout, group, 'grnGamma') : 0,
          }));
        }
        scratchBytes = Math.max(scratchBytes, tile * (cs + hs) * 4);
        hiddenFloats = Math.max(hiddenFloats, hs);
        if (step.grn) midFloats = Math.max(midFloats, hs);
        stepKernels.push(step.grn
          ? { kind: 'blockGrn', exports: [`block_s${s}_expand`, `grn_s${s}`, `block_s${s}_project`] }
          : { kind: 'block', exports: [`block_s${s}`] });
        break;
      }
      case 'featureMap': {
        const name = `feature_map_${step.name.replace(/[^a-z0-9]/gi, '_')}`;
        const group = `featureNorms.${spec.outFeatures[Number(step.name.split('.')[1])]}`;
        featureMaps.push({
          name, cs: step.channels.padded, norm: norm(step.channels.real, step.channels.padded, step.eps, true),
          weightBytes: fieldBytes(layout, group, 'weight'), biasBytes: fieldBytes(layout, group, 'bias'),
        });
        stepKernels.push({ kind: 'featureMap', exports: [name] });
        break;
      }
      case 'pool':
        pool = {
          cs: step.channels.padded, eps: step.eps, norm: norm(step.channels.real, step.channels.padded, step.eps, true),
          weightBytes: fieldBytes(layout, 'pooler', 'weight'), biasBytes: fieldBytes(layout, 'pooler', 'bias'),
        };
        stepKernels.push({ kind: 'pool', exports: ['pool'] });
        break;
      case 'classifier':
        classifier = {
          gemm: gemm({ name: 'gemm_classifier', k: step.in.padded, n: step.labels.padded, epilogue: 'bias' }),
          weightBytes: fieldBytes(layout, 'classifier', 'weight'), biasBytes: fieldBytes(layout, 'classifier', 'bias'),
        };
        stepKernels.push({ kind: 'classifier', exports: ['classifier'] });
        break;
      case 'output':
        stepKernels.push({ kind: 'output', exports: [] });
        break;
      default:
        assertNever(step);
    }
  }
  kernels.push(renderTemplate('wasm/head.wat.hbs', { featureMaps, pool: pool ?? false, classifier: classifier ?? false }));
  for (const n of norms.values()) kernels.push(renderTemplate('wasm/layernorm.wat.hbs', n));

  const weightBytes = plan.weightFloats * 4;
  const minPages = Math.ceil((WEIGHTS_BASE + weightBytes) / 65536) + 1;
  const render = (relaxed: boolean, shared: boolean) => {
    const gemmSources = [...gemms.values()].map((g) => {
      if (g.k % GEMM_UNROLL !== 0 || g.n % 8 !== 0) throw new Error(`internal: GEMM ${g.name} is ${g.k}x${g.n}, not padded`);
      return renderTemplate('wasm/gemm.wat.hbs', {
        ...g, relaxed, activation: spec.hiddenAct, mr: GEMM_ROWS, tails: GEMM_TAILS, unroll: GEMM_UNROLL, unrolled: Array.from({ length: GEMM_UNROLL }, (_, i) => i),
        kSteps: g.k / GEMM_UNROLL, panels: g.n / 8, panelBytes: g.k * 32, rowBytesA: g.k * 4, rowBytesC: g.n * 4,
      });
    });
    return renderTemplate('wasm/module.wat.hbs', {
      architecture: spec.architecture, description: relaxed ? 'relaxed SIMD (FMA)' : 'SIMD128',
      minPages, maxPages: 65536, shared,
      math: renderTemplate('wasm/math.wat.hbs', { activation: spec.hiddenAct }),
      kernels: [...kernels, ...gemmSources],
    });
  };
  const sources = { simd: render(false, false), relaxed: render(true, false) };
  const wabt = await wabtInit();
  const assemble = (text: string, relaxed: boolean): Uint8Array => {
    const module = wabt.parseWat(`${spec.architecture}.wat`, text, { simd: true, relaxed_simd: relaxed, threads: true });
    try {
      return new Uint8Array(module.toBinary({ log: false, write_debug_names: true }).buffer);
    } finally {
      module.destroy();
    }
  };
  const program: WasmProgram = {
    weightsBase: WEIGHTS_BASE,
    scratchBytes,
    midFloats,
    hiddenFloats,
    steps: stepKernels,
    binaries: {
      simd: assemble(sources.simd, false),
      relaxed: assemble(sources.relaxed, true),
      // Threads need the memory declared shared; the kernels are otherwise identical.
      'simd-shared': assemble(render(false, true), false),
      'relaxed-shared': assemble(render(true, true), true),
    },
  };
  return { program, sources };
}

function assertNever(step: never): never {
  throw new Error(`internal: unknown plan step ${JSON.stringify(step as PlanStep)}`);
}
