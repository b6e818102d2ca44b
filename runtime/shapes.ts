/** Spatial sizes at run time: the only shapes not baked in at compile time. */
import type { ModelManifest } from './types.js';

export interface Size { height: number; width: number }

/** Size of each level: the stem's patch conv, then a 2x2 stride-2 conv per stage; PyTorch floors odd sizes. */
export function levelSizes(manifest: Pick<ModelManifest, 'patchSize' | 'hiddenSizes'>, height: number, width: number): Size[] {
  const sizes: Size[] = [{ height: Math.floor(height / manifest.patchSize), width: Math.floor(width / manifest.patchSize) }];
  for (let level = 1; level < manifest.hiddenSizes.length; level++) {
    const previous = sizes[level - 1];
    sizes.push({ height: Math.floor(previous.height / 2), width: Math.floor(previous.width / 2) });
  }
  return sizes;
}
