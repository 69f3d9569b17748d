/**
 * Polls `predicate` until it returns a truthy value (which is returned) or the timeout passes.
 * Tests wait on conditions, never on fixed sleeps.
 *
 * With `progress`, the timeout counts from the last time its value changed: a run that is slow
 * (a loaded CI machine, a parallel test file on the same server) but still moving is waited for,
 * while a run that stops moving fails as soon as it has been still for `timeoutMs`.
 */
export async function waitUntil<T>(
  predicate: () => T | Promise<T>,
  options: {
    timeoutMs?: number;
    intervalMs?: number;
    message?: string | (() => string);
    progress?: () => unknown;
  } = {},
): Promise<NonNullable<T>> {
  const { timeoutMs = 30_000, intervalMs = 50, message = 'condition', progress } = options;
  let deadline = Date.now() + timeoutMs;
  let seen = progress?.();
  let lastError: unknown;
  for (;;) {
    try {
      const v = await predicate();
      if (v) return v as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (progress !== undefined) {
      const now = progress();
      if (now !== seen) {
        seen = now;
        deadline = Date.now() + timeoutMs;
      }
    }
    if (Date.now() > deadline) {
      const suffix = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      const what = typeof message === 'function' ? message() : message;
      const still = progress === undefined ? '' : ' without progress';
      throw new Error(`timed out after ${timeoutMs} ms${still} waiting for ${what}${suffix}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
