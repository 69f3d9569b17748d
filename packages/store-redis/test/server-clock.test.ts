/** The store's reading of a server's clock, from which a begin's give-up time is told to Redis. */
import { describe, expect, it } from 'vitest';
import { ServerClocks } from '../src/server-clock.js';

describe('ServerClocks', () => {
  it('gives no deadline before a node answered, or for a call never abandoned', () => {
    const clocks = new ServerClocks(() => 1_000);
    expect(clocks.deadline('a', 1_000, 500)).toBe(0);
    clocks.observe('a', 50_000);
    expect(clocks.deadline('a', 1_000, undefined)).toBe(0);
    expect(clocks.deadline('a', 1_000, Number.POSITIVE_INFINITY)).toBe(0);
    expect(clocks.deadline('b', 1_000, 500)).toBe(0);
  });

  it("dates the deadline on the server's clock: start + offset + abandonAfterMs, rounded down", () => {
    let now = 1_000;
    const clocks = new ServerClocks(() => now);
    clocks.observe('a', 50_000); // offset 49,000
    now = 1_200.7;
    expect(clocks.deadline('a', now, 400)).toBe(Math.floor(1_200.7 + 49_000 + 400));
  });

  it('keeps the highest recent reading (a slow answer reads low), and follows the newest once it is stale', () => {
    let now = 0;
    const clocks = new ServerClocks(() => now);
    clocks.observe('a', 10_000); // offset 10,000
    now = 5_000;
    clocks.observe('a', 14_000); // this answer took 1 s to come back: offset 9,000
    expect(clocks.deadline('a', 5_000, 0)).toBe(15_000);
    now = 20_000;
    clocks.observe('a', 25_000); // 15 s after the kept reading: the server's clock stepped back 5 s
    expect(clocks.deadline('a', 20_000, 0)).toBe(25_000);
  });
});
