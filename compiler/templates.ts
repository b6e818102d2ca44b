/**
 * Kernel templates: one handlebars file per kernel kind under templates/<target>/.
 * Templates hold kernel code; the TypeScript that renders them holds every decision
 * (shapes, tile sizes, offsets) and passes it in as data.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
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

function templatePath(name: string): string {
  for (const root of TEMPLATE_ROOTS) {
    const url = new URL(name, root);
    try {
      readFileSync(url);
      return fileURLToPath(url);
    } catch {
      // try the next root
    }
  }
  throw new Error(`internal: kernel template ${name} not found under templates/`);
}

/**
 * Code shared by several kernels of a target (vector math, activations) lives in
 * templates/<target>/partials/<name>.<ext>.hbs and is used as {{> <target>/<name>}}.
 */
let partialsRegistered = false;
function registerPartials(): void {
  if (partialsRegistered) return;
  partialsRegistered = true;
  const root = TEMPLATE_ROOTS.find((url) => {
    try {
      return readdirSync(url).length > 0;
    } catch {
      return false;
    }
  });
  if (!root) throw new Error('internal: templates/ not found');
  for (const target of readdirSync(root, { withFileTypes: true }).filter((entry) => entry.isDirectory())) {
    const folder = new URL(`${target.name}/partials/`, root);
    let files: string[];
    try {
      files = readdirSync(folder);
    } catch {
      continue; // a target without shared partials
    }
    for (const file of files.filter((f) => f.endsWith('.hbs'))) {
      const partial = engine.compile(readFileSync(new URL(file, folder), 'utf8'), { noEscape: true, strict: true });
      engine.registerPartial(`${target.name}/${file.split('.')[0]}`, partial);
    }
  }
}

/** Renders templates/<name> (e.g. "wasm/gemm.wat.hbs") with the given data. */
export function renderTemplate(name: string, data: object): string {
  registerPartials();
  let template = cache.get(name);
  if (!template) {
    // noEscape: kernels are code, not HTML; strict: a missing field is a compiler bug, not an empty string.
    template = engine.compile(readFileSync(templatePath(name), 'utf8'), { noEscape: true, strict: true });
    cache.set(name, template);
  }
  return template(data);
}
