/**
 * What the commands print: human text on stdout, or one JSON document with `--json`; progress
 * bars on stderr only when stderr is a terminal, so pipes and files get clean output.
 */
import cliProgress from 'cli-progress';

export interface Io {
  /** Writes one chunk of text to stdout (the command adds newlines). */
  readonly out: (text: string) => void;
  /** Writes to stderr: warnings and progress. */
  readonly err: (text: string) => void;
  /** Whether stderr is a terminal (progress bars are drawn only then). */
  readonly interactive: boolean;
}

/** Whether stdout's reader has gone (see {@link finishWhenStdoutCloses}). */
let stdoutGone = false;

/**
 * When stdout's reader goes (`| head` got its lines), the command finishes without printing
 * rather than die halfway (a replay mid-way, say) with an unhandled EPIPE. For the CLI's process.
 */
export function finishWhenStdoutCloses(): void {
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
    stdoutGone = true;
  });
}

/**
 * Ends the CLI's process with `code` once what it wrote has been handed on: a finished command
 * must not wait for a client's own timers (ioredis keeps a socket it gave up on for 2 s before
 * destroying it, so a refused connection took 2.3 s to report, and every `--timeout` 2.3 s more).
 */
export function exitOnceWritten(code: number): void {
  process.exitCode = code;
  const streams = [process.stdout, process.stderr].filter(
    (stream) => !stream.destroyed && !(stream === process.stdout && stdoutGone),
  );
  let waiting = streams.length;
  if (waiting === 0) process.exit(code);
  // A write's callback runs once the writes before it are flushed (or failed: EPIPE).
  for (const stream of streams) {
    stream.write('', () => {
      if (--waiting === 0) process.exit(code);
    });
  }
}

export const processIo: Io = {
  out: (text) => {
    if (!stdoutGone) process.stdout.write(text);
  },
  err: (text) => process.stderr.write(text),
  get interactive() {
    return process.stderr.isTTY === true;
  },
};

export function printJson(io: Io, value: unknown): void {
  io.out(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLines(io: Io, lines: readonly string[]): void {
  io.out(lines.length === 0 ? '' : `${lines.map(terminalSafe).join('\n')}\n`);
}

// C0 controls but tab, DEL, C1 controls, the bidirectional marks and overrides, and the backslash.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const UNSAFE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\\]/g;

/**
 * Text as a terminal shows it rather than obeys it. Keys, headers, bodies and error texts come
 * from producers: their control characters and bidirectional overrides are printed as `\x1b` or
 * `\u202e`, so a message cannot clear the operator's screen, retitle the window, fake colours, add
 * lines or reorder what is read; a backslash is printed `\\`, so a key holding the text `\x1b`
 * never reads like one holding ESC. (`--json` prints JSON, whose strings escape C0 controls.)
 */
export function terminalSafe(text: string): string {
  return text.replace(UNSAFE, (c) => {
    if (c === '\\') return '\\\\';
    const code = c.charCodeAt(0);
    return code <= 0xff
      ? `\\x${code.toString(16).padStart(2, '0')}`
      : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** What the text output prints for an absent value. */
const NO_VALUE = new Set(['-', '(none)', '(null)', '(unusable)']);

/**
 * A producer's text (a key, a request id) as a cell shows it unmistakably: in double quotes when
 * it is empty, starts or ends with whitespace, or reads like the mark of an absent value (`-`,
 * `(none)`), so that `""`, `" "` and `"-"` never print like each other or like no key at all.
 */
export function shown(text: string): string {
  return text === '' || text !== text.trim() || NO_VALUE.has(text) ? `"${text}"` : text;
}

/** A progress bar on stderr, or nothing at all when stderr is not a terminal. */
export interface Progress {
  setTotal(total: number): void;
  increment(by?: number): void;
  stop(): void;
}

export function progress(io: Io, label: string, total: number): Progress {
  if (!io.interactive) return { setTotal() {}, increment() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {value}/{total}`,
      hideCursor: true,
      clearOnComplete: true,
      stopOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return {
    setTotal: (t) => bar.setTotal(t),
    increment: (by = 1) => bar.increment(by),
    stop: () => bar.stop(),
  };
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `512 B`, `1.5 KiB`, `3.27 GiB`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  return `${value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2)} ${BYTE_UNITS[unit]}`;
}

/** `1,234,567`. */
export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** `45 s`, `12 min`, `3.5 h`, `2.1 d`. */
export function formatSpan(ms: number): string {
  const abs = Math.abs(ms);
  if (abs < 1_000) return `${Math.round(ms)} ms`;
  if (abs < 120_000) return `${Math.round(ms / 1_000)} s`;
  if (abs < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  if (abs < 172_800_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

/** An epoch-ms time as ISO text, or `-` when unset (0). */
export function formatTime(ms: number | undefined): string {
  return ms === undefined || ms <= 0 ? '-' : new Date(ms).toISOString();
}

/** Columns padded to their widest cell (the last column is not padded). */
export function table(rows: readonly (readonly string[])[]): string[] {
  // Columns line up as printed: a cell's escapes (see terminalSafe, applied by printLines) count.
  const shown = (cell: string) => terminalSafe(cell).length;
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, shown(cell));
    });
  }
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell + ' '.repeat((widths[i] ?? 0) - shown(cell))))
      .join('  ')
      .trimEnd(),
  );
}

/** Text cut to `max` characters with an ellipsis. */
export function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, Math.max(0, max - 1))}…`;
}
