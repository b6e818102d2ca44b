/**
 * Errors a user can cause (a bad config, a truncated checkpoint, a wrong path).
 * The CLI prints these as one line without a stack trace; anything else is a bug
 * in cxc and is printed with its stack.
 */
export class CxcError extends Error {
  /** The file the problem is in, when there is one. */
  readonly file?: string;
  /** How to fix it, printed on a line of its own by the CLI. */
  readonly hint?: string;

  constructor(message: string, options: { file?: string; hint?: string; cause?: unknown } = {}) {
    super(options.file ? `${options.file}: ${message}` : message, { cause: options.cause });
    this.name = 'CxcError';
    this.file = options.file;
    this.hint = options.hint;
  }
}

/** Formats a value for an error message: short, unambiguous, never huge. */
export function show(value: unknown): string {
  let text: string | undefined;
  try {
    text = typeof value === 'number' && !Number.isFinite(value) ? String(value) : JSON.stringify(value);
  } catch {
    // circular, too deeply nested or BigInt: fall back to the plain string, which can fail the same way
    text = undefined;
  }
  if (text === undefined) {
    try {
      text = String(value);
    } catch {
      text = Array.isArray(value) ? '[a deeply nested list]' : typeof value === 'object' ? '{a deeply nested object}' : typeof value;
    }
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
