/**
 * The publisher's life cycle against the real broker: after `close()` every call is refused at
 * once with a ClosedError, instead of looking for a channel until `publishTimeoutMs` runs out.
 */
import { createHash } from 'node:crypto';
import { ClosedError, ErrorCode, Headers, PublishError, readIdentityHeader } from '@exactly-once/core';
import { createPublisher } from '@exactly-once/rabbitmq';
import amqp from 'amqp-connection-manager';
import { describe, expect, it } from 'vitest';
import { env } from '../support/env.js';
import { expectUnusableKeysRefused } from '../support/unusable-keys.js';
import { rawChannel } from './helpers.js';

/**
 * Settles `p`, counting the event-loop turns (setImmediate callbacks) that ran meanwhile. A call
 * refused at once settles within a turn or two; one that polls for a channel keeps the loop
 * busy (each poll is a turn) or starves it, and then settles only at its deadline.
 */
async function settleCountingTurns(p: Promise<unknown>): Promise<{ error: unknown; turns: number }> {
  let turns = 0;
  let done = false;
  const turn = () => {
    if (done) return;
    turns++;
    setImmediate(turn);
  };
  setImmediate(turn);
  const error = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  done = true;
  return { error, turns };
}

const outgoing = (destination: string) => ({
  id: 'm-1',
  destination,
  body: Buffer.from('{}'),
  headers: { 'x-idempotency-key': 'k-1' },
});

function expectClosed(error: unknown) {
  expect(error).toBeInstanceOf(ClosedError);
  expect(error).toMatchObject({ code: ErrorCode.Closed, retryable: false });
}

describe('rabbitmq publisher and what AMQP cannot encode', () => {
  // Found by a review: amqplib takes a message's place in the confirm order before encoding it;
  // an encoding error left that place empty, every later confirm on the channel answered the
  // publish before it, and the publisher retried the message at once, without yielding, until
  // publishTimeoutMs (the event loop frozen: no heartbeats, no lease extensions).
  it('sends a message whose key is over 255 bytes; refuses one it cannot encode at once; later publishes still confirm', async () => {
    const queue = `rmq-encode-${Date.now()}`;
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const publisher = createPublisher({ connection: env.amqpUrl, publishTimeoutMs: 5_000 });
    try {
      await publisher.ready();
      await publisher.send(queue, { n: 1 }, { idempotencyKey: 'k'.repeat(300) });
      const unencodable = {
        ...outgoing(queue),
        headers: { 'x-idempotency-key': 'k-2', ['h'.repeat(300)]: 'x' },
      };
      const { error, turns } = await settleCountingTurns(publisher.publish([unencodable]));
      expect(error).toBeInstanceOf(PublishError);
      expect(String((error as Error).message)).toMatch(/cannot be encoded/);
      expect(turns).toBeLessThanOrEqual(20);
      await publisher.send(queue, { n: 3 }, { idempotencyKey: 'k-3' });
      const got = await raw.drain(queue);
      expect(got.map((m) => String(m.properties.headers?.['x-idempotency-key']).slice(0, 3))).toEqual([
        'kkk',
        'k-3',
      ]);
      expect(String(got[0]?.properties.messageId)).toMatch(/^sha256:[0-9a-f]{64}$/);
    } finally {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});

describe('rabbitmq publisher and keys the consumers refuse', () => {
  // Found by a review: send confirmed an empty key, and every consumer dead-lettered the
  // message as KEY_MISSING; the sender was never told.
  it('send refuses an empty key or request id, or one that is not UTF-8, with InvalidKeyError and sends nothing', async () => {
    const queue = `rmq-badkey-${Date.now()}`;
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const publisher = createPublisher({ connection: env.amqpUrl, publishTimeoutMs: 5_000 });
    try {
      await expectUnusableKeysRefused((idempotencyKey) =>
        publisher.send(queue, { n: 1 }, { idempotencyKey }),
      );
      // A request id is checked as the consumers check it: it is also the key when none is given.
      await expectUnusableKeysRefused((requestId) => publisher.send(queue, { n: 1 }, { requestId }));
      await expectUnusableKeysRefused((requestId) =>
        publisher.send(queue, { n: 1 }, { requestId, idempotencyKey: 'k-valid' }),
      );
      await publisher.send(queue, { n: 2 }, { idempotencyKey: 'k-ok' });
      const got = await raw.drain(queue);
      expect(got.map((m) => m.properties.headers?.['x-idempotency-key'])).toEqual(['k-ok']);
    } finally {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});

describe('rabbitmq publisher and a long request id', () => {
  it('send answers and sends a request id past 255 bytes as the sha256 form consumers read it as', async () => {
    // Before: the 300-byte id went out and came back as given, while every consumer logged and
    // traced it as sha256:<hex>: the sender's logs named a request id no service had.
    const queue = `rmq-long-id-${Date.now()}`;
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const publisher = createPublisher({ connection: env.amqpUrl, publishTimeoutMs: 5_000 });
    const given = `req-${'r'.repeat(300)}`;
    try {
      const sent = await publisher.send(queue, { n: 1 }, { requestId: given });
      expect(sent.requestId).toBe(`sha256:${createHash('sha256').update(given).digest('hex')}`);
      // The key defaults to the request id as given: consumers hash a long key themselves.
      expect(sent.idempotencyKey).toBe(given);
      const [got] = await raw.drain(queue);
      expect(String(got?.properties.headers?.['x-request-id'])).toBe(sent.requestId);
      expect(String(got?.properties.headers?.['x-idempotency-key'])).toBe(given);
    } finally {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});

describe('rabbitmq publisher headers', () => {
  it("an extra header naming the SDK's own in another letter case is dropped: consumers read one key", async () => {
    // Before: `X-Request-Id` went out beside `x-request-id`, and every consumer dead-lettered the
    // message as INVALID_KEY (the name present twice).
    const queue = `rmq-headers-${Date.now()}`;
    const raw = await rawChannel();
    await raw.ch.assertQueue(queue, { durable: true });
    const publisher = createPublisher({ connection: env.amqpUrl });
    try {
      await publisher.send(
        queue,
        { n: 1 },
        {
          idempotencyKey: 'k1',
          headers: { 'X-Request-Id': 'mine', 'X-IDEMPOTENCY-KEY': 'other', tenant: 't1' },
        },
      );
      const [got] = await raw.drain(queue);
      const headers = (got?.properties.headers ?? {}) as Record<string, unknown>;
      expect(readIdentityHeader(headers as never, Headers.IdempotencyKey)).toBe('k1');
      expect(readIdentityHeader(headers as never, Headers.RequestId)).not.toBe('mine');
      expect(headers.tenant).toBe('t1');
      // A misspelt option is refused, not sent under a random key (the receivers' deduplication lost).
      await expect(publisher.send(queue, { n: 2 }, { idempotencykey: 'k2' } as never)).rejects.toThrow(
        'unknown option "idempotencykey" in send options (did you mean "idempotencyKey"?)',
      );
      expect(await raw.count(queue)).toBe(0);
    } finally {
      await publisher.close();
      await raw.deleteQueues([queue]);
      await raw.close();
    }
  });
});

describe('rabbitmq publisher after close()', () => {
  it('send, publish and ready reject at once with ClosedError (its own connection)', async () => {
    // A long timeout: a publisher that waits for a channel instead of refusing fails the test
    // by timing out or by settling with another error after it.
    const publisher = createPublisher({ connection: env.amqpUrl, publishTimeoutMs: 2_000 });
    await publisher.ready();
    await publisher.close();
    for (const call of [
      () => publisher.send('some-queue', { a: 1 }),
      () => publisher.send('amq.direct', { a: 1 }, { routingKey: 'x' }),
      () => publisher.publish([outgoing('some-queue')]),
      () => publisher.ready(),
    ]) {
      const { error, turns } = await settleCountingTurns(call());
      expectClosed(error);
      expect(turns).toBeLessThanOrEqual(3);
    }
    await publisher.close(); // twice is fine
  });

  it('on a shared connection that stays open, a closed publisher neither polls nor opens channels', async () => {
    const manager = amqp.connect([env.amqpUrl]);
    try {
      const publisher = createPublisher({ connection: manager, publishTimeoutMs: 2_000 });
      await publisher.ready();
      await publisher.close();
      const { error, turns } = await settleCountingTurns(
        publisher.send('amq.direct', { a: 1 }, { routingKey: 'x' }),
      );
      expectClosed(error);
      expect(turns).toBeLessThanOrEqual(3);
    } finally {
      await manager.close();
    }
  });

  it('a publish still waiting for a channel when close() is called rejects with ClosedError', async () => {
    // Nothing listens on port 1: the publisher never gets a channel and waits for one.
    const publisher = createPublisher({ connection: 'amqp://127.0.0.1:1', publishTimeoutMs: 5_000 });
    const pending = publisher.publish([outgoing('some-queue')]);
    pending.catch(() => {});
    await new Promise((r) => setImmediate(r));
    const closing = publisher.close();
    const { error, turns } = await settleCountingTurns(pending);
    await closing;
    expectClosed(error);
    expect(turns).toBeLessThanOrEqual(3);
  });
});

describe('rabbitmq publisher without a broker', () => {
  it('a publish that found no channel says it waited the whole publishTimeoutMs', async () => {
    // Nothing listens on port 1. The wait for a channel is retried with what is left of the
    // deadline: the message once named only the last, 1 ms, wait.
    const publisher = createPublisher({ connection: 'amqp://127.0.0.1:1', publishTimeoutMs: 1_500 });
    try {
      const error = await publisher.publish([outgoing('some-queue')]).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PublishError);
      expect((error as Error).message).toMatch(
        /^publish to some-queue was not confirmed within publishTimeoutMs \(1500 ms\): no channel to the broker opened in that time$/,
      );
    } finally {
      await publisher.close();
    }
  });
});
