/**
 * WebGPU in Node for the CLI and tests: Dawn's bindings (npm `webgpu`). On a machine
 * without a GPU, Dawn can run on SwiftShader, the CPU Vulkan driver Debian's chromium
 * ships; Vulkan finds it through VK_ICD_FILENAMES, which must be set before Dawn loads.
 */
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ICD_CANDIDATES = ['/usr/lib/chromium', '/usr/lib/chromium-browser', '/usr/lib64/chromium'];

/** The SwiftShader ICD file of an installed chromium, if any. */
export function swiftShaderIcd(): string | undefined {
  for (const dir of ICD_CANDIDATES) {
    if (!existsSync(dir)) continue;
    const file = readdirSync(dir).find((name) => /swiftshader.*icd\.json$/i.test(name));
    if (file) return `${dir}/${file}`;
  }
  return undefined;
}

/** A GPU entry point for Node; falls back to SwiftShader when no Vulkan driver is configured. */
export async function nodeGpu(): Promise<GPU> {
  if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES) {
    const icd = swiftShaderIcd();
    if (icd) process.env.VK_ICD_FILENAMES = icd;
  }
  // The Vulkan loader warns without a runtime dir; a private one keeps stderr clean.
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = mkdtempSync(join(tmpdir(), 'cxc-xdg-'));
  let dawn: { create(flags: string[]): GPU; globals: Record<string, unknown> };
  try {
    dawn = (await import('webgpu')) as unknown as typeof dawn;
  } catch (error) {
    throw new Error(`cxc: WebGPU in Node needs the npm package "webgpu" (Dawn): ${(error as Error).message}`, { cause: error });
  }
  Object.assign(globalThis, dawn.globals);
  return dawn.create([]);
}
