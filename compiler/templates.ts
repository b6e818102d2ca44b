/**
 * Kernel templates: one handlebars file per kernel kind under templates/<target>/.
 * Templates hold kernel code; the TypeScript that renders them holds every decision
 * (shapes, tile sizes, offsets) and passes it in as data.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import Handlebars from 'handlebars';

/** templates/ at the package root, whether running from sources or from dist/. */
const TEMPLATE_ROOTS = [new URL('../templates/', import.meta.url), new URL('../../templates/', import.meta.url)];

const engine = Handlebars.create();
engine.registerHelper('eq', (a: unknown, b: unknown) => a === b);
engine.registerHelper('ne', (a: unknown, b: unknown) => a !== b);
// Handlebars passes its options object last: arithmetic helpers take every argument before it.
const numbers = (args: unknown[]) => args.slice(0, -1) as number[];
engine.registerHelper('add', (...args: unknown[]) => numbers(args).reduce((a, b) => a + b, 0));
engine.registerHelper('mul', (...args: unknown[]) => numbers(args).reduce((a, b) => a * b, 1));
engine.registerHelper('or', (...args: unknown[]) => args.slice(0, -1).some(Boolean));
engine.registerHelper('and', (...args: unknown[]) => args.slice(0, -1).every(Boolean));
/** Float constants must always print as float literals (1 -> 1.0), never as integers. */
engine.registerHelper('float', (value: number) => {
  const text = String(value);
  return /[.eE]/.test(text) || !Number.isFinite(value) ? text : `${text}.0`;
});
/** Joins its arguments into one string: names built from loop indices, as in x=(concat "$c" row "0"). */
engine.registerHelper('concat', (...args: unknown[]) => args.slice(0, -1).join(''));
/** A 0..n-1 list for unrolled loops: {{#each (range 4)}}. */
engine.registerHelper('range', (n: number) => Array.from({ length: n }, (_, i) => i));

const cache = new Map<string, Handlebars.TemplateDelegate>();
// noEscape: kernels are code, not HTML; strict: a missing field is a compiler bug, not an empty string.
const COMPILE_OPTIONS = { noEscape: true, strict: true };

let root: URL | undefined;
/** The templates/ folder: beside the sources, or one level up from dist/. */
function templatesRoot(): URL {
  root ??= TEMPLATE_ROOTS.find((url) => existsSync(url));
  if (!root) throw new Error('internal: templates/ not found');
  return root;
}

/**
 * Code shared by several kernels of a target (vector math, activations) lives in
 * templates/<target>/partials/ and is used by its path without extensions:
 * partials/exp.wat.hbs is {{> wasm/exp}}, partials/activations/relu.wat.hbs is {{> wasm/activations/relu}}.
 */
let partialsRegistered = false;
function registerPartials(): void {
  if (partialsRegistered) return;
  partialsRegistered = true;
  for (const target of readdirSync(templatesRoot(), { withFileTypes: true }).filter((entry) => entry.isDirectory())) {
    const folder = new URL(`${target.name}/partials/`, templatesRoot());
    if (!existsSync(folder)) continue; // a target without shared partials
    for (const file of readdirSync(folder, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.hbs'))) {
      const name = `${target.name}/${file.replace(/\\/g, '/').replace(/\.[^/]*$/, '')}`;
      engine.registerPartial(name, engine.compile(readFileSync(new URL(file, folder), 'utf8'), COMPILE_OPTIONS));
    }
  }
}

/** Renders templates/<name> (e.g. "wasm/gemm.wat.hbs") with the given data. */
export function renderTemplate(name: string, data: object): string {
  registerPartials();
  let template = cache.get(name);
  if (!template) {
    let source: string;
    try {
      source = readFileSync(new URL(name, templatesRoot()), 'utf8');
    } catch (error) {
      throw new Error(`internal: kernel template ${name} not found under templates/`, { cause: error });
    }
    template = engine.compile(source, COMPILE_OPTIONS);
    cache.set(name, template);
  }
  return template(data);
}
