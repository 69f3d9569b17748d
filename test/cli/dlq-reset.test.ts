/**
 * `dlq replay --reset-key` on letters a consumer could have written but the happy path never
 * does: an empty key (INVALID_KEY), a key whose record is IN_PROGRESS under a lapsed lease with a
 * journaled step, a key header in another letter case, and the copies of a completed key. Also
 * a bad `--namespace`.
 */
import { type ProcessedStore, recordKeyFor } from '@exactly-once/core';
import { createRedisStore, redisKeyFor } from '@exactly-once/store-redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DeadLetter, refusedAfterReset, resetKey } from '../../packages/cli/src/commands/dlq-common.js';
import { newRedis, rawChannel } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { waitUntil } from '../support/wait.js';
import { cli } from './helpers.js';

const redis = newRedis();
const keyPrefix = uniqueName('eot-cli-reset');
const store = createRedisStore({ client: redis, keyPrefix });
const consumer = uniqueName('cli-reset');
const dlq = uniqueName('cli-reset-dlq');
const target = uniqueName('cli-reset-target');
const storeKey = (key: string) => recordKeyFor({ consumer, key });
const storeArgs = ['--reset-key', '--redis', env.redisUrl, '--redis-prefix', keyPrefix];
let raw: Awaited<ReturnType<typeof rawChannel>>;

const letter = (id: string, code: string, keyHeader: Record<string, string>) =>
  raw.publish(
    dlq,
    { id },
    {
      ...keyHeader,
      'x-eo-error-class': 'Letter',
      'x-eo-error-code': code,
      'x-eo-consumer': consumer,
      'x-eo-original-destination': target,
    },
    id,
  );

/** `dlq replay <ids> --reset-key --json`: its exit code and the result of each letter. */
const replay = async (...ids: string[]) => {
  const run = await cli(['dlq', 'replay', dlq, ...ids, ...storeArgs, '--amqp', env.amqpUrl, '--json']);
  const { results } = JSON.parse(run.stdout) as {
    results: { id: string; reset: string; replayed: boolean }[];
  };
  return { code: run.code, results: results.map((r) => [r.id, r.reset, r.replayed]) };
};

/** A record of `key` ended as `how`: COMPLETED, or FAILED for good. */
const ended = async (key: string, how: 'complete' | 'fail') => {
  const begun = await store.begin({ key: storeKey(key), fingerprint: 'f', owner: 'w', leaseMs: 30_000 });
  if (begun.status !== 'acquired') throw new Error(begun.status);
  if (how === 'complete') {
    await store.complete({ key: storeKey(key), fence: begun.fence, outgoing: [], retentionMs: 60_000 });
  } else {
    const declined = { name: 'E', code: 'PERMANENT', message: 'no warehouse' };
    await store.fail(storeKey(key), begun.fence, declined, 60_000);
  }
};

beforeAll(async () => {
  raw = await rawChannel();
  await raw.ch.assertQueue(dlq, { durable: true });
  await raw.ch.assertQueue(target, { durable: true });
  const lease = { fingerprint: 'f', owner: 'worker-1', leaseMs: 50 };
  // key-ip: an attempt that journaled its charge, then its worker died (the lease lapses).
  const running = await store.begin({ key: storeKey('key-ip'), ...lease });
  if (running.status !== 'acquired') throw new Error(running.status);
  await store.saveStep(storeKey('key-ip'), running.fence, 'charge', Buffer.from('"ch_1"'));
  // key-case: failed for good.
  const failed = await store.begin({ key: storeKey('key-case'), ...lease, leaseMs: 30_000 });
  if (failed.status !== 'acquired') throw new Error(failed.status);
  await store.fail(storeKey('key-case'), failed.fence, { name: 'E', code: 'E', message: 'declined' }, 60_000);
  await letter('l-empty', 'INVALID_KEY', { 'x-idempotency-key': '' });
  await letter('l-running', 'PERMANENT', { 'x-idempotency-key': 'key-ip' });
  await letter('l-case', 'PERMANENT', { 'X-Idempotency-Key': 'key-case' });
  await new Promise((resolve) => setTimeout(resolve, 100));
});

afterAll(async () => {
  await raw?.deleteQueues([dlq, target]);
  await raw?.close();
  await dropRedisPrefix(redis, `${keyPrefix}:`);
  await redis.quit();
});

describe('dlq replay --reset-key on hostile letters (RabbitMQ)', () => {
  it('an empty key is no-key, a lapsed IN_PROGRESS record is kept (busy), a key header in another case is found', async () => {
    // Before: the empty key crashed the command half-way (an untyped InvalidKeyError, exit 1,
    // letters before it replayed and acked, no table); the IN_PROGRESS record was cleared with
    // its journaled charge (the next attempt charged again); the upper-case header read as no key.
    const run = await cli([
      'dlq',
      'replay',
      dlq,
      'l-empty',
      'l-running',
      'l-case',
      ...storeArgs,
      '--amqp',
      env.amqpUrl,
      '--json',
    ]);
    expect(run.stderr).not.toMatch(/unexpected error/);
    const { results } = JSON.parse(run.stdout) as {
      results: { id: string; reset: string; replayed: boolean }[];
    };
    const byId = Object.fromEntries(results.map((r) => [r.id, [r.reset, r.replayed]]));
    expect(byId).toEqual({
      'l-empty': ['no-key', true],
      'l-running': ['busy', false],
      'l-case': ['cleared', true],
    });
    expect(run.code).toBe(1); // one letter was not replayed
    const running = await store.get(storeKey('key-ip'));
    expect(running?.state).toBe('IN_PROGRESS');
    expect(Object.keys(running?.state === 'IN_PROGRESS' ? running.steps : {})).toEqual(['charge']);
    expect(await store.get(storeKey('key-case'))).toBeUndefined();
    // Letters the command read are requeued when its channel closes, a moment after it exits.
    await waitUntil(async () => (await raw.count(dlq)) === 1, { message: 'one letter left in the queue' });
  });

  it('a --namespace the SDK would refuse is a usage error before anything is read', async () => {
    const run = await cli([
      'dlq',
      'replay',
      dlq,
      '--all',
      ...storeArgs,
      '--namespace',
      'bad ns',
      '--amqp',
      env.amqpUrl,
    ]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/--namespace must be/);
    // Letters the command read are requeued when its channel closes, a moment after it exits.
    await waitUntil(async () => (await raw.count(dlq)) === 1, { message: 'one letter left in the queue' });
  });
  it('the copies of a completed key all say kept-completed, not reset-earlier: nothing was reset', async () => {
    // Before: the second letter of the key said `reset-earlier`, as if the first had cleared it.
    await ended('key-done', 'complete');
    await letter('l-done-1', 'PUBLISH_FAILED', { 'x-idempotency-key': 'key-done' });
    await letter('l-done-2', 'PREVIOUSLY_FAILED', { 'x-idempotency-key': 'key-done' });
    await waitUntil(async () => (await raw.count(dlq)) === 3, { message: 'two more letters' });
    expect(await replay('l-done-1', 'l-done-2')).toEqual({
      code: 0,
      results: [
        ['l-done-1', 'kept-completed', true],
        ['l-done-2', 'kept-completed', true],
      ],
    });
    expect((await store.get(storeKey('key-done')))?.state).toBe('COMPLETED');
    await waitUntil(async () => (await raw.count(dlq)) === 1, { message: 'one letter left in the queue' });
  });

  it("a key's IDEMPOTENCY_KEY_REUSE letter neither clears the key nor is replayed: its own letter is", async () => {
    // Before: replaying a failed key's PERMANENT letter and the letter of another payload sent
    // under the same key, both with --reset-key, cleared the key and replayed both; the two raced
    // and the other payload became the key's (an order shipped with the wrong quantity).
    await ended('key-two', 'fail');
    await letter('l-two-reuse', 'IDEMPOTENCY_KEY_REUSE', { 'x-idempotency-key': 'key-two' });
    await letter('l-two-own', 'PERMANENT', { 'x-idempotency-key': 'key-two' });
    await waitUntil(async () => (await raw.count(dlq)) === 3, { message: 'two more letters' });
    expect(await replay('l-two-reuse', 'l-two-own')).toEqual({
      code: 1, // one letter was not replayed
      results: [
        ['l-two-reuse', 'different-payload', false],
        ['l-two-own', 'cleared', true],
      ],
    });
    await waitUntil(async () => (await raw.count(dlq)) === 2, {
      message: 'the reuse letter back in the queue',
    });
  });

  it("a CORRUPT_RECORD letter's damaged key is reported for that letter alone; the others are replayed", async () => {
    // Before: the damaged record's CorruptRecordError stopped the whole replay at that letter.
    await redis.rpush(redisKeyFor(keyPrefix, storeKey('key-damaged')), 'not a record');
    await ended('key-fine', 'fail');
    await letter('l-damaged', 'CORRUPT_RECORD', { 'x-idempotency-key': 'key-damaged' });
    await letter('l-fine', 'PERMANENT', { 'x-idempotency-key': 'key-fine' });
    await waitUntil(async () => (await raw.count(dlq)) === 4, { message: 'two more letters' });
    expect(await replay('l-damaged', 'l-fine')).toEqual({
      code: 1, // one letter was not replayed
      results: [
        ['l-damaged', 'damaged', false],
        ['l-fine', 'cleared', true],
      ],
    });
    expect(await redis.type(redisKeyFor(keyPrefix, storeKey('key-damaged')))).toBe('list');
  });
});

describe('--reset-key beside a second replay of the same letter', () => {
  it('a record completed between the read and the clear is kept (changed), not cleared and run again', async () => {
    // Before: the check (get: FAILED) and the clear were two calls; a second replay that cleared
    // the record in between, and whose copy COMPLETED the key, had that record cleared, and this
    // replay's copy ran the handler a second time.
    await ended('key-race', 'fail');
    const interleaved: ProcessedStore = {
      ...store,
      get: async (key) => {
        const read = await store.get(key);
        // The other replay, between this one's read and its clear: reset, then processed.
        expect(await store.clear(key)).toBe('cleared');
        const begun = await store.begin({ key, fingerprint: 'f', owner: 'w2', leaseMs: 30_000 });
        if (begun.status !== 'acquired') throw new Error(begun.status);
        await store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 60_000 });
        return read;
      },
      clear: (key, options) => store.clear(key, options),
    };
    const raced: DeadLetter = {
      id: 'l-race',
      key: 'key-race',
      reason: { errorCode: 'PERMANENT', consumer },
      origin: { destination: target },
      headers: { 'x-idempotency-key': 'key-race' },
      body: Buffer.from('{"id":"l-race"}'),
    };
    expect(await resetKey(interleaved, raced, 'default')).toBe('changed');
    expect(refusedAfterReset('changed')).toMatch(/changed while it was being reset/);
    expect(await store.get(storeKey('key-race'))).toMatchObject({ state: 'COMPLETED' });
  });
});
