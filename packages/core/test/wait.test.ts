import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  doublingBackoff,
  MAX_TIMER_MS,
  pause,
  repeatEvery,
  settledWithin,
  sleep,
  timerMs,
  withTimeout,
} from '../src/wait.js';

describe('waiting', () => {
  it('pause resolves true after its time, false at once when the signal aborts', async () => {
    expect(await pause(1)).toBe(true);
    const controller = new AbortController();
    const paused = pause(60_000, controller.signal);
    controller.abort();
    expect(await paused).toBe(false);
    expect(await pause(60_000, controller.signal)).toBe(false);
  });

  it('sleep rejects with the signal reason, before or during the wait', async () => {
    await expect(sleep(1)).resolves.toBeUndefined();
    const controller = new AbortController();
    const slept = sleep(60_000, controller.signal);
    controller.abort(new Error('stopping'));
    await expect(slept).rejects.toThrow('stopping');
    await expect(sleep(1, controller.signal)).rejects.toThrow('stopping');
  });

  it('settledWithin tells whether every promise settled (rejections included) before the deadline', async () => {
    expect(await settledWithin([], 0)).toBe(true);
    expect(await settledWithin([Promise.resolve(1), Promise.reject(new Error('x'))], 1_000)).toBe(true);
    expect(await settledWithin(new Set([new Promise(() => {})]), 5)).toBe(false);
  });

  it('timerMs clamps to what setTimeout can wait', () => {
    expect(timerMs(-5)).toBe(0);
    expect(timerMs(1_500)).toBe(1_500);
    expect(timerMs(Number.POSITIVE_INFINITY)).toBe(MAX_TIMER_MS);
  });

  it('doublingBackoff starts at its initial delay and doubles up to its cap', () => {
    const backoff = doublingBackoff(200, 1_000);
    expect([1, 2, 3, 4, 10].map(backoff)).toEqual([200, 400, 800, 1_000, 1_000]);
  });

  it('repeatEvery never overlaps runs, goes on after a failing one, and stops when told', async () => {
    // Prepare: runs that outlast the interval; the second one fails
    let running = 0;
    let most = 0;
    let runs = 0;
    let stopAfterFour: () => void = () => {};
    const fourth = new Promise<void>((resolve) => {
      stopAfterFour = resolve;
    });
    const errors: unknown[] = [];
    const loop = repeatEvery(
      1,
      async () => {
        running++;
        most = Math.max(most, running);
        await pause(10);
        running--;
        runs++;
        if (runs === 4) stopAfterFour();
        if (runs === 2) throw new Error('pass failed');
      },
      (error) => errors.push(error),
    );

    // Act
    await fourth;
    loop.stop();
    await loop.settled();
    const stoppedAt = runs;
    await pause(30);

    // Assert
    expect(most).toBe(1);
    expect(errors).toEqual([new Error('pass failed')]);
    expect(runs).toBe(stoppedAt);
  });

  it('repeatEvery with immediately runs once at once, then after the interval', async () => {
    // Prepare: an interval far longer than the test
    let runs = 0;
    // Act
    const loop = repeatEvery(
      60_000,
      async () => {
        runs++;
      },
      () => {},
      { immediately: true },
    );
    await loop.settled();
    const first = runs;
    await pause(20);
    loop.stop();
    // Assert
    expect(first).toBe(1);
    expect(runs).toBe(1);
  });

  it('withTimeout aborts after its time (TimeoutError) or with the caller signal, whichever first', async () => {
    const timedOut = withTimeout(undefined, 20);
    await new Promise((resolve) => timedOut.addEventListener('abort', resolve));
    expect((timedOut.reason as Error).name).toBe('TimeoutError');
    const caller = new AbortController();
    const combined = withTimeout(caller.signal, 60_000);
    caller.abort(new Error('lease lost'));
    expect(combined.aborted).toBe(true);
    expect((combined.reason as Error).message).toBe('lease lost');
  });

  it('withTimeout still aborts after garbage collections (AbortSignal.timeout inside AbortSignal.any does not on Node 20)', async () => {
    // Found by a review: a step's provider timeout built with AbortSignal.any never fired.
    const wait = fileURLToPath(new URL('../src/wait.ts', import.meta.url));
    const script = `
      const { withTimeout } = await import(${JSON.stringify(wait)});
      const s = withTimeout(new AbortController().signal, 100);
      s.addEventListener('abort', () => { console.log('aborted', s.reason.name); process.exit(0); });
      setInterval(() => globalThis.gc(), 10);
      setTimeout(() => { console.log('never aborted'); process.exit(1); }, 2000);
    `;
    const run = await promisify(execFile)(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script],
      { env: { ...process.env, NODE_OPTIONS: '' } },
    );
    expect(run.stdout.trim()).toBe('aborted TimeoutError');
  });
});
