/**
 * What the kernel-by-kernel tests of both targets share: the configs and sizes they run, random NCHW
 * maps, NHWC packing (padded channels, padding lanes zero) and the error bar.
 */
import { expect } from 'vitest';
import type { Channels } from '../../runtime/types.js';
import { at, type Map4 } from './reference.js';
import { random } from './random-checkpoint.js';

/** Ten times tighter than the golden bar's form: max |out - ref| <= 2e-5 x max(1, max |ref|). */
export const KERNEL_BAR = 2e-5;
export const BATCH = 2;
/** Patch 3 on 23 x 29: level 0 is 7 x 9, level 1 is 3 x 4 (odd sizes floored). */
export const INPUT = { height: 23, width: 29 };

const base = { num_channels: 3, patch_size: 3, num_stages: 2, hidden_sizes: [12, 20], depths: [1, 1], image_size: 23 };
export const KERNEL_CONFIGS = {
  v1: { ...base, model_type: 'convnext', hidden_act: 'gelu', layer_scale_init_value: 0.5, num_labels: 7, architectures: ['ConvNextForImageClassification'] },
  v2: { ...base, model_type: 'convnextv2', hidden_act: 'gelu', num_labels: 5, architectures: ['ConvNextV2ForImageClassification'] },
  backbone: { ...base, model_type: 'convnext', hidden_act: 'silu', architectures: ['ConvNextBackbone'], out_features: ['stem', 'stage2'] },
};

/** [n, c, h, w] of a level of the kernel tests' input. */
export function levelShape(level: number, c: number): Omit<Map4, 'data'> {
  const sizes = [{ h: Math.floor(INPUT.height / base.patch_size), w: Math.floor(INPUT.width / base.patch_size) }];
  sizes.push({ h: Math.floor(sizes[0].h / 2), w: Math.floor(sizes[0].w / 2) });
  return { n: BATCH, c, h: sizes[level].h, w: sizes[level].w };
}

export function randomMap(n: number, c: number, h: number, w: number, seed: number): Map4 {
  const next = random(seed);
  return { data: Float64Array.from({ length: n * c * h * w }, () => 2 * next()), n, c, h, w };
}

/** An NCHW map as NHWC with `channels.padded` floats per pixel (padding lanes zero). */
export function toNhwc(x: Map4, channels: Channels, into = new Float32Array(x.n * x.h * x.w * channels.padded)): Float32Array {
  into.fill(0);
  for (let n = 0; n < x.n; n++) for (let c = 0; c < x.c; c++) for (let y = 0; y < x.h; y++) for (let xx = 0; xx < x.w; xx++) {
    into[((n * x.h + y) * x.w + xx) * channels.padded + c] = x.data[at(x, n, c, y, xx)];
  }
  return into;
}

/** NHWC back to NCHW, checking that the padding lanes stayed zero. */
export function fromNhwc(view: Float32Array, shape: Omit<Map4, 'data'>, channels: Channels): Map4 {
  const x: Map4 = { ...shape, data: new Float64Array(shape.n * shape.c * shape.h * shape.w) };
  for (let n = 0; n < x.n; n++) for (let y = 0; y < x.h; y++) for (let xx = 0; xx < x.w; xx++) {
    const pixel = ((n * x.h + y) * x.w + xx) * channels.padded;
    for (let c = 0; c < x.c; c++) x.data[at(x, n, c, y, xx)] = view[pixel + c];
    for (let c = x.c; c < channels.padded; c++) expect(view[pixel + c], 'padding lane').toBe(0);
  }
  return x;
}

/** max |actual - expected| <= bar x max(1, max |expected|); `bar` defaults to the float32 kernels' KERNEL_BAR. */
export function expectClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, bar = KERNEL_BAR): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let scale = 1;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  console.log(`  ${label}: max error ${worst.toExponential(2)} = ${(worst / scale).toExponential(2)} x max(1, max|ref|) (bar ${bar})`);
  expect(worst).toBeLessThanOrEqual(bar * scale);
}
