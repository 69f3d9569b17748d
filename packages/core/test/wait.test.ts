import { describe, expect, it } from 'vitest';
import { doublingBackoff, MAX_TIMER_MS, pause, settledWithin, sleep, timerMs } from '../src/wait.js';

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
});
