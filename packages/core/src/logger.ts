/** The logger is injected; the library never writes to the console itself. */
export type LogMeta = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(message: string, meta?: LogMeta): void;
  info(message: string, meta?: LogMeta): void;
  warn(message: string, meta?: LogMeta): void;
  error(message: string, meta?: LogMeta): void;
}

const noop = () => {};

/** Drops debug and info; warnings and errors become process warnings, so they are never lost. */
export const silentLogger: Logger = Object.freeze({
  debug: noop,
  info: noop,
  warn: (message: string) => process.emitWarning(message, 'ExactlyOnceWarning'),
  error: (message: string) => process.emitWarning(message, 'ExactlyOnceError'),
});
