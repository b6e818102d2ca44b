// The benchmark input shared by every engine runner: the golden pixel_values repeated to the
// batch size, and a check that an engine's logits match the golden ones (1e-4 * max(1, max|g|))
// before anyone is timed on wrong work.
import { readFileSync } from 'node:fs';

export async function goldenInput(goldenPath, batch) {
  const { readSafetensors } = await import('../dist/compiler/safetensors.js');
  const golden = readSafetensors(new Uint8Array(readFileSync(goldenPath)), goldenPath);
  const pixels = golden.get('pixel_values');
  const goldenLogits = golden.get('logits').data;
  const [goldenBatch, channels, height, width] = pixels.shape;
  const image = channels * height * width;
  const input = new Float32Array(batch * image);
  for (let b = 0; b < batch; b++) input.set(pixels.data.subarray((b % goldenBatch) * image, (b % goldenBatch + 1) * image), b * image);
  const labels = goldenLogits.length / goldenBatch;
  /** max |logits - golden|; throws past `bar` x max(1, max|golden|) (float32: 1e-4; f16 modes declare their own). */
  function checkLogits(name, logits, bar = 1e-4) {
    let maxError = 0;
    let maxGolden = 0;
    for (let i = 0; i < batch * labels; i++) {
      const g = goldenLogits[(Math.floor(i / labels) % goldenBatch) * labels + (i % labels)];
      maxError = Math.max(maxError, Math.abs(logits[i] - g));
      maxGolden = Math.max(maxGolden, Math.abs(g));
    }
    if (!(maxError <= bar * Math.max(1, maxGolden))) throw new Error(`${name}: logits off the golden by ${maxError}; refusing to time wrong work`);
    return maxError;
  }
  return { input, channels, height, width, checkLogits };
}
