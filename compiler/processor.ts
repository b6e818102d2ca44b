/**
 * Reads a checkpoint's preprocessor_config.json into the PreprocessSpec that the runtime's
 * preprocess() follows. Two forms exist on the Hub:
 * - ConvNextImageProcessor: `"size": {"shortest_edge": 224}`, with do_rescale/rescale_factor;
 * - the older ConvNextFeatureExtractor: `"size": 224` and no rescale fields, because that
 *   extractor always divided by 255.
 * A field that is absent (or null) takes the value ConvNextImageProcessor's constructor gives it
 * (classDefaultSpec()), as transformers would; a checkpoint with no file at all gets
 * defaultProcessorSpec(), the preprocessing its models were trained with.
 */
import { CxcError, show } from './errors.js';
import { RESAMPLE_NAMES, type PreprocessSpec } from '../runtime/preprocess.js';

/** The largest shortest_edge (and resized short side) accepted: beyond this it is a typo. */
export const MAX_IMAGE_EDGE = 8192;


/** Processor classes whose preprocessing preprocess() reproduces. */
const KNOWN_PROCESSOR_TYPES = new Set(['ConvNextImageProcessor', 'ConvNextImageProcessorFast', 'ConvNextFeatureExtractor']);

/**
 * The preprocessing of facebook/convnext-*-224 checkpoints, used when a checkpoint has no
 * preprocessor_config.json: short side to 256, center crop 224, bicubic, ImageNet statistics.
 */
export function defaultProcessorSpec(): PreprocessSpec {
  return {
    doResize: true,
    shortestEdge: 224,
    cropPct: 224 / 256,
    resample: 3,
    doRescale: true,
    rescaleFactor: 1 / 255,
    doNormalize: true,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
  };
}

/**
 * What transformers' ConvNextImageProcessor uses for a field its config file leaves out:
 * shortest_edge 384, crop_pct 224/256, bilinear, IMAGENET_STANDARD mean/std (0.5).
 */
export function classDefaultSpec(): PreprocessSpec {
  return {
    ...defaultProcessorSpec(),
    shortestEdge: 384,
    resample: 2,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
  };
}

/** Validates a parsed preprocessor_config.json; `source` names the file in error messages. */
export function parseProcessorConfig(json: unknown, source: string): PreprocessSpec {
  const fail = (message: string, hint?: string): never => {
    throw new CxcError(message, { file: source, hint });
  };
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    fail(`preprocessor config must be a JSON object, got ${show(json)}`);
  }
  const config = json as Record<string, unknown>;
  const defaults = classDefaultSpec();
  const present = (key: string): boolean => config[key] !== undefined && config[key] !== null;

  for (const key of ['image_processor_type', 'feature_extractor_type']) {
    if (!present(key)) continue;
    const type = config[key];
    if (typeof type !== 'string' || !KNOWN_PROCESSOR_TYPES.has(type)) {
      fail(
        `${key} ${show(type)} is not a ConvNeXt processor`,
        `cxc reproduces ${[...KNOWN_PROCESSOR_TYPES].join(' / ')} preprocessing only`,
      );
    }
  }

  const readBoolean = (key: string, fallback: boolean): boolean => {
    if (!present(key)) return fallback;
    const value = config[key];
    if (typeof value !== 'boolean') fail(`${key} must be true or false, got ${show(value)}`);
    return value as boolean;
  };

  const readNumber = (key: string, fallback: number): number => {
    if (!present(key)) return fallback;
    const value = config[key];
    if (typeof value !== 'number' || !Number.isFinite(value)) fail(`${key} must be a finite number, got ${show(value)}`);
    return value as number;
  };

  const readChannelStats = (key: string, fallback: number[]): number[] => {
    if (!present(key)) return fallback;
    const value = config[key];
    // transformers also accepts one number for all three channels.
    if (typeof value === 'number' && Number.isFinite(value)) return [value, value, value];
    if (!Array.isArray(value) || value.length !== 3) {
      fail(`${key} must be a list of 3 numbers (one per RGB channel), got ${show(value)}`);
    }
    const list = value as unknown[];
    if (!list.every((v) => typeof v === 'number' && Number.isFinite(v))) {
      fail(`${key} must be a list of 3 finite numbers, got ${show(value)}`);
    }
    return list as number[];
  };

  const shortestEdge = readShortestEdge(config.size, defaults.shortestEdge, fail);

  const cropPct = readNumber('crop_pct', defaults.cropPct);
  if (cropPct <= 0) fail(`crop_pct must be greater than 0, got ${show(cropPct)}`);
  if (shortestEdge < 384) {
    // The image is resized to int(shortest_edge / crop_pct) before cropping.
    const resizedShort = Math.trunc(shortestEdge / cropPct);
    if (resizedShort < 1 || resizedShort > MAX_IMAGE_EDGE) {
      fail(
        `crop_pct ${show(cropPct)} with shortest_edge ${shortestEdge} resizes the short side to ${resizedShort} pixels` +
          ` (expected 1 to ${MAX_IMAGE_EDGE})`,
      );
    }
  }

  const resample = readNumber('resample', defaults.resample);
  if (!(resample in RESAMPLE_NAMES) || !Number.isInteger(resample)) {
    fail(
      `resample ${show(resample)} is not a known PIL resampling filter`,
      `expected one of ${Object.entries(RESAMPLE_NAMES).map(([code, name]) => `${code} (${name})`).join(', ')}`,
    );
  }

  const rescaleFactor = readNumber('rescale_factor', defaults.rescaleFactor);
  if (rescaleFactor <= 0) fail(`rescale_factor must be greater than 0, got ${show(rescaleFactor)}`);

  const std = readChannelStats('image_std', defaults.std);
  if (std.some((s) => s === 0)) fail(`image_std ${show(std)} contains 0, which would divide by zero`);

  const spec: PreprocessSpec = {
    doResize: readBoolean('do_resize', defaults.doResize),
    shortestEdge,
    cropPct,
    resample,
    doRescale: readBoolean('do_rescale', defaults.doRescale),
    rescaleFactor,
    doNormalize: readBoolean('do_normalize', defaults.doNormalize),
    mean: readChannelStats('image_mean', defaults.mean),
    std,
  };
  checkFinitePixels(spec, fail);
  return spec;
}

/**
 * Finite statistics can still overflow float32, where preprocessing computes: rescale_factor
 * 1e300, image_mean 1e300, or an image_std like 1e-50 that rounds to 0. Every byte value
 * 0..255 of every channel must come out finite, computed as preprocess() does.
 */
function checkFinitePixels(spec: PreprocessSpec, fail: (message: string, hint?: string) => never): void {
  for (let channel = 0; channel < 3; channel++) {
    const mean = Math.fround(spec.mean[channel]);
    const std = Math.fround(spec.std[channel]);
    for (let byte = 0; byte < 256; byte++) {
      const rescaled = spec.doRescale ? Math.fround(byte * spec.rescaleFactor) : byte;
      if (!Number.isFinite(rescaled)) {
        fail(`rescale_factor ${show(spec.rescaleFactor)} turns pixel value ${byte} into ${rescaled} in float32`);
      }
      if (!spec.doNormalize) continue;
      const normalized = Math.fround(Math.fround(rescaled - mean) / std);
      if (!Number.isFinite(normalized)) {
        const culprit = Number.isFinite(Math.fround(rescaled - mean)) ? 'image_std' : 'image_mean';
        fail(
          `${culprit} ${show(culprit === 'image_mean' ? spec.mean : spec.std)} turns pixel value ${byte} of channel ${channel} into ${normalized} ` +
            `in float32 (mean ${mean}, std ${std} as float32)`,
        );
      }
    }
  }
}

/**
 * `size` is {"shortest_edge": N} in ConvNextImageProcessor configs and a bare N in
 * ConvNextFeatureExtractor ones (which transformers reads as shortest_edge N).
 */
function readShortestEdge(size: unknown, fallback: number, fail: (message: string, hint?: string) => never): number {
  let edge: unknown;
  if (size === undefined || size === null) return fallback;
  if (typeof size === 'number') {
    edge = size;
  } else if (typeof size === 'object' && !Array.isArray(size)) {
    const dict = size as Record<string, unknown>;
    if (dict.shortest_edge === undefined) {
      fail(
        `size ${show(size)} has no shortest_edge`,
        'ConvNextImageProcessor needs size {"shortest_edge": N}; height/width sizes belong to other processors',
      );
    }
    edge = dict.shortest_edge;
  } else {
    fail(`size must be {"shortest_edge": N} or a number, got ${show(size)}`);
  }
  if (typeof edge !== 'number' || !Number.isInteger(edge) || edge <= 0 || edge > MAX_IMAGE_EDGE) {
    fail(`size.shortest_edge must be an integer from 1 to ${MAX_IMAGE_EDGE}, got ${show(edge)}`);
  }
  return edge as number;
}
