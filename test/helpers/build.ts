/** Builds a module into a temporary folder and imports it, as a user's code would. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { buildModule, type CompileOptions, type CompiledModule } from '../../compiler/build.js';
import type { ConvNextModel, LoadOptions } from '../../runtime/model.js';
import type { WebGpuBackendOptions } from '../../runtime/webgpu.js';

/** What load() takes: a WebGPU package's also takes a device or a GPU. */
type AnyLoadOptions = LoadOptions & WebGpuBackendOptions;

export interface BuiltModule {
  dir: string;
  compiled: CompiledModule;
  load(options?: AnyLoadOptions): Promise<ConvNextModel>;
  remove(): void;
}

export async function buildToTemp(options: CompileOptions): Promise<BuiltModule> {
  const dir = mkdtempSync(join(tmpdir(), 'cxc-test-'));
  const compiled = await buildModule({ ...options, outDir: dir, force: true });
  const module = (await import(pathToFileURL(join(dir, 'index.js')).href)) as { load(options?: AnyLoadOptions): Promise<ConvNextModel> };
  return { dir, compiled, load: (o) => module.load(o), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
