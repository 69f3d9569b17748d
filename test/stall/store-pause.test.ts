/**
 * A Redis that hangs (SIGSTOP) for longer than `storeTimeoutMs` while messages keep coming, with
 * the fail-fast client the store README recommends: the begins sent meanwhile wait on the open
 * connection, and Redis runs them all when it resumes, long after most callers gave up. None of
 * them may leave a lease that nobody holds: the messages retried after the pause all run at once,
 * at attempt 1, with no takeover. Before, 147-197 of 400 keys were taken over after waiting out
 * their lease (begins that arrived late took their leases); with the store's deadline alone, 1-2
 * (a begin that ran in time but whose answer came back behind the backlog, after its caller's
 * deadline: core now gives such a lease back).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { createProcessor, Headers } from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const port = 20_000 + Math.floor(Math.random() * 8_000);
let server: ChildProcess;

beforeAll(async () => {
  server = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  for (let up = false; !up; ) {
    up = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => resolve(socket.destroy() !== undefined));
      socket.once('error', () => setTimeout(resolve, 100, false));
    });
  }
}, 30_000);

afterAll(() => {
  server?.kill('SIGKILL');
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('a Redis paused past storeTimeoutMs under load', () => {
  it('leaves no lease nobody holds: every message runs once, at attempt 1, with no takeover', async () => {
    const client = new Redis({ port, enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    client.on('error', () => {});
    await new Promise((resolve) => client.once('ready', resolve));
    const runs: string[] = [];
    let takeoverWarnings = 0;
    const p = createProcessor<{ k: string }>({
      consumer: 'paused',
      store: createRedisStore({ client, keyPrefix: 'paused' }),
      // Longer than the pause: no lease of a live run runs out during it.
      leaseMs: 10_000,
      storeTimeoutMs: 1_000,
      retentionCheck: 'off',
      logger: {
        debug() {},
        info() {},
        error() {},
        warn: (message) => {
          if (message.startsWith('taking over')) takeoverWarnings++;
        },
      },
      handler: async ({ k }, ctx) => {
        runs.push(`${k} ${ctx.attempt} ${ctx.acquiredAs}`);
      },
    });
    const delivery = (k: string) => ({
      body: new TextEncoder().encode(JSON.stringify({ k })),
      headers: { [Headers.IdempotencyKey]: k },
      destination: 'orders',
      system: 'test',
    });
    /** Processes `k` as a broker would: again (after a short pause) until it is settled. */
    const untilSettled = async (k: string) => {
      for (;;) {
        const d = await p.process(delivery(k));
        if (d.action !== 'defer') return d.action;
        await sleep(Math.min(200, d.delayMs));
      }
    };
    const settled: Promise<string>[] = [];
    const pid = server.pid as number;
    setTimeout(() => process.kill(pid, 'SIGSTOP'), 1_500);
    setTimeout(() => process.kill(pid, 'SIGCONT'), 5_500);
    for (let i = 0; i < 400; i++) {
      settled.push(untilSettled(`k-${i}`));
      await sleep(20);
    }
    expect(new Set(await Promise.all(settled))).toEqual(new Set(['ack']));
    expect(runs).toHaveLength(400);
    // A lease given back after a late answer is begun again as a retry, at the same attempt.
    expect(runs.filter((r) => !/ 1 (new|retry)$/.test(r))).toEqual([]);
    expect(takeoverWarnings).toBe(0);
    client.disconnect();
  }, 60_000);
});
