/** Parsers for option values; each throws a {@link UsageError} naming the option. */
import { ErrorCode, validateName } from '@exactly-once/core';
import { CliError, UsageError } from './errors.js';

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** `500ms`, `30s`, `5m`, `2h`, `7d` (also fractions: `1.5h`) in milliseconds. */
export function parseDuration(option: string, text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(text.trim());
  if (!match) throw new UsageError(`${option} must be a duration such as 30s, 5m, 2h or 7d (got "${text}")`);
  return Math.round(Number(match[1]) * (UNITS[match[2] as string] as number));
}

/**
 * A key or id given as a JSON string (`"a\u0000b"`), as `--json` output prints it: for characters
 * a shell argument cannot carry (NUL) or that are awkward to type (control characters).
 * `option` and `what` name the flag and the argument in the usage error.
 */
export function parseJsonString(text: string, option = '--json-key', what = '<key>'): string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new UsageError(
      `with ${option}, ${what} must be a JSON string, quotes included, as --json prints it (got ${text})`,
    );
  }
  if (typeof value !== 'string') {
    throw new UsageError(
      `with ${option}, ${what} must be a JSON string, not ${value === null ? 'null' : typeof value}`,
    );
  }
  return value;
}

/** A number of days: `30`, `0.5`, or a duration (`12h`, `90d`). */
export function parseDays(option: string, text: string): number {
  const trimmed = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed);
  return parseDuration(option, trimmed) / 86_400_000;
}

/** A non-negative number; `1e6`, `1_000_000` and `1,000,000` are accepted. */
export function parseNumber(option: string, text: string, { integer = false, min = 0 } = {}): number {
  const value = Number(text.trim().replace(/[_,]/g, ''));
  if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new UsageError(
      `${option} must be ${integer ? 'an integer' : 'a number'} >= ${min} (got "${text}")`,
    );
  }
  return value;
}

/** A URL with one of `protocols` (e.g. `['redis:', 'rediss:']`); a malformed one fails the run. */
export function parseUrl(option: string, text: string, protocols: readonly string[]): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new CliError(
      `${option}: "${text}" is not a URL (expected ${protocols.map((p) => `${p}//host:port`).join(' or ')})`,
    );
  }
  if (!protocols.includes(url.protocol)) {
    throw new CliError(`${option}: "${text}" must start with ${protocols.map((p) => `${p}//`).join(' or ')}`);
  }
  return url;
}

/** `host:port,host:port` (a port is required). */
export function parseHostPorts(option: string, text: string): { host: string; port: number }[] {
  const list = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0) throw new CliError(`${option}: no host:port given`);
  return list.map((entry) => {
    const stripped = entry.replace(/^[a-z]+:\/\//, '');
    const match = /^(\[[^\]]+\]|[^:/]+):(\d{1,5})\/?$/.exec(stripped);
    const port = Number(match?.[2]);
    if (!match || !(port > 0 && port < 65536)) {
      throw new CliError(`${option}: "${entry}" is not host:port`);
    }
    return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port };
  });
}

/** `--namespace`: a name the SDK accepts (letters, digits, `.`, `_`, `-`; 1 to 100). */
export function parseNamespace(text: string): string {
  try {
    return validateName('namespace', text);
  } catch {
    throw new UsageError(
      `--namespace must be 1 to 100 letters, digits, ".", "_" or "-" (got ${JSON.stringify(text)})`,
    );
  }
}

/** The codes a dead letter can carry: the library's, and ERROR for an error of the handler's own. */
const LETTER_CODES: ReadonlySet<string> = new Set([...Object.values(ErrorCode), 'ERROR']);

/**
 * `--code`: comma-separated error codes as `dlq list` prints them, `PREVIOUSLY_FAILED/<code>`
 * included. An unknown code is refused rather than matching nothing (a typo would replay nothing,
 * or list an empty queue).
 */
export function parseCodes(option: string, text: string): string[] {
  const codes = text
    .split(',')
    .map((s) => s.trim().toUpperCase())
    .filter(Boolean);
  if (codes.length === 0) throw new UsageError(`${option}: no code given`);
  for (const code of codes) {
    const [first, original, ...rest] = code.split('/');
    const known =
      rest.length === 0 &&
      LETTER_CODES.has(first as string) &&
      (original === undefined || (first === ErrorCode.PreviouslyFailed && LETTER_CODES.has(original)));
    if (!known) {
      throw new UsageError(
        `${option}: unknown code "${code}" (one of ${[...LETTER_CODES].join(', ')}, or PREVIOUSLY_FAILED/<code>)`,
      );
    }
  }
  return codes;
}

/** A repeatable option's values in order (`--key-for charge --key-for refund`); empty ones refused. */
export function collectName(option: string): (value: string, previous: string[] | undefined) => string[] {
  return (value, previous) => {
    if (value.length === 0) throw new UsageError(`${option}: a name must not be empty`);
    return [...(previous ?? []), value];
  };
}
