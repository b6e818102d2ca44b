/**
 * WebGPU in Node for the CLI and tests: Dawn's bindings (npm `webgpu`). On a machine without a
 * GPU, Dawn runs on a CPU Vulkan driver: SwiftShader (Debian's chromium ships it; the default
 * here) or Mesa's lavapipe (mesa-vulkan-drivers; has shader-f16). Vulkan finds a driver through
 * VK_ICD_FILENAMES, which the loader reads at every adapter request: one driver per process.
 *
 * Lifetime: the object `create([])` returns must stay reachable while any device made from it
 * lives (Dawn frees its native instance when it is collected). The WebGPU backend holds it for the
 * life of its device (runtime/webgpu.ts); callers that keep their own devices must hold it too.
 */
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type VulkanDriver = 'swiftshader' | 'lavapipe';

const SWIFTSHADER_DIRS = ['/usr/lib/chromium', '/usr/lib/chromium-browser', '/usr/lib64/chromium'];
const LAVAPIPE_ICDS = ['/usr/share/vulkan/icd.d/lvp_icd.json', '/usr/share/vulkan/icd.d/lvp_icd.x86_64.json', '/etc/vulkan/icd.d/lvp_icd.json'];

const INSTALL: Record<VulkanDriver, string> = {
  swiftshader: 'apt-get install chromium libvulkan1',
  lavapipe: 'add the bookworm-backports apt source, then apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1',
};

/** The SwiftShader ICD file of an installed chromium, if any. */
export function swiftShaderIcd(): string | undefined {
  for (const dir of SWIFTSHADER_DIRS) {
    if (!existsSync(dir)) continue;
    const file = readdirSync(dir).find((name) => /swiftshader.*icd\.json$/i.test(name));
    if (file) return `${dir}/${file}`;
  }
  return undefined;
}

/** The lavapipe (Mesa's CPU Vulkan driver) ICD file, if installed. */
export function lavapipeIcd(): string | undefined {
  return LAVAPIPE_ICDS.find((file) => existsSync(file));
}

/** The ICD file of a CPU Vulkan driver, or undefined when it is not installed. */
export function vulkanIcd(driver: VulkanDriver): string | undefined {
  return driver === 'lavapipe' ? lavapipeIcd() : swiftShaderIcd();
}

/** Matches the adapter description of each driver (to prove which one a test got). */
export const DRIVER_ADAPTER: Record<VulkanDriver, RegExp> = { swiftshader: /swiftshader/i, lavapipe: /llvmpipe|lavapipe/i };

/** The ICD file of a driver; throws, naming the packages to install, when it is missing. */
export function requireVulkanIcd(driver: VulkanDriver): string {
  const icd = vulkanIcd(driver);
  if (!icd) throw new Error(`cxc: the ${driver} Vulkan driver is not installed (${INSTALL[driver]})`);
  return icd;
}

/** Points this process's Vulkan loader at one CPU driver (until changed again). */
export function useVulkanDriver(driver: VulkanDriver): string {
  const icd = requireVulkanIcd(driver);
  process.env.VK_ICD_FILENAMES = icd;
  return icd;
}

/**
 * A GPU entry point for Node. With `driver`, Vulkan uses that CPU driver; without, the configured
 * one (VK_ICD_FILENAMES / VK_DRIVER_FILES), else SwiftShader when installed, else the system's.
 */
export async function nodeGpu(options: { driver?: VulkanDriver } = {}): Promise<GPU> {
  if (options.driver) useVulkanDriver(options.driver);
  else if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES) {
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
