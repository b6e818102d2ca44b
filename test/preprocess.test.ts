/**
 * Preprocessing against transformers' ConvNextImageProcessor (PIL path, Pillow 9.4):
 * the golden images through every golden processor must give identical uint8 pixels, and
 * the default processor's pixel_values within 1e-6. Smaller fixtures, produced once with
 * Pillow 9.4.0 and written out below, cover the other filters, transformers' zero padding
 * and PIL's conversion of every PNG colour type and bit depth to RGB.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import { preprocess, resizeAndCrop, resizeImage, type ImageInput, type PreprocessSpec } from '../runtime/preprocess.js';
import { defaultProcessorSpec, parseProcessorConfig } from '../compiler/processor.js';
import { decodeImageFile } from '../compiler/image.js';
import { readSafetensors } from '../compiler/safetensors.js';
import { CxcError } from '../compiler/errors.js';

const GOLDEN_DIR = fileURLToPath(new URL('../../shared/golden/', import.meta.url));
const PREPROCESS_DIR = join(GOLDEN_DIR, 'preprocess');

interface PreprocessIndex {
  images: Record<string, { height: number; width: number }>;
}
const index = JSON.parse(readFileSync(join(PREPROCESS_DIR, 'preprocess.json'), 'utf8')) as PreprocessIndex;
const processors = JSON.parse(readFileSync(join(PREPROCESS_DIR, 'processors.json'), 'utf8')) as Record<string, unknown>;
const imageNames = Object.keys(index.images);
const processorNames = Object.keys(processors);

function loadGolden(imageName: string) {
  const path = join(PREPROCESS_DIR, `${imageName}.safetensors`);
  return readSafetensors(new Uint8Array(readFileSync(path)), path);
}

function goldenTensor(tensors: ReturnType<typeof loadGolden>, name: string) {
  const tensor = tensors.get(name);
  if (!tensor) throw new Error(`golden tensor ${name} is missing`);
  return tensor;
}

/** How many bytes differ, and where the first difference is, for a readable failure. */
function byteDifferences(actual: Uint8Array, expected: Uint8Array): { count: number; first: number } {
  let count = 0;
  let first = -1;
  const length = Math.max(actual.length, expected.length);
  for (let i = 0; i < length; i++) {
    if (actual[i] !== expected[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  return { count, first };
}

function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  const { count, first } = byteDifferences(actual, expected);
  const detail =
    count === 0
      ? ''
      : `${count} of ${expected.length} bytes differ (lengths ${actual.length} vs ${expected.length}; ` +
        `first at byte ${first}: got ${actual[first]}, expected ${expected[first]})`;
  expect(detail, what).toBe('');
}

function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

function specWith(overrides: Partial<PreprocessSpec>): PreprocessSpec {
  return { ...defaultProcessorSpec(), ...overrides };
}

/** A deterministic 13x11 RGB test card, the same one the Pillow fixtures were made from. */
function testCard(width = 13, height = 11): ImageInput {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = (x * 37 + y * 101 + c * 53 + x * y * 7) % 256;
    }
  }
  return { data, width, height, channels: 3 };
}

/** The top-left `width` x `height` corner of an RGB image. */
function corner(image: ImageInput, width: number, height: number): ImageInput {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    data.set(image.data.subarray(y * image.width * 3, (y * image.width + width) * 3), y * width * 3);
  }
  return { data, width, height, channels: 3 };
}

// ---------------------------------------------------------------------------------------
// The golden images through every golden processor
// ---------------------------------------------------------------------------------------

describe('golden preprocessing (transformers ConvNextImageProcessor, Pillow 9.4)', () => {
  it('covers every golden image and processor', () => {
    expect(imageNames.length).toBeGreaterThanOrEqual(5);
    expect(processorNames).toContain('p224');
  });

  for (const imageName of imageNames) {
    describe(imageName, () => {
      const tensors = loadGolden(imageName);
      const golden = goldenTensor(tensors, 'image');
      const [height, width, channels] = golden.shape;
      const image: ImageInput = { data: golden.data as Uint8Array, width, height, channels: channels as 3 };

      it('golden image has the size preprocess.json gives', () => {
        expect(golden.dtype).toBe('U8');
        expect([height, width, channels]).toEqual([index.images[imageName].height, index.images[imageName].width, 3]);
      });

      it('decodeImageFile(png) gives the golden decoded image', async () => {
        const decoded = await decodeImageFile(join(PREPROCESS_DIR, `${imageName}.png`));
        expect([decoded.height, decoded.width, decoded.channels]).toEqual([height, width, 3]);
        expectSameBytes(Uint8Array.from(decoded.data), golden.data as Uint8Array, `${imageName}.png decoded`);
      });

      for (const processorName of processorNames) {
        it(`${processorName}: resized and cropped pixels are identical`, () => {
          const spec = parseProcessorConfig(processors[processorName], `processors.json#${processorName}`);
          const expected = goldenTensor(tensors, `${processorName}.pixels_u8`);
          const result = resizeAndCrop(image, spec);
          expect([result.height, result.width, 3]).toEqual(expected.shape);
          expectSameBytes(result.pixels, expected.data as Uint8Array, `${imageName} ${processorName}.pixels_u8`);
        });

        it(`${processorName}: pixel_values match rescale and normalize`, () => {
          const spec = parseProcessorConfig(processors[processorName], `processors.json#${processorName}`);
          const { pixelValues, height: h, width: w } = preprocess(image, spec);
          const goldenName = `${processorName}.pixel_values`;
          const goldenValues = tensors.get(goldenName);
          let maxError = 0;
          if (goldenValues) {
            expect(goldenValues.shape.slice(-3)).toEqual([3, h, w]);
            const expected = goldenValues.data as Float32Array;
            expect(pixelValues.length).toBe(expected.length);
            for (let i = 0; i < expected.length; i++) maxError = Math.max(maxError, Math.abs(pixelValues[i] - expected[i]));
          } else {
            // The other processors' pixel_values follow from their golden pixels_u8; check
            // against that arithmetic done in float64.
            const pixels = goldenTensor(tensors, `${processorName}.pixels_u8`).data as Uint8Array;
            for (let c = 0; c < 3; c++) {
              for (let i = 0; i < h * w; i++) {
                const reference = (pixels[i * 3 + c] * spec.rescaleFactor - spec.mean[c]) / spec.std[c];
                maxError = Math.max(maxError, Math.abs(pixelValues[c * h * w + i] - reference));
              }
            }
          }
          expect(maxError, `${imageName} ${processorName} max |error|`).toBeLessThanOrEqual(1e-6);
        });
      }
    });
  }
});

// ---------------------------------------------------------------------------------------
// Pillow's other filters, on a small test card (fixtures written by Pillow 9.4.0)
// ---------------------------------------------------------------------------------------

/** Image.fromarray(testCard).resize((w, h), filter, reducing_gap=None), as hex, keyed `WxH/filter`. */
const PILLOW_RESIZE_FIXTURES: Record<string, string> = {
  '5x4/0': '91c6fbe91e536da2d7f1265b497eb3d50a3f578cc11a4f84dd12475f94c9ade2174b80b5386da2255a8fc3f82df1265bb9ee23e51a4f11467bd90e43',
  '5x4/1': '748e91859088878d6e7d8a878b957e95798e756a638a877d968584808b74878a89897f73868579758e8c699085998098759b67897386699c7289729b',
  '5x4/2': '7a8e93808a82888976828c8284927e8c788a7c736c86867c8e8481838d74898a8386817285897c798a8a708d85967f9478956c8879846d9477847495',
  '5x4/3': '778e93828e86888a707e8b8787957d8f788d786e6789877e928482828d72898c8587807187887c788c8c6c8e85997e987699678974866a9973867399',
  '5x4/4': '758d897f8a948a856586909b829a7a807c947857628c888492727c7b94748e987872a75c808a948e8378727c869c7b946ba055906f885f9474848098',
  '5x4/5': '77909a8183888b8374888b847e957f88748f79706881868894797885916e85937a818b6b868f827b868a738b829e799c729b628f6f8c689672896d96',
  '9x8/0': '00356a4a7fb46fa4d9b9ee23de134803386d4d82b772a7dcbcf126caff3430659a6398cdc9fe33fc31662f649995caffc8fd322e63982f6499a3d80ddd12475186bb8bc0f5c5fa2f396ea373a8dde71c5194c9fe164b80578cc1d90e431a4f845b90c5dd12471e5388a0d50a5e93c8fc31664b80b5e91e53386da287bcf1255a8f74a9de12477cc3f82d6fa4d9c5fa2f71a6dbc7fc311d5287c9fe331f5489cb0035285d92e2174c3f74a9f92e63568bc0b3e81d6da2d7caff3484b9eef2275cc8fd3233689d093e7374a9dedf1449b5ea1f20558af62b60',
  '9x8/1': '1556a765a1948f7fbb79b1a0985d5b457d4e76669a549194a1e144beba8fa3938b846a676dac53aa7f8b78af67b5a7a59781636462c16e899b8c825d7f68627388668e9ebab496667562ac93c488cd642bb760ab5d5899726f767d655d716e75879364aa745f46768e6fa9768f8d75b59285885f737d77628e9382ab4d955975a896d37b406c7765bc5f7b729e82bf6084767589be7a4e809f98b26e50a19ca05b827389c5b55299689e55987e7daf679164ac464b8f9d9b92725d6cb3c753978fb77f76b1523a87718c59aa9e627966b34b6174b9c65386',
  '9x8/2': '2e639862929a8689b280b58e986266457a5d71759568998a97cc53acb18d97908388767773a8549f808477ac6aa997998f88716e73a8738799878e688c5f646485718f9ba6b0996582779b8dab83b46c4fac6ea36a5f8f766b7a876d5b71776e8a87719973735b8883709f70928883a98680856a748d736183897ca25d926a7a9a85ba7f4d7c7d78ad6b7b7c9984ab67787b858caf755c7e9785b17b6196958f5b827984b9a762907898649481759c6d886ea358578c8e8d947d6b76abb9619696ac7b6ea361508569896a9f8e677670a55d687da9b25b90',
  '9x8/3': '205a9d6098988b86bb7fb6969c5b5f417857726d995f98909dd849b7b78e9c9185876f7271ab50a67d8976b068b29ca092856a696ab56d879c898f618c5b6062867091a2b5b898647a6da691ba85c3643eb568a65f5994736e798669596e716f868c6da5716a4e808870a5718f897eb48d818463738a7360858e80aa54955f74a38fca7c44757b71b8607677a085b9607979848fbd73527d9d92bb7455989a9b567f7388c1af5793709e5c997f77a5678e6aaa504d89969695776373b1c2589694b67c6fa95b45866a8b62a79562786db0506179b3be558a',
  '9x8/4': '00356a386da26fa4d9a7dc91de1348164b804d82b785ba6fbcf12698cd829f9489a65b906ea358b56a9f7cb166c378ad8b80755287bc2f649986bb70dd124734699e8bc0f5e2974c396ea390c57ae71c51c77cb16e639894497e7b706562974c897e73af6499568b807db2675e93c8d58a3f4b80b5c2772c386da2af6499255a8f9cd18612477cc3f82d4479aec5fa2f467bb0c7fc31487db2c9fe334a7fb4cb00355b90c5ac61967cb1668d82779e53886fa4593f74a990857a6196cbf2275c93c87d33689d54893e74a9de954a7fb5ea1f568bc0f62b60',
  '9x8/5': '1c518653889d8391c492c788b73f5e30656a6574a26fa493a6db3faabc828e917d916d8879ae51b26e8d72a76eb38fad8f92676476ab517d9f8bb256b0345a49788e90afcfcb9f55646fa18bb792ca524aaf80b55e578c776f8897694e547369848e73b2576d4f82857cb05b8c8891bf7d767867819e705569887ea66196536e9f8dc28940747f90c54f6481b09cd04e5e7ea3a6d8554c7ba2a8db5e497e9daa376a6a85baaa5a8e73a2689b7f7397648c6fa4574c819f94a4796984b9c751869ec36f598e744d825b8581b696567689be445479acc65085',
  '17x3/0': '659acf91c6fb91c6fbbdf227e91e53154a7f154a7f4176ab6da2d799ce03c5fa2fc5fa2ff1265b1d5287497eb3497eb375aadff92e634176ab4176ab89bef3d1063b194e83194e836196cba9de13f1265b396ea3396ea381b6ebc9fe3311467b11467b598ec38dc2f7f1265bf1265b558abfb9ee231d52871d528781b6ebe51a4f497eb3ade217ade21711467b75aadfd90e43d90e433d72a7',
  '17x3/1': '5e95888a74aa858a8d6da363a15d956f768161b3629aa276ad5f9e6e816271a8529d8c87936ca86c959c83976a9d8b658b987f9a979a8d817b80747a8e739896637d5c88407c725fa565906ea571879a929b757e8f687580839b79a48a70ae7e70867575686d918a8e83839a987896a78b8178b16e5fa740727c6e936eaa998588897e726b7c7861947a6cab7369a38c7987998a679a8a5e99',
  '17x3/2': '669b8e85819f86878c78986d9d64926f8279729d6c929b76a6669b728c677c9965948e809570a1719594859476938e6c88917d9b8c95897e83837a858b7b9092657b69815479796696728677a0718d8a868f787e87747d80869979a68872a07f728978786f728c8e978d8097967c8f9b887e7aaa6e689d4e77826e90709b96828b85827a7586756a90756ba0776ba08e7c8693896d94895f94',
  '17x3/3': '619789887ba686888f71a065a15e956b7e7c6aa86895a473ac639c6c8a5f769f5d978f84956ea86e9a9788956e998c6589947f9b919a8a7f7d82777e8b779494647c6185487a75619f678c70a2718b919096767e8e6d7480819877a58a70a780718b75766b6c8f8d9389809b967a94a2897f78af6d63a14473806d916ea598848a887f757082756492796ca7756aa48c7b85978a67988b5e98',
  '17x3/4': '588d82877cb1877cb177ac61a65b90568b80568b8085ba6fb56a9f64994e94897e94897e8378ad73a89da2974ca2974c92877ca483b896765696765689699e7c5b906ea32e6ea32eb641765489689c7bb08e6e4e8e6e4e81619674a988669b7b669b7b598e6e9b90857b70a57b70a59c91867cb1665d92475d92477d72a79e93887e73685f94895f94897fb46960958a8075aa8075aaa1568b',
  '17x3/5': '699e868f80a68d879875a666a35f936288736d9f6d8bb16eb0669b6592567b9b68909a7e9a73a86fa18c8f8e6f97876a7f908ba285a087797884787c897d9b915d7b60884a7877629e5d896c9e6a977f9593747b8c6f6c81799775a8876c9f7f69937970776f898b9c9078a09677979d818179ad6963984874856d8f70a29b7b8b84836e708b6f649372689d7b71a68e7f79928666968a689d',
};

/** testCard's 9x7 corner, shortest_edge 8, crop_pct 1.25: resized to 7x6, zero-padded to 8x8. */
const PADDED_CROP_FIXTURE =
  '0000000000000000000000000000000000000000000000000000000f46854380a07991b984bcd9bca04367345c2e6e7700000096b5b5a7b794b46e5f4e6a5d76929f87976a9ce04900000099a66194787c8072806b9947b3b780a088859370a00000007088d081645c776b72747f487b45925fb0a8c9a133000000ce52885e76b695548d5562667e8f78ac704f68787d000000799c94c99a4a92589b89a130a5486d709ebebb3573000000000000000000000000000000000000000000000000';

/**
 * testCard's 4x2 corner to 7x7 with NEAREST. Pillow steps its source position by repeated
 * addition (4/7 each time), which picks columns 0 0 1 1 2 3 3 and rows 0 0 0 0 1 1 1, where
 * computing (x + 0.5) * scale afresh would pick column 2 and row 1 one step earlier.
 */
const NEAREST_ACCUMULATION_FIXTURE =
  '00356a00356a255a8f255a8f4a7fb46fa4d96fa4d900356a00356a255a8f255a8f4a7fb46fa4d96fa4d900356a00356a255a8f255a8f' +
  '4a7fb46fa4d96fa4d900356a00356a255a8f255a8f4a7fb46fa4d96fa4d9659acf659acf91c6fb91c6fbbdf227e91e53e91e53659acf' +
  '659acf91c6fb91c6fbbdf227e91e53e91e53659acf659acf91c6fb91c6fbbdf227e91e53e91e53';

const FILTER_NAMES = ['nearest', 'lanczos', 'bilinear', 'bicubic', 'box', 'hamming'];

describe('Pillow resampling filters', () => {
  for (const [key, hex] of Object.entries(PILLOW_RESIZE_FIXTURES)) {
    const [size, filter] = key.split('/');
    const [width, height] = size.split('x').map(Number);
    it(`13x11 -> ${size} with ${FILTER_NAMES[Number(filter)]} matches Pillow`, () => {
      const result = resizeImage(testCard(), width, height, Number(filter));
      expect([result.width, result.height]).toEqual([width, height]);
      expectSameBytes(result.pixels, fromHex(hex), key);
    });
  }

  it('NEAREST accumulates its source position as Pillow does', () => {
    const result = resizeImage(corner(testCard(), 4, 2), 7, 7, 0);
    expectSameBytes(result.pixels, fromHex(NEAREST_ACCUMULATION_FIXTURE), '4x2 -> 7x7 nearest');
  });

  it('an unchanged size is a copy, for every filter', () => {
    const card = testCard();
    for (let filter = 0; filter < 6; filter++) {
      expectSameBytes(resizeImage(card, 13, 11, filter).pixels, card.data as Uint8Array, `filter ${filter}`);
    }
  });

  it('pads with zeros like transformers center_crop when the resized image is smaller than the crop', () => {
    const spec = specWith({ shortestEdge: 8, cropPct: 1.25 });
    const result = resizeAndCrop(corner(testCard(), 9, 7), spec);
    expect([result.width, result.height]).toEqual([8, 8]);
    expectSameBytes(result.pixels, fromHex(PADDED_CROP_FIXTURE), 'padded crop');
  });

  it('warps to a square without cropping from shortest_edge 384 up', () => {
    const result = resizeAndCrop(testCard(), specWith({ shortestEdge: 384 }));
    expect([result.width, result.height]).toEqual([384, 384]);
  });

  it('resizes the short side to int(shortest_edge / crop_pct) and crops the center', () => {
    // 13x11 with shortest_edge 10, crop_pct 0.95: short side int(10.526) = 10, long int(10*13/11) = 11.
    const card = testCard();
    const spec = specWith({ shortestEdge: 10, cropPct: 0.95, resample: 0 });
    const result = resizeAndCrop(card, spec);
    expect([result.width, result.height]).toEqual([10, 10]);
  });

  it('drops alpha from RGBA input, as convert("RGB") does', () => {
    const card = testCard();
    const rgba = new Uint8Array(13 * 11 * 4);
    for (let i = 0; i < 13 * 11; i++) {
      rgba.set(card.data.subarray(i * 3, i * 3 + 3), i * 4);
      rgba[i * 4 + 3] = (i * 91) % 256;
    }
    const spec = specWith({ shortestEdge: 8 });
    const fromRgba = preprocess({ data: new Uint8ClampedArray(rgba), width: 13, height: 11, channels: 4 }, spec);
    const fromRgb = preprocess(card, spec);
    expect(Array.from(fromRgba.pixelValues)).toEqual(Array.from(fromRgb.pixelValues));
  });

  it('doResize false keeps the image; rescale and normalize are float32 steps, laid out CHW', () => {
    const data = Uint8Array.from([0, 128, 255, 10, 20, 30]);
    const spec = specWith({ doResize: false, mean: [0.5, 0.25, 0.125], std: [0.5, 0.2, 0.1] });
    const { pixelValues, width, height } = preprocess({ data, width: 2, height: 1, channels: 3 }, spec);
    expect([width, height]).toEqual([2, 1]);
    const expected = [0, 10, 128, 20, 255, 30].map((byte, i) => {
      const c = Math.floor(i / 2);
      const scaled = Math.fround(byte * (1 / 255));
      return Math.fround(Math.fround(scaled - Math.fround(spec.mean[c])) / Math.fround(spec.std[c]));
    });
    expect(Array.from(pixelValues)).toEqual(expected);

    const raw = preprocess({ data, width: 2, height: 1, channels: 3 }, specWith({ doResize: false, doRescale: false, doNormalize: false }));
    expect(Array.from(raw.pixelValues)).toEqual([0, 10, 128, 20, 255, 30]);
  });

  it('rejects malformed images with a clear Error', () => {
    const spec = defaultProcessorSpec();
    const bad: Array<[unknown, RegExp]> = [
      [{ data: new Uint8Array(12), width: 0, height: 4, channels: 3 }, /width must be a positive integer, got 0/],
      [{ data: new Uint8Array(12), width: 2.5, height: 4, channels: 3 }, /width must be a positive integer, got 2.5/],
      [{ data: new Uint8Array(12), width: 4, height: -1, channels: 3 }, /height must be a positive integer, got -1/],
      [{ data: new Uint8Array(8), width: 2, height: 2, channels: 2 }, /channels must be 3 \(RGB\) or 4 \(RGBA\), got 2/],
      [{ data: new Uint8Array(11), width: 2, height: 2, channels: 3 }, /11 bytes, but 2x2x3 needs 12/],
      [{ data: [1, 2, 3], width: 1, height: 1, channels: 3 }, /Uint8Array/],
    ];
    for (const [image, message] of bad) {
      expect(() => preprocess(image as ImageInput, spec)).toThrow(message);
    }
  });
});

// ---------------------------------------------------------------------------------------
// preprocessor_config.json
// ---------------------------------------------------------------------------------------

describe('parseProcessorConfig', () => {
  const newStyle = processors.p224 as Record<string, unknown>;

  it('reads the ConvNextImageProcessor form', () => {
    expect(parseProcessorConfig(newStyle, 'p224.json')).toEqual({
      doResize: true,
      shortestEdge: 224,
      cropPct: 0.875,
      resample: 3,
      doRescale: true,
      rescaleFactor: 0.00392156862745098,
      doNormalize: true,
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });
  });

  it('reads the old ConvNextFeatureExtractor form ("size": 64, always rescaled by 1/255)', () => {
    const path = join(GOLDEN_DIR, 'models/micro/preprocessor_config.json');
    const json = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
    expect(json.size).toBe(64);
    expect(json.rescale_factor).toBeUndefined();
    const spec = parseProcessorConfig(json, path);
    expect(spec.shortestEdge).toBe(64);
    expect(spec.doRescale).toBe(true);
    expect(spec.rescaleFactor).toBe(1 / 255);
    expect(spec.cropPct).toBe(0.875);
    expect(spec.resample).toBe(3);
    expect(spec.mean).toEqual([0.485, 0.456, 0.406]);
  });

  it("fills missing fields as ConvNextImageProcessor's constructor does", () => {
    expect(parseProcessorConfig({}, 'empty.json')).toEqual({
      ...defaultProcessorSpec(),
      shortestEdge: 384,
      resample: 2,
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
    });
    expect(parseProcessorConfig({ crop_pct: null }, 'null.json').cropPct).toBe(224 / 256);
    expect(defaultProcessorSpec()).toEqual({
      doResize: true,
      shortestEdge: 224,
      cropPct: 224 / 256,
      resample: 3,
      doRescale: true,
      rescaleFactor: 1 / 255,
      doNormalize: true,
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });
  });

  /** The whole config for a non-object; otherwise the golden p224 config with these fields changed. */
  const rejections: Array<[string, unknown, RegExp]> = [
    ['a non-object config', [], /must be a JSON object, got \[\]/],
    ['a null config', null, /must be a JSON object, got null/],
    ['size 0', { size: { shortest_edge: 0 } }, /size\.shortest_edge .* got 0/],
    ['a negative size', { size: -5 }, /size\.shortest_edge .* got -5/],
    ['a fractional size', { size: { shortest_edge: 223.5 } }, /size\.shortest_edge .* got 223\.5/],
    ['an absurd size', { size: { shortest_edge: 100000 } }, /size\.shortest_edge .* 8192, got 100000/],
    ['a string size', { size: { shortest_edge: '224' } }, /size\.shortest_edge .* got "224"/],
    ['a height/width size', { size: { height: 224, width: 224 } }, /size .*"height":224.* has no shortest_edge/],
    ['a list size', { size: [224, 224] }, /size must be .* got \[224,224\]/],
    ['crop_pct 0', { crop_pct: 0 }, /crop_pct must be greater than 0, got 0/],
    ['a negative crop_pct', { crop_pct: -0.5 }, /crop_pct must be greater than 0, got -0\.5/],
    ['a string crop_pct', { crop_pct: '0.875' }, /crop_pct must be a finite number, got "0\.875"/],
    ['a NaN crop_pct', { crop_pct: NaN }, /crop_pct must be a finite number, got NaN/],
    ['a crop_pct that resizes absurdly', { crop_pct: 0.001 }, /crop_pct 0\.001 .* 224000 pixels/],
    ['an unknown resample', { resample: 7 }, /resample 7 is not a known PIL resampling filter/],
    ['a fractional resample', { resample: 2.5 }, /resample 2\.5 is not a known/],
    ['a string resample', { resample: 'bicubic' }, /resample must be a finite number, got "bicubic"/],
    ['std containing 0', { image_std: [0.229, 0, 0.225] }, /image_std \[0\.229,0,0\.225\] contains 0/],
    ['std of length 2', { image_std: [0.5, 0.5] }, /image_std must be a list of 3 numbers .* got \[0\.5,0\.5\]/],
    ['mean of length 4', { image_mean: [0.5, 0.5, 0.5, 0.5] }, /image_mean must be a list of 3 numbers/],
    ['mean with a string', { image_mean: [0.5, 'x', 0.5] }, /image_mean must be a list of 3 finite numbers, got \[0\.5,"x",0\.5\]/],
    ['a non-boolean do_resize', { do_resize: 'yes' }, /do_resize must be true or false, got "yes"/],
    ['a non-boolean do_normalize', { do_normalize: 1 }, /do_normalize must be true or false, got 1/],
    ['a zero rescale_factor', { rescale_factor: 0 }, /rescale_factor must be greater than 0, got 0/],
    ['an infinite rescale_factor', { rescale_factor: Infinity }, /rescale_factor must be a finite number, got Infinity/],
    ['another processor type', { image_processor_type: 'ViTImageProcessor' }, /image_processor_type "ViTImageProcessor" is not a ConvNeXt processor/],
  ];
  for (const [what, json, message] of rejections) {
    it(`rejects ${what} with a CxcError naming the field and value`, () => {
      const config = json !== null && typeof json === 'object' && !Array.isArray(json) ? { ...newStyle, ...json } : json;
      let caught: unknown;
      try {
        parseProcessorConfig(config, 'bad/preprocessor_config.json');
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(CxcError);
      expect((caught as CxcError).file).toBe('bad/preprocessor_config.json');
      expect((caught as CxcError).message).toMatch(message);
    });
  }
});

// ---------------------------------------------------------------------------------------
// Image files
// ---------------------------------------------------------------------------------------

/** PIL 9.4 Image.open(png).convert('RGB') of the 5x3 PNGs built by pngFixture, keyed `colorType/bitDepth`. */
const PIL_PNG_RGB: Record<string, string> = {
  '0/1': 'ffffff000000ffffff000000ffffff000000ffffff000000ffffff000000ffffff000000ffffff000000ffffff',
  '0/2': '555555000000ffffffaaaaaa555555000000ffffffaaaaaa555555000000ffffffaaaaaa555555000000ffffff',
  '0/4': 'ddddddccccccbbbbbbaaaaaa999999888888777777666666555555444444333333222222111111000000ffffff',
  '0/8': '0d0d0dfcfcfcebebebdadadac9c9c9b8b8b8a7a7a79696968585857474746363635252524141413030301f1f1f',
  '0/16': '0d0d0dfcfcfcffffffdadadaffffffb8b8b8ffffff969696ffffff747474ffffff525252ffffff303030ffffff',
  '2/8': '0dfcebdac9b8a7968574635241301f0efdecdbcab9a897867564534231200ffeeddccbbaa99887766554433221',
  '2/16': '0830577ea6cdf41c436a92b9e0082f577ea5cdf41b436a91b9e0072f567da5ccf31b426991b8e0072e567da4cc',
  '3/1': '98c7f60b3a6998c7f60b3a6998c7f60b3a6998c7f60b3a6998c7f60b3a6998c7f60b3a6998c7f60b3a6998c7f6',
  '3/2': '98c7f60b3a69b2e11025548398c7f60b3a69b2e11025548398c7f60b3a69b2e11025548398c7f60b3a69b2e110',
  '3/4': '98c7f60b3a69ccfb2a3f6e9db2e11025548398c7f60b3a69ccfb2a3f6e9db2e11025548398c7f60b3a69ccfb2a',
  '3/8': '98c7f60b3a69ccfb2a3f6e9db2e11025548398c7f60b3a69ccfb2a3f6e9db2e11025548398c7f60b3a69ccfb2a',
  '4/8': '0d0d0debebebc9c9c9a7a7a78585856363634141411f1f1ffdfdfddbdbdbb9b9b9979797757575535353313131',
  '4/16': '080808575757a6a6a6f4f4f4434343929292e0e0e02f2f2f7e7e7ecdcdcd1b1b1b6a6a6ab9b9b9070707565656',
  '6/8': '0dfcebc9b8a785746341301ffdecdbb9a89775645331200feddccba998876554432110ffddccbb998877554433',
  '6/16': '083057a6cdf4436a92e0082f7ea5cd1b436ab9e007567da5f31b4291b8e02e567dccf31a6990b8062e55a4cbf2',
};

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(Array.from(type, (ch) => ch.charCodeAt(0)), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

const SAMPLES_PER_PIXEL: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * A 5x3 PNG whose samples follow a fixed formula, with a PLTE for palettes and a tRNS for
 * gray, RGB and palette images; the same bytes the PIL fixtures were made from.
 */
function pngFixture(colorType: number, depth: number): Uint8Array {
  const width = 5;
  const height = 3;
  const perRow = width * SAMPLES_PER_PIXEL[colorType];
  const modulus = colorType === 3 ? Math.min(6, 2 ** depth) : colorType === 0 && depth === 16 ? 512 : 2 ** depth;
  const multiplier = depth === 16 && colorType !== 0 ? 40503 : 1;
  const samples = Array.from({ length: height }, (_, y) =>
    Array.from({ length: perRow }, (_, i) => (((y * perRow + i) * 7919 + 13) * multiplier) % modulus),
  );
  const rows = samples.map((row) => {
    const bytes: number[] = [0]; // filter type None
    if (depth === 16) {
      for (const v of row) bytes.push(v >> 8, v & 255);
    } else {
      let bits = row.map((v) => v.toString(2).padStart(depth, '0')).join('');
      bits = bits.padEnd(Math.ceil(bits.length / 8) * 8, '0');
      for (let i = 0; i < bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
    }
    return bytes;
  });
  const header = new Uint8Array(13);
  const headerView = new DataView(header.buffer);
  headerView.setUint32(0, width);
  headerView.setUint32(4, height);
  header.set([depth, colorType, 0, 0, 0], 8);
  const chunks = [Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), pngChunk('IHDR', header)];
  if (colorType === 3) chunks.push(pngChunk('PLTE', Uint8Array.from({ length: 18 }, (_, k) => (k * 47 + 11) % 256)));
  const first = samples[0];
  const be16 = (v: number) => [v >> 8, v & 255];
  if (colorType === 0) chunks.push(pngChunk('tRNS', Uint8Array.from(be16(first[0]))));
  if (colorType === 2) chunks.push(pngChunk('tRNS', Uint8Array.from([...be16(first[0]), ...be16(first[1]), ...be16(first[2])])));
  if (colorType === 3) chunks.push(pngChunk('tRNS', Uint8Array.from([0, 128])));
  chunks.push(pngChunk('IDAT', new Uint8Array(deflateSync(Uint8Array.from(rows.flat())))));
  chunks.push(pngChunk('IEND', new Uint8Array(0)));
  return concat(chunks);
}

describe('decodeImageFile', () => {
  async function withTempFile<T>(name: string, bytes: Uint8Array, use: (path: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), 'cxc-image-'));
    try {
      const path = join(dir, name);
      await writeFile(path, bytes);
      return await use(path);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  for (const [key, hex] of Object.entries(PIL_PNG_RGB)) {
    const [colorType, depth] = key.split('/').map(Number);
    it(`PNG colour type ${colorType}, ${depth}-bit converts to RGB as PIL does`, async () => {
      const decoded = await withTempFile('image.png', pngFixture(colorType, depth), decodeImageFile);
      expect([decoded.width, decoded.height, decoded.channels]).toEqual([5, 3, 3]);
      expectSameBytes(Uint8Array.from(decoded.data), fromHex(hex), key);
    });
  }

  it('decodes a JPEG (by content, whatever its name) to RGB close to the encoded pixels', async () => {
    const rgba = new Uint8Array(16 * 16 * 4);
    for (let i = 0; i < 256; i++) {
      // A smooth image, so that JPEG at quality 100 stays within a few levels.
      rgba.set([i, 255 - i, 128], i * 4);
      rgba[i * 4 + 3] = 255;
    }
    const encoded = jpeg.encode({ data: rgba, width: 16, height: 16 }, 100).data;
    const decoded = await withTempFile('photo.png', new Uint8Array(encoded), decodeImageFile);
    expect([decoded.width, decoded.height, decoded.channels]).toEqual([16, 16, 3]);
    let maxError = 0;
    for (let i = 0; i < 256; i++) {
      for (let c = 0; c < 3; c++) maxError = Math.max(maxError, Math.abs(decoded.data[i * 3 + c] - rgba[i * 4 + c]));
    }
    expect(maxError).toBeLessThanOrEqual(8);
  });

  it('names the path when the file is missing', async () => {
    const path = join(tmpdir(), 'cxc-no-such-image.png');
    await expect(decodeImageFile(path)).rejects.toThrow(CxcError);
    await expect(decodeImageFile(path)).rejects.toThrow(`${path}: cannot read the image: no such file`);
  });

  it('refuses formats other than PNG and JPEG', async () => {
    const gif = new TextEncoder().encode('GIF89a\x01\x00\x01\x00');
    await withTempFile('image.gif', gif, async (path) => {
      await expect(decodeImageFile(path)).rejects.toThrow(CxcError);
      await expect(decodeImageFile(path)).rejects.toThrow(`${path}: unsupported image format`);
    });
  });

  it('refuses a PNG whose header declares an absurd size before decoding it', async () => {
    const png = pngFixture(2, 8);
    new DataView(png.buffer, png.byteOffset).setUint32(16, 100_000); // IHDR width
    new DataView(png.buffer, png.byteOffset).setUint32(20, 100_000); // IHDR height
    await withTempFile('bomb.png', png, async (path) => {
      await expect(decodeImageFile(path)).rejects.toThrow(`${path}: the image is too large: 100000x100000`);
    });
  });

  it('reports a truncated PNG or JPEG as a CxcError naming the file', async () => {
    const png = pngFixture(2, 8);
    await withTempFile('cut.png', png.subarray(0, png.length - 30), async (path) => {
      await expect(decodeImageFile(path)).rejects.toThrow(CxcError);
      await expect(decodeImageFile(path)).rejects.toThrow(`${path}: cannot decode the PNG`);
    });
    const rgba = new Uint8Array(32 * 32 * 4).fill(200);
    const jpg = new Uint8Array(jpeg.encode({ data: rgba, width: 32, height: 32 }, 90).data);
    await withTempFile('cut.jpg', jpg.subarray(0, 40), async (path) => {
      await expect(decodeImageFile(path)).rejects.toThrow(CxcError);
      await expect(decodeImageFile(path)).rejects.toThrow(`${path}: cannot decode the JPEG`);
    });
  });
});
