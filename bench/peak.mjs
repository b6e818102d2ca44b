// The ceiling the WASM kernels are measured against: this CPU's f32x4 multiply-add rate on one
// thread, with 12 independent accumulators (enough to hide latency on current x86 and ARM cores),
// as plain SIMD128 mul + add and, where the engine has relaxed SIMD, as f32x4.relaxed_madd.
// Prints JSON: { plain, fma } in GFLOP/s (fma is null without relaxed SIMD).
//   node [--experimental-wasm-relaxed-simd] bench/peak.mjs
import wabtInit from 'wabt';

const ACCUMULATORS = 12;
const ITERATIONS = 5e7;

function kernelText(fused) {
  const accumulators = Array.from({ length: ACCUMULATORS }, (_, i) => `$a${i}`);
  const step = accumulators.map((a) => fused
    ? `(local.set ${a} (f32x4.relaxed_madd (local.get ${a}) (local.get $x) (local.get $y)))`
    : `(local.set ${a} (f32x4.add (f32x4.mul (local.get ${a}) (local.get $x)) (local.get $y)))`);
  // The sum keeps every accumulator live, so no step can be optimized away.
  const sum = accumulators.map((a) => `(local.get ${a})`).reduce((x, y) => `(f32x4.add ${x} ${y})`);
  return `(module (func (export "run") (param $n i32) (result f32)
    ${accumulators.map((a) => `(local ${a} v128)`).join(' ')} (local $x v128) (local $y v128)
    (local.set $x (f32x4.splat (f32.const 0.999))) (local.set $y (f32x4.splat (f32.const 0.001)))
    (loop $steps ${step.join(' ')}
      (br_if $steps (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (f32x4.extract_lane 0 ${sum})))`;
}

const wabt = await wabtInit();
async function gflops(fused) {
  const parsed = wabt.parseWat('peak.wat', kernelText(fused), { simd: true, relaxed_simd: fused });
  const { buffer } = parsed.toBinary({});
  parsed.destroy();
  if (!WebAssembly.validate(buffer)) return null;
  const { instance } = await WebAssembly.instantiate(buffer);
  instance.exports.run(1e6); // reach the optimizing tier
  const times = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    instance.exports.run(ITERATIONS);
    times.push(performance.now() - started);
  }
  return (ITERATIONS * ACCUMULATORS * 8) / (Math.min(...times) / 1000) / 1e9; // 4 lanes x (mul + add) per step
}
console.log(JSON.stringify({ plain: await gflops(false), fma: await gflops(true) }));
