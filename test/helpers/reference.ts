/**
 * An independent, deliberately naive float64 forward pass of ConvNeXt (V1 and V2),
 * written from transformers' modeling code, not from cxc's kernels. Everything is
 * NCHW, every op is a plain loop, nothing is fused or folded: it is the second
 * opinion every target is judged against where no golden file exists.
 *
 * Output names follow the golden files (without their `backbone.` prefix):
 * logits, pooler_output, last_hidden_state, hidden_states.K, feature_maps.K.
 */
import { DWCONV_KERNEL, INNER_LAYER_NORM_EPS, type Activation, type ModelSpec } from '../../compiler/config.js';
import type { BlockWeights, CheckpointWeights, NormWeights } from '../../compiler/checkpoint.js';

export interface RefTensor { data: Float64Array; shape: number[] }

/** An NCHW activation. */
export interface Map4 { data: Float64Array; n: number; c: number; h: number; w: number }

export const at = (x: Map4, n: number, c: number, y: number, xx: number): number => ((n * x.c + c) * x.h + y) * x.w + xx;

// ---------------------------------------------------------------------------
// erf in float64

const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/**
 * erf(x) to about 1e-15 absolute. |x| < 3: the everywhere-positive series
 * erf(x) = 2/sqrt(pi) e^(-x^2) sum_n (2x^2)^n x / (1*3*...*(2n+1)) (no cancellation);
 * beyond: the continued fraction of erfc, evaluated bottom-up, which converges fast there.
 */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  let result: number;
  if (a < 3) {
    const x2 = a * a;
    let term = a;
    let sum = a;
    for (let n = 0; n < 200; n++) {
      term *= (2 * x2) / (2 * n + 3);
      sum += term;
      if (term < 1e-17 * sum) break;
    }
    result = TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
  } else {
    // erfc(a) = e^(-a^2)/sqrt(pi) * 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + ...)))))
    let tail = a;
    for (let k = 80; k >= 1; k--) tail = a + k / 2 / tail;
    const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / tail;
    result = 1 - erfc;
  }
  return x < 0 ? -result : result;
}

// ---------------------------------------------------------------------------
// activations, as transformers' ACT2FN defines them

const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
const softplus = (x: number): number => (x > 0 ? x + Math.log1p(Math.exp(-x)) : Math.log1p(Math.exp(x)));
const geluErf = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

export const REFERENCE_ACTIVATIONS: Record<Activation, (x: number) => number> = {
  gelu: geluErf,
  gelu_python: geluErf,
  gelu_10: (x) => Math.min(10, Math.max(-10, geluErf(x))),
  gelu_new: geluTanh,
  gelu_pytorch_tanh: geluTanh,
  gelu_accurate: geluTanh,
  gelu_fast: (x) => 0.5 * x * (1 + Math.tanh(0.7978845608 * x * (1 + 0.044715 * x * x))),
  quick_gelu: (x) => x * sigmoid(1.702 * x),
  laplace: (x) => 0.5 * (1 + erf((x - 0.707107) / (0.282095 * Math.SQRT2))),
  leaky_relu: (x) => (x >= 0 ? x : 0.01 * x),
  linear: (x) => x,
  mish: (x) => x * Math.tanh(softplus(x)),
  relu: (x) => Math.max(0, x),
  relu2: (x) => Math.max(0, x) ** 2,
  relu6: (x) => Math.min(6, Math.max(0, x)),
  sigmoid,
  silu: (x) => x * sigmoid(x),
  swish: (x) => x * sigmoid(x),
  tanh: Math.tanh,
};

// ---------------------------------------------------------------------------
// layers

/** PyTorch Conv2d (no dilation): output size floor((H + 2 pad - k) / stride) + 1. */
function conv2d(
  x: Map4,
  weight: Float32Array, // [cout, cin / groups, k, k]
  bias: Float32Array,
  cout: number,
  k: number,
  stride: number,
  pad: number,
  groups: number,
): Map4 {
  const h = Math.floor((x.h + 2 * pad - k) / stride) + 1;
  const w = Math.floor((x.w + 2 * pad - k) / stride) + 1;
  if (h < 1 || w < 1) throw new Error(`reference: a ${k}x${k} stride-${stride} conv of ${x.h}x${x.w} leaves nothing`);
  const out: Map4 = { data: new Float64Array(x.n * cout * h * w), n: x.n, c: cout, h, w };
  const cinPerGroup = x.c / groups;
  const coutPerGroup = cout / groups;
  for (let n = 0; n < x.n; n++) {
    for (let co = 0; co < cout; co++) {
      const firstIn = Math.floor(co / coutPerGroup) * cinPerGroup;
      for (let oy = 0; oy < h; oy++) {
        for (let ox = 0; ox < w; ox++) {
          // Taps that land inside the input (zero padding contributes nothing).
          const top = oy * stride - pad;
          const left = ox * stride - pad;
          const kyFrom = Math.max(0, -top);
          const kyTo = Math.min(k, x.h - top);
          const kxFrom = Math.max(0, -left);
          const kxTo = Math.min(k, x.w - left);
          let sum = bias[co];
          for (let ci = 0; ci < cinPerGroup; ci++) {
            const plane = at(x, n, firstIn + ci, 0, 0); // start of input channel firstIn + ci
            const kernel = (co * cinPerGroup + ci) * k * k; // start of its k x k weights
            for (let ky = kyFrom; ky < kyTo; ky++) {
              const inputRow = plane + (top + ky) * x.w + left;
              const weightRow = kernel + ky * k;
              for (let kx = kxFrom; kx < kxTo; kx++) sum += weight[weightRow + kx] * x.data[inputRow + kx];
            }
          }
          out.data[at(out, n, co, oy, ox)] = sum;
        }
      }
    }
  }
  return out;
}

/** LayerNorm over channels at every pixel (ConvNextLayerNorm, channels_first): biased variance, two passes. */
function layerNormChannels(x: Map4, norm: NormWeights, eps: number): Map4 {
  const out: Map4 = { ...x, data: new Float64Array(x.data.length) };
  for (let n = 0; n < x.n; n++) {
    for (let y = 0; y < x.h; y++) {
      for (let xx = 0; xx < x.w; xx++) {
        let mean = 0;
        for (let c = 0; c < x.c; c++) mean += x.data[at(x, n, c, y, xx)];
        mean /= x.c;
        let variance = 0;
        for (let c = 0; c < x.c; c++) variance += (x.data[at(x, n, c, y, xx)] - mean) ** 2;
        variance /= x.c;
        const inv = 1 / Math.sqrt(variance + eps);
        for (let c = 0; c < x.c; c++) {
          const i = at(x, n, c, y, xx);
          out.data[i] = (x.data[i] - mean) * inv * norm.weight[c] + norm.bias[c];
        }
      }
    }
  }
  return out;
}

/** LayerNorm of a plain vector (the pooler's). */
function layerNormVector(v: Float64Array, norm: NormWeights, eps: number): Float64Array {
  let mean = 0;
  for (const value of v) mean += value;
  mean /= v.length;
  let variance = 0;
  for (const value of v) variance += (value - mean) ** 2;
  variance /= v.length;
  const inv = 1 / Math.sqrt(variance + eps);
  return v.map((value, c) => (value - mean) * inv * norm.weight[c] + norm.bias[c]);
}

/** y = W x + b with W [out, in] (nn.Linear). */
function linear(x: Float64Array, weight: Float32Array, bias: Float32Array, outFeatures: number): Float64Array {
  const inFeatures = x.length;
  const y = new Float64Array(outFeatures);
  for (let o = 0; o < outFeatures; o++) {
    const row = o * inFeatures;
    let sum = bias[o];
    for (let i = 0; i < inFeatures; i++) sum += weight[row + i] * x[i];
    y[o] = sum;
  }
  return y;
}

/**
 * One ConvNextLayer / ConvNextV2Layer:
 * dwconv 7x7 -> LN -> pwconv1 -> act -> [GRN] -> pwconv2 -> [layer scale] -> + input.
 */
function block(x: Map4, weights: BlockWeights, act: (v: number) => number): Map4 {
  const channels = x.c;
  const hidden = weights.pwconv1Bias.length;
  const pad = (DWCONV_KERNEL - 1) / 2;
  const mixed = layerNormChannels(conv2d(x, weights.dwconvWeight, weights.dwconvBias, channels, DWCONV_KERNEL, 1, pad, channels), weights.norm, INNER_LAYER_NORM_EPS);
  const out: Map4 = { ...x, data: new Float64Array(x.data.length) };
  const pixels = x.h * x.w;
  for (let n = 0; n < x.n; n++) {
    // The MLP's hidden activations of every pixel of this image: GRN needs them all.
    const expanded: Float64Array[] = [];
    for (let p = 0; p < pixels; p++) {
      const y = Math.floor(p / x.w);
      const xx = p % x.w;
      const v = new Float64Array(channels);
      for (let c = 0; c < channels; c++) v[c] = mixed.data[at(mixed, n, c, y, xx)];
      expanded.push(linear(v, weights.pwconv1Weight, weights.pwconv1Bias, hidden).map(act));
    }
    if (weights.grn) {
      // ConvNextV2GRN: Gx = ||x||_2 over H, W per channel; Nx = Gx / (mean_c Gx + 1e-6)
      const gx = new Float64Array(hidden);
      for (const v of expanded) for (let j = 0; j < hidden; j++) gx[j] += v[j] * v[j];
      for (let j = 0; j < hidden; j++) gx[j] = Math.sqrt(gx[j]);
      let meanGx = 0;
      for (let j = 0; j < hidden; j++) meanGx += gx[j];
      meanGx /= hidden;
      for (const v of expanded) {
        for (let j = 0; j < hidden; j++) {
          const nx = gx[j] / (meanGx + 1e-6);
          v[j] = weights.grn.weight[j] * (v[j] * nx) + weights.grn.bias[j] + v[j];
        }
      }
    }
    for (let p = 0; p < pixels; p++) {
      const y = Math.floor(p / x.w);
      const xx = p % x.w;
      const projected = linear(expanded[p], weights.pwconv2Weight, weights.pwconv2Bias, channels);
      for (let c = 0; c < channels; c++) {
        const scaled = weights.layerScale ? weights.layerScale[c] * projected[c] : projected[c];
        const i = at(x, n, c, y, xx);
        out.data[i] = x.data[i] + scaled;
      }
    }
  }
  return out;
}

/** Mean over H x W of each channel: [N, C]. */
function meanPool(x: Map4): Float64Array[] {
  const pooled: Float64Array[] = [];
  for (let n = 0; n < x.n; n++) {
    const v = new Float64Array(x.c);
    for (let c = 0; c < x.c; c++) {
      let sum = 0;
      for (let y = 0; y < x.h; y++) for (let xx = 0; xx < x.w; xx++) sum += x.data[at(x, n, c, y, xx)];
      v[c] = sum / (x.h * x.w);
    }
    pooled.push(v);
  }
  return pooled;
}

const tensor = (x: Map4): RefTensor => ({ data: x.data, shape: [x.n, x.c, x.h, x.w] });

function stack(rows: Float64Array[]): RefTensor {
  const width = rows[0].length;
  const data = new Float64Array(rows.length * width);
  rows.forEach((row, n) => data.set(row, n * width));
  return { data, shape: [rows.length, width] };
}

// ---------------------------------------------------------------------------
// the ops a target fuses, one function each (kernel tests check a single kernel against one)

export const referenceOps = {
  /** ConvNextEmbeddings: patchify conv, then LayerNorm over channels. */
  stem(input: Map4, spec: ModelSpec, weights: CheckpointWeights): Map4 {
    const p = spec.patchSize;
    const x = conv2d(input, weights.stem.convWeight, weights.stem.convBias, spec.hiddenSizes[0], p, p, 0, 1);
    return layerNormChannels(x, weights.stem.norm, INNER_LAYER_NORM_EPS);
  },
  /** The downsampling layer: LayerNorm, then a 2x2 stride-2 conv. */
  downsample(x: Map4, weights: NonNullable<CheckpointWeights['stages'][number]['downsample']>, channels: number): Map4 {
    return conv2d(layerNormChannels(x, weights.norm, INNER_LAYER_NORM_EPS), weights.convWeight, weights.convBias, channels, 2, 2, 0, 1);
  },
  block(x: Map4, weights: BlockWeights, activation: Activation): Map4 {
    return block(x, weights, REFERENCE_ACTIVATIONS[activation]);
  },
  /** A backbone's feature map: LayerNorm (with affine) of a stage output. */
  featureMap(x: Map4, norm: NormWeights): Map4 {
    return layerNormChannels(x, norm, INNER_LAYER_NORM_EPS);
  },
  /** pooler_output: mean over H x W, then LayerNorm with the config's eps; one row per image. */
  pool(x: Map4, norm: NormWeights, eps: number): Float64Array[] {
    return meanPool(x).map((v) => layerNormVector(v, norm, eps));
  },
  classifier(pooled: Float64Array[], weights: NonNullable<CheckpointWeights['classifier']>, labels: number): Float64Array[] {
    return pooled.map((v) => linear(v, weights.weight, weights.bias, labels));
  },
};

// ---------------------------------------------------------------------------
// the model

/**
 * The whole forward pass. `pixels` is NCHW [batch, numChannels, height, width].
 * Always returns last_hidden_state and every hidden_states.K (K = 0 is the stem's
 * output); pooler_output for classification and base heads, logits when there is a
 * classifier, feature_maps.K (in out_features order) for backbones.
 */
export function referenceForward(
  spec: ModelSpec,
  weights: CheckpointWeights,
  pixels: Float32Array | Float64Array,
  batch: number,
  height: number,
  width: number,
): Map<string, RefTensor> {
  if (pixels.length !== batch * spec.numChannels * height * width) {
    throw new Error(`reference: ${pixels.length} pixels for [${batch}, ${spec.numChannels}, ${height}, ${width}]`);
  }
  const outputs = new Map<string, RefTensor>();
  const input: Map4 = { data: Float64Array.from(pixels), n: batch, c: spec.numChannels, h: height, w: width };

  let x = referenceOps.stem(input, spec, weights);
  const hiddenStates: Map4[] = [x];
  spec.hiddenSizes.forEach((channels, s) => {
    const stage = weights.stages[s];
    if (stage.downsample) x = referenceOps.downsample(x, stage.downsample, channels);
    for (const blockWeights of stage.blocks) x = referenceOps.block(x, blockWeights, spec.hiddenAct);
    hiddenStates.push(x);
  });

  hiddenStates.forEach((state, k) => outputs.set(`hidden_states.${k}`, tensor(state)));
  outputs.set('last_hidden_state', tensor(x));

  if (spec.head === 'backbone') {
    const stageNames = ['stem', ...spec.hiddenSizes.map((_, i) => `stage${i + 1}`)];
    spec.outFeatures.forEach((feature, k) => {
      const state = hiddenStates[stageNames.indexOf(feature)];
      outputs.set(`feature_maps.${k}`, tensor(referenceOps.featureMap(state, weights.featureNorms[feature])));
    });
    return outputs;
  }

  const pooled = referenceOps.pool(x, weights.poolerNorm!, spec.layerNormEps);
  outputs.set('pooler_output', stack(pooled));
  if (weights.classifier) outputs.set('logits', stack(referenceOps.classifier(pooled, weights.classifier, spec.numLabels)));
  return outputs;
}
