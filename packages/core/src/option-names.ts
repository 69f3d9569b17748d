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
 * the known name it most likely meant. `label`: the path of a nested options object (`retry`,
 * names shown as `retry.maxAttempts`), or where a call's options are read (`ctx.step options`,
 * with a space: shown as `"reconcle" in ctx.step options`).
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
    const path = label !== undefined && !label.includes(' ');
    const named = (n: string) => `"${path ? `${label}.${n}` : n}"`;
    const where = label === undefined || path ? '' : ` in ${label}`;
    throw new ConfigError(
      `unknown option ${named(name)}${where}${meant === undefined ? '' : ` (did you mean ${named(meant)}?)`}`,
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
