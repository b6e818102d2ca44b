/**
 * The activation table (compiler/activations.ts) against the float64 reference, formula by formula,
 * on both targets: every ACT2FN name renders on each (a formula without a partial fails the build),
 * and its WGSL evaluates to transformers' function on Dawn + SwiftShader over [-12, 12], tails
 * included. (WASM's numerics run through whole models in shapes-and-activations.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ACTIVATION_TABLE, activationPartial } from '../compiler/activations.js';
import { renderTemplate } from '../compiler/templates.js';
import { parseModelConfig } from '../compiler/config.js';
import { layoutWeights } from '../compiler/layout.js';
import { planModel } from '../compiler/plan.js';
import { renderWasm, WASM_PACKING } from '../compiler/wasm.js';
import { ACTIVATIONS, type Activation } from '../runtime/types.js';
import { REFERENCE_ACTIVATIONS } from './helpers/reference.js';
import { gpuOn } from './helpers/webgpu-golden.js';

/** x from -12 to 12 in steps of 1/128 (exact in float32), as vec4s. */
const XS = Float32Array.from({ length: 24 * 128 + 4 }, (_, i) => -12 + i / 128);

let gpu: GPU;
let device: GPUDevice;
beforeAll(async () => {
  ({ gpu } = await gpuOn('swiftshader'));
  device = await (await gpu.requestAdapter())!.requestDevice();
});
afterAll(() => device?.destroy());

/** activate() on every value of XS, computed by a WGSL kernel. */
async function evaluateWgsl(activation: Activation): Promise<Float32Array> {
  const { formula, uses } = ACTIVATION_TABLE[activation];
  const code = `${renderTemplate('wgsl/activation.wgsl.hbs', {
    activation, formula, activationPartial: activationPartial(activation, 'wgsl'),
    needsErfc: uses.includes('erf'), needsTanh: uses.includes('tanh'), needsSigmoid: uses.includes('sigmoid'),
  })}
@group(0) @binding(0) var<storage, read_write> values: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < arrayLength(&values)) { values[id.x] = activate(values[id.x]); }
}`;
  const module = device.createShaderModule({ code });
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
  expect(errors.map((m) => m.message), `${activation}: WGSL compiles`).toEqual([]);
  const pipeline = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const storage = device.createBuffer({ size: XS.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  const readback = device.createBuffer({ size: XS.byteLength, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(storage, 0, XS);
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: storage } }] }));
  pass.dispatchWorkgroups(Math.ceil(XS.length / 4 / 64));
  pass.end();
  encoder.copyBufferToBuffer(storage, 0, readback, 0, XS.byteLength);
  device.queue.submit([encoder.finish()]);
  await readback.mapAsync(GPUMapMode.READ);
  const result = new Float32Array(readback.getMappedRange().slice(0));
  readback.unmap();
  storage.destroy();
  readback.destroy();
  return result;
}

describe('activations: one table, both targets', () => {
  test('the table has every ACT2FN name (the type system checks it too) and WASM renders each', async () => {
    expect(Object.keys(ACTIVATION_TABLE).sort()).toEqual([...ACTIVATIONS].sort());
    for (const activation of ACTIVATIONS) {
      const spec = parseModelConfig({ model_type: 'convnext', num_stages: 1, hidden_sizes: [8], depths: [1], hidden_act: activation }, 'config.json');
      const layout = layoutWeights(spec, WASM_PACKING);
      const { sources } = await renderWasm(planModel(spec, layout), layout);
      // assembled by wabt inside renderWasm: the formula's partial is there, inline in the GEMM epilogue
      expect(sources.simd, activation).toContain(`= ${ACTIVATION_TABLE[activation].formula}($c00)`);
    }
  });

  for (const activation of ACTIVATIONS) {
    test(`WGSL ${activation} (${ACTIVATION_TABLE[activation].formula}) matches transformers within 2e-6 x max(1, |y|)`, async () => {
      const y = await evaluateWgsl(activation);
      const reference = REFERENCE_ACTIVATIONS[activation];
      let worst = 0;
      let at = 0;
      for (let i = 0; i < XS.length; i++) {
        const expected = reference(XS[i]);
        const error = Math.abs(y[i] - expected) / Math.max(1, Math.abs(expected));
        if (!(error <= worst)) [worst, at] = [error, XS[i]];
      }
      expect(worst, `${activation}: worst relative error ${worst.toExponential(2)} at x = ${at}`).toBeLessThanOrEqual(2e-6);
    });
  }
});
