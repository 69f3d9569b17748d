/**
 * The CLI's two kinds of failure and their exit codes: a {@link UsageError} (2) is a command line
 * that cannot run as written; a {@link CliError} (1) is a run that failed (a server unreachable, a
 * bad URL, an unknown record, a replay that did not go through). Anything else is a bug, shown
 * with its stack.
 */

export class CliError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'CliError';
  }
}

export class UsageError extends CliError {
  override readonly exitCode: number = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The message of an error and of its causes, e.g. `store unavailable: connect ECONNREFUSED`. */
export function describeError(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && current !== null && depth < 5; depth++) {
    const message =
      current instanceof Error
        ? current.message || current.name
        : typeof current === 'string'
          ? current
          : JSON.stringify(current);
    if (message && !parts.some((p) => p.includes(message))) parts.push(message);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(': ');
}
