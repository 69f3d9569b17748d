/**
 * Progress bars on stderr (cli-progress draws nothing when stderr is not a terminal, e.g. in CI).
 * Bars are refreshed from a timer that reads a counter, never from the measured hot path.
 */
import cliProgress from 'cli-progress';

export interface Task {
  /** Total work is done when `read()` reaches it. */
  stop(): void;
}

export interface Progress {
  /** Shows a bar that follows `read()` until `stop()`. */
  track(label: string, total: number, read: () => number): Task;
  /** A line of text printed above the bars. */
  note(line: string): void;
  close(): void;
}

export function createProgress(enabled: boolean): Progress {
  const tty = enabled && process.stderr.isTTY === true;
  const multi = tty
    ? new cliProgress.MultiBar(
        {
          format: ' {label} [{bar}] {value}/{total} | {eta_formatted} left | {duration_formatted}',
          barsize: 28,
          hideCursor: true,
          clearOnComplete: true,
          stopOnComplete: false,
          fps: 5,
          etaBuffer: 50,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  return {
    track(label, total, read) {
      if (!multi) return { stop() {} };
      const bar = multi.create(total, 0, { label: label.padEnd(34).slice(0, 34) });
      const timer = setInterval(() => bar.update(Math.min(total, read())), 200);
      timer.unref();
      return {
        stop() {
          clearInterval(timer);
          bar.update(Math.min(total, read()));
          multi.remove(bar);
        },
      };
    },
    note(line) {
      if (multi) multi.log(`${line}\n`);
      else if (enabled) process.stderr.write(`${line}\n`);
    },
    close() {
      multi?.stop();
    },
  };
}
