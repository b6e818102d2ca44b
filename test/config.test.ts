import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { parseModelConfig } from '../compiler/config.js';
import { CxcError } from '../compiler/errors.js';
import { goldenPath } from './helpers/golden.js';

const parse = (json: unknown, context = {}) => parseModelConfig(json, 'config.json', context);

describe('config.json -> ModelSpec', () => {
  test('a minimal config takes every ConvNextConfig default', () => {
    const spec = parse({ model_type: 'convnext' });
    expect(spec).toMatchObject({
      numChannels: 3, patchSize: 4, numStages: 4, hiddenSizes: [96, 192, 384, 768], depths: [3, 3, 9, 3],
      hiddenAct: 'gelu', layerNormEps: 1e-12, layerScale: true, grn: false, imageSize: 224, head: 'classification',
      numLabels: 2, labels: ['LABEL_0', 'LABEL_1'],
    });
  });

  test('the golden micro config (minimal, hand-written style)', () => {
    const spec = parse(JSON.parse(readFileSync(goldenPath('models', 'micro', 'config.json'), 'utf8')));
    expect(spec.hiddenSizes).toEqual([8, 16, 32, 64]);
    expect(spec.numLabels).toBe(10);
    expect(spec.labels[9]).toBe('LABEL_9');
  });

  test('V2: GRN, never a layer scale', () => {
    const spec = parse({ model_type: 'convnextv2', layer_scale_init_value: 1 });
    expect(spec.grn).toBe(true);
    expect(spec.layerScale).toBe(false);
    expect(spec.architecture).toBe('ConvNextV2ForImageClassification');
  });

  test('layer_scale_init_value <= 0 means no layer scale', () => {
    expect(parse({ layer_scale_init_value: 0 }).layerScale).toBe(false);
    expect(parse({ layer_scale_init_value: -1 }).layerScale).toBe(false);
  });

  test('id2label wins over num_labels; string keys', () => {
    const spec = parse({ num_labels: 5, id2label: { '1': 'dog', '0': 'cat' } });
    expect(spec.labels).toEqual(['cat', 'dog']);
    expect(spec.numLabels).toBe(2);
  });

  test('head from architectures, else from the checkpoint tensor names', () => {
    expect(parse({ architectures: ['ConvNextModel'] }).head).toBe('base');
    expect(parse({ architectures: ['ConvNextBackbone'], out_features: ['stage2', 'stage4'] })).toMatchObject({ head: 'backbone', outFeatures: ['stage2', 'stage4'] });
    expect(parse({}, { tensorNames: ['embeddings.patch_embeddings.weight', 'hidden_states_norms.stage4.weight'] }).head).toBe('backbone');
    expect(parse({}, { tensorNames: ['convnext.embeddings.patch_embeddings.weight'] }).head).toBe('base');
    expect(parse({ out_indices: [1, -1] }).outFeatures).toEqual(['stage1', 'stage4']);
  });

  const rejections: Array<[string, unknown, RegExp]> = [
    ['not an object', [1, 2], /expected a JSON object/],
    ['hidden_sizes length disagrees with num_stages', { num_stages: 3 }, /hidden_sizes.*3 entries|hidden_sizes.*num_stages is 3/],
    ['depths length disagrees', { depths: [1, 1, 1] }, /"depths".*3 entries but num_stages is 4/],
    ['non-positive hidden size', { hidden_sizes: [8, 0, 32, 64] }, /"hidden_sizes\[1\]" is 0/],
    ['negative depth', { depths: [1, -1, 1, 1] }, /"depths\[1\]" is -1/],
    ['non-integer patch size', { patch_size: 2.5 }, /"patch_size" is 2.5: expected an integer/],
    ['string where a number belongs', { num_channels: '3' }, /"num_channels" is "3"/],
    ['NaN eps', { layer_norm_eps: NaN }, /"layer_norm_eps" is NaN/],
    ['huge channel count (terabytes of weights)', { hidden_sizes: [8, 16, 32, 1e9] }, /hidden_sizes\[3\]/],
    ['unknown activation', { hidden_act: 'gelu_fancy' }, /"hidden_act" is "gelu_fancy": unknown activation/],
    ['prelu needs weights cxc does not read', { hidden_act: 'prelu' }, /"hidden_act" is "prelu"/],
    ['unknown model_type', { model_type: 'vit' }, /"model_type" is "vit"/],
    ['unknown architecture', { architectures: ['ConvNextForMaskedImageModeling'] }, /"architectures" is "ConvNextForMaskedImageModeling"/],
    ['id2label with a gap', { id2label: { '0': 'a', '2': 'b' } }, /id2label\["2"\]/],
    ['id2label value not a string', { id2label: { '0': 3 } }, /id2label\["0"\].*expected a string/],
    ['unknown out_features stage', { architectures: ['ConvNextBackbone'], out_features: ['stage9'] }, /"out_features" is "stage9"/],
    ['out_indices disagreeing with out_features', { architectures: ['ConvNextBackbone'], out_features: ['stage1'], out_indices: [2] }, /out_indices/],
  ];
  test.each(rejections)('rejects %s, naming the field and value', (_, json, message) => {
    let error: unknown;
    try {
      parse(json);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(CxcError);
    expect((error as Error).message).toMatch(/^config\.json: /);
    expect((error as Error).message).toMatch(message);
  });
});
