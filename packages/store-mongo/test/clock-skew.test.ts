/**
 * Host wall-clock steps against the real test server: two stores on one collection stand for two
 * workers, each with its own server-clock estimate. `Date.now` is stepped for the whole process,
 * so both workers see the step; the server's clock does not move.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { serverClock } from '../src/clock.js';
import { createMongoStore, type MongoProcessedStore } from '../src/index.js';
import { MONGO_SERVERS, openTestDatabase, serverLocalTime, type TestDatabase } from './helpers.js';

const HOUR = 3_600_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let test: TestDatabase;
let a: MongoProcessedStore;
let b: MongoProcessedStore;
let keys = 0;

beforeAll(async () => {
  test = await openTestDatabase('clock_skew');
});
beforeEach(async () => {
  // Fresh workers per test: a clock estimate must not carry over from an earlier test's step.
  a = createMongoStore({ db: test.db, collectionName: 'skew' });
  b = createMongoStore({ db: test.db, collectionName: 'skew' });
});
afterEach(async () => {
  vi.restoreAllMocks();
  await a.close();
  await b.close();
});
afterAll(async () => {
  await test?.drop();
});

/** Steps this host's wall clock by `ms` (the monotonic clock and the server's clock do not move). */
function stepHostClock(ms: number): void {
  const real = Date.now;
  vi.spyOn(Date, 'now').mockImplementation(() => real() + ms);
}

/** The server's own clock, read directly. */
const serverNow = (db = test.db): Promise<number> => serverLocalTime(db);

/** A fresh key, with both workers' clocks measured before anything is stepped. */
async function freshKey(): Promise<string> {
  await Promise.all([a.get('warm-up'), b.get('warm-up')]);
  return `skew:${keys++}`;
}

const request = (key: string, owner: string, leaseMs = 30_000) => ({
  key,
  fingerprint: 'fp',
  owner,
  leaseMs,
});

// +1 h is past the 60 s refresh period; +45 s is within it. Each retention is shorter than the
// step, so a clock misread by the step would expire the record.
describe.each([
  ['+1 h', HOUR, 10 * 60_000],
  ['+45 s', 45_000, 30_000],
])('host clock stepped %s', (_label, step, retentionMs) => {
  it('a live lease held by another worker stays busy, never taken over', async () => {
    const key = await freshKey();
    const lease = await a.begin(request(key, 'A'));
    expect(lease.status).toBe('acquired');
    stepHostClock(step);
    const other = await b.begin(request(key, 'B'));
    expect(other.status).toBe('busy');
    expect((await a.get(key))?.fence).toBe(lease.status === 'acquired' ? lease.fence : -1);
  });

  it('a COMPLETED record within its retention stays a duplicate', async () => {
    const key = await freshKey();
    const lease = await a.begin(request(key, 'A'));
    if (lease.status !== 'acquired') throw new Error(`expected acquired, got ${lease.status}`);
    expect(await a.complete({ key, fence: lease.fence, outgoing: [], retentionMs })).toBe('ok');
    stepHostClock(step);
    expect((await b.begin(request(key, 'B'))).status).toBe('duplicate');
    expect((await a.begin(request(key, 'A'))).status).toBe('duplicate');
  });
});

describe('host clock stepped -1 h on the worker holding the lease', () => {
  it('extend and complete still push the deadlines out on the server clock; the other worker sees busy, then duplicate', async () => {
    const key = await freshKey();
    const lease = await a.begin(request(key, 'A'));
    if (lease.status !== 'acquired') throw new Error(`expected acquired, got ${lease.status}`);
    stepHostClock(-HOUR);
    // Real time moves on; a lease extended now must end 30 s after now, not after the step.
    await sleep(2500);
    expect(await a.extend(key, lease.fence, 30_000)).toBe('ok');
    const extended = await a.get(key);
    const afterExtend = await serverNow();
    expect(extended?.state === 'IN_PROGRESS' && extended.leaseUntil).toBeGreaterThanOrEqual(
      afterExtend + 29_000,
    );
    expect((await b.begin(request(key, 'B'))).status).toBe('busy');

    expect(await a.complete({ key, fence: lease.fence, outgoing: [], retentionMs: 10 * 60_000 })).toBe('ok');
    const completed = await a.get(key);
    const afterComplete = await serverNow();
    expect(completed?.state === 'COMPLETED' && completed.expiresAt).toBeGreaterThanOrEqual(
      afterComplete + 10 * 60_000 - 1000,
    );
    expect((await b.begin(request(key, 'B'))).status).toBe('duplicate');
  });
});

// The estimate alone, on each test server: mongo-java-server has no `hello`, so there the clock
// measures with `isMaster`.
describe.each(MONGO_SERVERS)('server clock estimate on $name', ({ url }) => {
  let server: TestDatabase;
  beforeAll(async () => {
    server = await openTestDatabase('clock_estimate', url);
  });
  afterAll(async () => {
    await server?.drop();
  });

  it('a host step too small to be noticed as one (±900 ms) does not move the estimate', async () => {
    const clock = serverClock(server.db);
    await clock.now();
    for (const step of [900, -900]) {
      stepHostClock(step);
      const estimate = await clock.now();
      expect(Math.abs(estimate - (await serverNow(server.db)))).toBeLessThan(100);
      vi.restoreAllMocks();
    }
  });

  it('keeps a quick measurement over a later one whose reply was delayed on the way back', async () => {
    let delayMs = 0;
    // The real server, with its reply held back: the midpoint then lies after the server read its clock.
    const slowReply = new Proxy(server.db, {
      get: (target, property, receiver) =>
        property === 'command'
          ? async (...args: Parameters<typeof target.command>) => {
              const reply = await target.command(...args);
              await sleep(delayMs);
              return reply;
            }
          : Reflect.get(target, property, receiver),
    });
    const clock = serverClock(slowReply, { refreshMs: 0 });
    await clock.now();
    delayMs = 400;
    await clock.now(); // measures again, 400 ms round trip
    expect(Math.abs((await clock.now()) - (await serverNow(server.db)))).toBeLessThan(100);
  });

  it('measures with hello, or with isMaster where the server has no hello, and asks only that once known', async () => {
    const commands: string[] = [];
    const recording = new Proxy(server.db, {
      get: (target, property, receiver) =>
        property === 'command'
          ? (...args: Parameters<typeof target.command>) => {
              commands.push(Object.keys(args[0])[0] ?? '');
              return target.command(...args);
            }
          : Reflect.get(target, property, receiver),
    });
    const clock = serverClock(recording, { refreshMs: 0 });
    await clock.now();
    await clock.now();
    expect(commands).toEqual(
      server.server === 'mongo-java' ? ['hello', 'isMaster', 'isMaster'] : ['hello', 'hello'],
    );
    expect(Math.abs((await clock.now()) - (await serverNow(server.db)))).toBeLessThan(100);
  });
});
