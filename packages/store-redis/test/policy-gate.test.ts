/**
 * The eviction policy after the first check: a policy changed at runtime, or a reconnect onto a
 * server that evicts, refuses begins (never completions of runs already begun), and keys the
 * server evicted meanwhile are logged. A server of its own: the test changes its configuration.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { ConfigError, type Logger } from '@exactly-once/core';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisClient } from '../src/client.js';
import { createRedisStore } from '../src/index.js';
import { policyGate, RECHECK_MS, REFUSED_RECHECK_MS } from '../src/policy-gate.js';
import { listening } from './helpers.js';

const port = 20_000 + Math.floor(Math.random() * 8_000);
let server: ChildProcess;

beforeAll(async () => {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  server = spawn('redis-server', args, { stdio: 'ignore' });
  await listening(port);
}, 30_000);

afterAll(() => {
  server?.kill('SIGKILL');
});

function recordingLogger(): Logger & { errors: { message: string; fields?: unknown }[]; infos: string[] } {
  const errors: { message: string; fields?: unknown }[] = [];
  const infos: string[] = [];
  const noop = () => {};
  return {
    errors,
    infos,
    debug: noop,
    warn: noop,
    info: (message) => void infos.push(message),
    error: (message, fields) => void errors.push({ message, fields }),
  };
}

const begin = (key: string) => ({ key, fingerprint: 'f', owner: 'w', leaseMs: 30_000 });

describe('the eviction policy after the first check', () => {
  it('a reconnect onto an evicting server refuses begins, logs the evicted keys, and lets a run already begun complete', async () => {
    const admin = new Redis({ port });
    const client = new Redis({ port, maxRetriesPerRequest: 1 });
    client.on('error', () => {});
    const logger = recordingLogger();
    const store = createRedisStore({ client, keyPrefix: `gate${port}`, logger });
    try {
      await admin.config('SET', 'maxmemory-policy', 'noeviction');
      const [running] = await store.beginMany!([begin('running')]);
      expect(running?.status).toBe('acquired');

      // The server is now configured otherwise, and evicts under pressure.
      // volatile-ttl evicts the junk, whose TTL is shortest, not the record of the run under way.
      await admin.config('SET', 'maxmemory-policy', 'volatile-ttl');
      await admin.config('SET', 'maxmemory', '3mb');
      const junk = 'x'.repeat(10_000);
      for (let i = 0; i < 600; i++) await admin.set(`gate-junk-${i}`, junk, 'EX', 60);
      expect(Number(/evicted_keys:(\d+)/.exec(await admin.info('stats'))?.[1])).toBeGreaterThan(0);
      await admin.config('SET', 'maxmemory', '0');

      client.disconnect(true);
      await new Promise((resolve) => client.once('ready', resolve));
      await expect(store.beginMany!([begin('after-reconnect')])).rejects.toBeInstanceOf(ConfigError);
      await expect(store.begin(begin('single'))).rejects.toBeInstanceOf(ConfigError);
      const logged = logger.errors.map((e) => e.message).join('\n');
      expect(logged).toMatch(/evicted \d+ key/);
      expect(logged).toMatch(/no longer "noeviction": begins are refused/);
      // The run begun before completes: its handler ran, and refusing its record would lose it.
      if (running?.status !== 'acquired') throw new Error('unreachable');
      expect(
        await store.complete({ key: 'running', fence: running.fence, outgoing: [], retentionMs: 60_000 }),
      ).toBe('ok');

      // Fixed, and seen at the next reconnect: begins go on.
      await admin.config('SET', 'maxmemory-policy', 'noeviction');
      client.disconnect(true);
      await new Promise((resolve) => client.once('ready', resolve));
      const [again] = await store.beginMany!([begin('after-fix')]);
      expect(again?.status).toBe('acquired');
      expect(logger.infos.join('\n')).toMatch(/"noeviction" again/);
    } finally {
      await admin.config('SET', 'maxmemory-policy', 'noeviction');
      await store.close();
      await admin.flushall();
      admin.disconnect();
      client.disconnect();
    }
  }, 30_000);

  it('begins check again every RECHECK_MS without a reconnect, every REFUSED_RECHECK_MS while refused, and go on through a check that meets an outage', async () => {
    let policy = 'noeviction';
    let configGets = 0;
    let down = false;
    const client: RedisClient = {
      isCluster: false,
      defineCommand: () => {},
      call: async (command: string) => {
        if (command === 'INFO') return '';
        configGets++;
        if (down) throw new Error('Connection is closed.');
        return ['maxmemory-policy', policy];
      },
      pipeline: () => ({}),
      quit: async () => 'OK',
    };
    let now = 0;
    const gate = policyGate({ client, logger: recordingLogger(), enforce: true, now: () => now });
    await gate.readyToBegin();
    expect(configGets).toBe(1);
    policy = 'volatile-lru';
    now = RECHECK_MS - 1;
    await gate.readyToBegin(); // not yet asked again
    expect(configGets).toBe(1);
    now = RECHECK_MS;
    await expect(gate.readyToBegin()).rejects.toBeInstanceOf(ConfigError);
    await expect(gate.readyToBegin()).rejects.toBeInstanceOf(ConfigError); // from memory
    expect(configGets).toBe(2);
    // Other operations (completions of runs begun) are not refused.
    await gate.ready();
    policy = 'noeviction';
    now += REFUSED_RECHECK_MS;
    await gate.readyToBegin();
    expect(configGets).toBe(3);

    // A check that meets an outage (a Cluster master down) does not fail the begin: it goes on
    // as the last check left it, and asks again after REFUSED_RECHECK_MS.
    down = true;
    now += RECHECK_MS;
    await gate.readyToBegin();
    expect(configGets).toBe(4);
    await gate.readyToBegin();
    expect(configGets).toBe(4);
    down = false;
    now += REFUSED_RECHECK_MS;
    await gate.readyToBegin();
    expect(configGets).toBe(5);
  });
});
