/** The logger is injected; the library never writes to the console itself. */
import { createScrubber, type Scrub } from './redact.js';

export type LogMeta = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(message: string, meta?: LogMeta): void;
  info(message: string, meta?: LogMeta): void;
  warn(message: string, meta?: LogMeta): void;
  error(message: string, meta?: LogMeta): void;
}

const noop = () => {};

/** The metadata as one JSON line (what was affected and why), or none. */
function detailOf(meta: LogMeta | undefined): string | undefined {
  if (meta === undefined || Object.keys(meta).length === 0) return undefined;
  try {
    return JSON.stringify(meta, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  } catch {
    return undefined; // a cycle: the message alone still says what happened
  }
}

const asWarning = (type: string) => (message: string, meta?: LogMeta) => {
  const detail = detailOf(meta);
  process.emitWarning(message, detail === undefined ? { type } : { type, detail });
};

/**
 * The default: drops debug and info; warnings and errors become process warnings (their metadata
 * as the warning's detail line), so they are never lost.
 */
export const defaultLogger: Logger = Object.freeze({
  debug: noop,
  info: noop,
  warn: asWarning('ExactlyOnceWarning'),
  error: asWarning('ExactlyOnceError'),
});

/**
 * @deprecated The same logger as {@link defaultLogger}, under its first name: it is not silent
 * (warnings and errors become process warnings).
 */
export const silentLogger: Logger = defaultLogger;

/** Meta fields that hold an idempotency key or store key, or a list of them (`keys`). */
const KEY_FIELDS: readonly string[] = ['key', 'storeKey', 'firstKey', 'keys'];

/** The keys a key field holds: a string, or the strings of a list. */
function keysIn(value: unknown): string[] | undefined {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value;
  return undefined;
}

/**
 * A logger that drops key fields (`key`, `storeKey`, `firstKey`, `keys`) from the metadata and replaces
 * the keys they held wherever the message or another field (an error's message) quotes them. The
 * pipeline wraps its logger in this unless `recordKeys` is set.
 */
export function keyRedactingLogger(logger: Logger): Logger {
  const redacted = (level: keyof Logger) => (message: string, meta?: LogMeta) => {
    if (meta === undefined || !KEY_FIELDS.some((field) => keysIn(meta[field]) !== undefined)) {
      logger[level](message, meta);
      return;
    }
    const scrubber = createScrubber();
    const rest: Record<string, unknown> = {};
    for (const [field, value] of Object.entries(meta)) {
      const keys = KEY_FIELDS.includes(field) ? keysIn(value) : undefined;
      if (keys === undefined) rest[field] = value;
      else for (const key of keys) scrubber.add(key);
    }
    const scrubbed: Record<string, unknown> = {};
    for (const [field, value] of Object.entries(rest)) scrubbed[field] = scrubValue(value, scrubber.scrub);
    logger[level](scrubber.scrub(message), scrubbed);
  };
  return Object.freeze({
    debug: redacted('debug'),
    info: redacted('info'),
    warn: redacted('warn'),
    error: redacted('error'),
  });
}

/** Strings, and the string fields of plain objects (an ErrorInfo), through `scrub`. */
function scrubValue(value: unknown, scrub: Scrub): unknown {
  if (typeof value === 'string') return scrub(value);
  if (value === null || typeof value !== 'object' || Object.getPrototypeOf(value) !== Object.prototype) {
    return value;
  }
  const out: Record<string, unknown> = {};
  for (const [field, inner] of Object.entries(value))
    out[field] = typeof inner === 'string' ? scrub(inner) : inner;
  return out;
}
