/** Shared by the drivers: the settings the test passes in, polling, and the result line. */

/** A setting the test passes to the program (server addresses and the run's unique names). */
export function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

export async function waitUntil(
  what: string,
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Prints the line the test reads and exits: the README code's Redis client is never closed (the
 * README does not show shutdown), so the process would otherwise stay up.
 */
export function finish(result: Record<string, unknown>): never {
  console.log(`EO_INSTALL_RESULT ${JSON.stringify(result)}`);
  process.exit(0);
}
