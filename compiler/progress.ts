/**
 * A one-line progress bar for the CLI, drawn on stderr only when stderr is a terminal:
 * piped or redirected output (scripts, CI, tests) gets nothing from it.
 */

/** What the bar writes to: process.stderr, or a stand-in with the same shape. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export interface ProgressBar {
  /** Redraws the bar at `fraction` (0..1) with a label after it, e.g. "54.0 / 109.0 MiB". */
  update(fraction: number, label: string): void;
  /** Erases the bar, leaving the line empty for what comes next. */
  done(): void;
}

const WIDTH = 24;
/** Redraws closer together than this are skipped (the last one always draws). */
const MIN_INTERVAL_MS = 40;

export function progressBar(title: string, stream: ProgressStream = process.stderr): ProgressBar {
  if (!stream.isTTY) return { update() {}, done() {} };
  const started = performance.now();
  let lastDraw = -Infinity;
  let drawn = false;
  return {
    update(fraction, label) {
      const now = performance.now();
      const clamped = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
      if (clamped < 1 && now - lastDraw < MIN_INTERVAL_MS) return;
      lastDraw = now;
      stream.write(`\r\x1b[2K${renderBar(title, clamped, label, (now - started) / 1000, stream.columns || 80)}`);
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\r\x1b[2K');
      drawn = false;
    },
  };
}

/** The bar's text, cut to the terminal's width: `title [#######.......]  45% label 1.2 s`. */
export function renderBar(title: string, fraction: number, label: string, seconds: number, columns: number): string {
  const filled = Math.round(fraction * WIDTH);
  const bar = `${'█'.repeat(filled)}${'░'.repeat(WIDTH - filled)}`;
  const text = `${title} ${bar} ${String(Math.floor(fraction * 100)).padStart(3)}%  ${label}  ${seconds.toFixed(1)} s`;
  const max = Math.max(10, columns - 1);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function mebibytes(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}
