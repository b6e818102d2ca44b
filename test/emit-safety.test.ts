/**
 * Strings from a checkpoint end up in generated code: they must come out verbatim and never
 * run or break the module. And the same inputs must build byte-identical packages.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { buildToTemp } from './helpers/build.js';
import { goldenPath } from './helpers/golden.js';

const HOSTILE_LABELS = [
  'plain',
  '"double" \'single\' `backtick`',
  '${globalThis.__cxcPwned = 1}',
  '*/ globalThis.__cxcPwned = 2; /*',
  '</script><script>globalThis.__cxcPwned = 3</script>',
  'line\nbreak\r\nand\u2028separators\u2029',
  'back\\slash \\u0041 \\n',
  'emoji 🐈‍⬛ and CJK 猫 and RTL \u202e',
  '"); globalThis.__cxcPwned = 4; ("',
  '',
];

const work = mkdtempSync(join(tmpdir(), 'cxc-emit-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function filesOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.set(relative(dir, path), readFileSync(path));
    }
  };
  walk(dir);
  return out;
}

describe('generated code safety', () => {
  test('hostile labels come out of classify verbatim and never execute', async () => {
    const dir = join(work, 'hostile');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir);
    const config = JSON.parse(readFileSync(goldenPath('models', 'micro', 'config.json'), 'utf8'));
    config.id2label = Object.fromEntries(HOSTILE_LABELS.map((label, i) => [String(i), label]));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    symlinkSync(goldenPath('models', 'micro', 'model.safetensors'), join(dir, 'model.safetensors'));
    const built = await buildToTemp({ input: dir, target: 'wasm' });
    try {
      const model = await built.load();
      expect((globalThis as { __cxcPwned?: number }).__cxcPwned).toBeUndefined();
      expect(model.config.labels).toEqual(HOSTILE_LABELS);
      const image = { data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 37) % 256), width: 64, height: 64, channels: 3 as const };
      const top = await model.classify(image, { topK: HOSTILE_LABELS.length });
      expect(top.map((t) => t.label).sort()).toEqual([...HOSTILE_LABELS].sort());
      for (const t of top) expect(t.label).toBe(HOSTILE_LABELS[t.index]);
      model.dispose();
      expect((globalThis as { __cxcPwned?: number }).__cxcPwned).toBeUndefined();
      // the labels are data in the emitted source, not code
      const index = readFileSync(join(built.dir, 'index.ts'), 'utf8');
      expect(index).toContain(JSON.stringify(HOSTILE_LABELS[3]));
    } finally {
      built.remove();
    }
  });

  test('the same inputs build byte-identical packages', async () => {
    const first = await buildToTemp({ input: goldenPath('models', 'v2-micro'), target: 'wasm' });
    const second = await buildToTemp({ input: goldenPath('models', 'v2-micro'), target: 'wasm' });
    try {
      const a = filesOf(first.dir);
      const b = filesOf(second.dir);
      expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
      for (const [name, bytes] of a) expect(bytes.equals(b.get(name)!), `${name} differs between builds`).toBe(true);
      // nothing machine-specific leaks into the package
      for (const [name, bytes] of a) {
        if (name.endsWith('.bin') || name.endsWith('.wasm')) continue;
        const text = bytes.toString('utf8');
        expect(text, name).not.toContain(tmpdir());
        expect(text, name).not.toContain(process.cwd());
      }
    } finally {
      first.remove();
      second.remove();
    }
  });
});
