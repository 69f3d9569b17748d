import { afterEach, describe, expect, it, vi } from 'vitest';
import { createIdempotentExecutor } from '../src/executor.js';
import { Headers } from '../src/headers.js';
import type { Logger, LogMeta } from '../src/logger.js';
import { createProcessor } from '../src/processor.js';
import { withFaults } from '../src/store/faulty-store.js';
import { OUTAGE_REMINDER_MS } from '../src/store/health.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { ProcessedStore } from '../src/store/types.js';
import { delivery } from './helpers.js';

const key = (k: string) => ({ [Headers.IdempotencyKey]: k, [Headers.RequestId]: `req-${k}` });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 3, initialDelayMs: 10 } };
const never = new Promise<never>(() => {});

describe('storeHealth (for a liveness probe)', () => {
  it("an executor says it too (an API's probe had nothing to ask)", async () => {
    let down = false;
    const executor = createIdempotentExecutor({
      consumer: 'api',
      store: withFaults(createMemoryStore(), { failWhen: () => down }),
      ...fast,
    });
    await executor.execute({ key: 'r1', payload: {} }, () => 'ok');
    expect(executor.storeHealth().unavailableSince).toBeUndefined();
    down = true;
    const before = Date.now();
    await expect(executor.execute({ key: 'r2', payload: {} }, () => 'ok')).rejects.toThrow();
    expect(executor.storeHealth().unavailableSince).toBeGreaterThanOrEqual(before);
  });

  it('says since when the store has not answered, and clears once it answers again', async () => {
    let down = false;
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: () => down }),
      ...fast,
      handler: () => {},
    });
    expect(p.storeHealth()).toEqual({ lastAnswerAt: undefined, unavailableSince: undefined });

    await p.process(delivery({}, key('k1')));
    const answered = p.storeHealth().lastAnswerAt;
    expect(answered).toBeGreaterThan(0);
    expect(p.storeHealth().unavailableSince).toBeUndefined();

    down = true;
    const before = Date.now();
    expect(await p.process(delivery({}, key('k2')))).toMatchObject({ outcome: 'store-unavailable' });
    const since = p.storeHealth().unavailableSince;
    expect(since).toBeGreaterThanOrEqual(before);
    // Later failures keep the start of the outage.
    await p.process(delivery({}, key('k3')));
    expect(p.storeHealth()).toEqual({ lastAnswerAt: answered, unavailableSince: since });

    down = false;
    expect(await p.process(delivery({}, key('k2')))).toMatchObject({ action: 'ack' });
    expect(p.storeHealth().unavailableSince).toBeUndefined();
    expect(p.storeHealth().lastAnswerAt).toBeGreaterThanOrEqual(since!);
  });

  it('a call past storeTimeoutMs counts as the store not answering, since the call was made', async () => {
    let now = 1_000_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    const memory = createMemoryStore();
    const store: ProcessedStore = Object.create(memory);
    store.beginMany = () => {
      // The clock moves on while the call hangs: the outage began when it was made, not when
      // storeTimeoutMs gave up on it (was: the give-up, a minute late with the default).
      now += 60_000;
      return never;
    };
    const p = createProcessor({ consumer: 'c', store, ...fast, storeTimeoutMs: 50, handler: () => {} });
    expect(await p.process(delivery({}, key('k1')))).toMatchObject({ outcome: 'store-unavailable' });
    expect(p.storeHealth().unavailableSince).toBe(1_000_000);
    vi.restoreAllMocks();
  });

  it('an answer that refuses (a stale fence, a duplicate) is an answer', async () => {
    const p = createProcessor({ consumer: 'c', store: createMemoryStore(), ...fast, handler: () => {} });
    await p.process(delivery({}, key('k1')));
    expect(await p.process(delivery({}, key('k1')))).toMatchObject({ outcome: 'duplicate' });
    expect(p.storeHealth().unavailableSince).toBeUndefined();
  });
});

describe('an outage in the log', () => {
  afterEach(() => vi.restoreAllMocks());

  const recordingLogger = () => {
    const lines: { level: string; message: string; meta?: LogMeta }[] = [];
    const at =
      (level: string) =>
      (message: string, meta?: LogMeta): void => {
        lines.push({ level, message, ...(meta ? { meta } : {}) });
      };
    const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
    const said = (level: string) => lines.filter((l) => l.level === level).map((l) => l.message);
    return { logger, said };
  };

  it('is one warning when it starts, a reminder while it lasts, one line when it ends: not a warning per message', async () => {
    let down = false;
    let now = Date.now();
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    const { logger, said } = recordingLogger();
    const p = createProcessor({
      consumer: 'c',
      store: withFaults(createMemoryStore(), { failWhen: () => down }),
      ...fast,
      logger,
      handler: () => {},
    });
    down = true;
    // Two rounds of 50 messages kept through the outage, as a prefetch window tried again.
    for (let round = 0; round < 2; round++) {
      const all = await Promise.all(
        Array.from({ length: 50 }, (_, i) => p.process(delivery({}, key(`k${i}`)))),
      );
      expect(all.every((d) => d.outcome === 'store-unavailable')).toBe(true);
      now += 1000;
    }
    expect(said('warn')).toEqual(['processed-store unavailable; messages are kept unacked and tried again']);
    // Each message still says why it was kept, at debug level.
    expect(said('debug').filter((m) => m.startsWith('processed-store unavailable')).length).toBe(100);

    now += OUTAGE_REMINDER_MS;
    await p.process(delivery({}, key('k0')));
    await p.process(delivery({}, key('k1')));
    expect(said('warn')).toEqual([
      'processed-store unavailable; messages are kept unacked and tried again',
      'processed-store still unavailable',
    ]);

    down = false;
    now += 1000;
    expect(await p.process(delivery({}, key('k0')))).toMatchObject({ action: 'ack' });
    await p.process(delivery({}, key('k1')));
    expect(said('info')).toEqual(['processed-store answering again']);
    expect(said('warn')).toHaveLength(2);
  });
});
