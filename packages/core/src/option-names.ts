/**
 * Unknown option names are refused where options are read: a JavaScript caller (or a spread
 * config object) gets no compile-time check, and a misspelt name silently keeps its default —
 * `leaseMS` runs with the default lease, a store's `keyPrefx` moves its whole key space.
 */
import { ConfigError } from './errors.js';

/** Every option name of `O`, once: `{ ... } satisfies OptionNames<O>` keeps such a list exact. */
export type OptionNames<O> = { readonly [K in keyof Required<O>]: true };

/**
 * Throws ConfigError naming the first own property of `options` that `known` does not list, with
 * the known name it most likely meant. `label` prefixes names of a nested object (`retry`).
 */
export function refuseUnknownOptions(
  options: object,
  known: Readonly<Record<string, true>>,
  label?: string,
): void {
  // A missing options object is the caller's own check (its required options name it).
  if (typeof options !== 'object' || options === null) return;
  for (const name of Object.keys(options)) {
    if (Object.hasOwn(known, name)) continue;
    const meant = closest(name, Object.keys(known));
    const named = (n: string) => `"${label === undefined ? n : `${label}.${n}`}"`;
    throw new ConfigError(
      `unknown option ${named(name)}${meant === undefined ? '' : ` (did you mean ${named(meant)}?)`}`,
    );
  }
}

/** The name `name` differs from only by letter case or at most two edits, if any. */
function closest(name: string, names: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  let best: { name: string; distance: number } | undefined;
  for (const candidate of names) {
    const distance = candidate.toLowerCase() === lower ? 0 : editDistance(lower, candidate.toLowerCase());
    if (distance <= 2 && (best === undefined || distance < best.distance))
      best = { name: candidate, distance };
  }
  return best?.name;
}

/** Levenshtein distance (names are short: one row of integers). */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (row[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      next.push(Math.min((row[j] as number) + 1, (next[j - 1] as number) + 1, substitution));
    }
    row = next;
  }
  return row[b.length] as number;
}
