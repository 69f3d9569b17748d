/** Option checks at construction (a real kafkajs client; nothing connects before start()). */
import { ConfigError, createMemoryStore } from '@exactly-once/core';
import { Kafka, logLevel } from 'kafkajs';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { createConsumer, type KafkaConsumerOptions } from '../src/consumer.js';
import { createProducer } from '../src/producer.js';

const kafka = new Kafka({ brokers: ['127.0.0.1:9092'], logLevel: logLevel.NOTHING });
const base: KafkaConsumerOptions = {
  kafka,
  groupId: 'billing',
  topics: ['orders'],
  deadLetter: { topic: 'orders.dlq' },
  store: createMemoryStore(),
  handler: () => {},
};

function configError(options: Partial<KafkaConsumerOptions>): ConfigError {
  try {
    createConsumer({ ...base, ...options });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`accepted ${JSON.stringify({ ...options, kafka: undefined, store: undefined })}`);
}

describe('kafka consumer options', () => {
  it('infers the payload type from a schema', () => {
    createConsumer({
      kafka,
      groupId: 'billing',
      topics: ['orders'],
      deadLetter: { topic: 'orders.dlq' },
      store: createMemoryStore(),
      schema: z.object({ orderId: z.string(), amount: z.number() }),
      handler: (order) => {
        expectTypeOf(order).toEqualTypeOf<{ orderId: string; amount: number }>();
      },
    });
  });

  it('refuses a retry topic that is the dead-letter topic: dead letters would be consumed and loop', () => {
    const e = configError({ retryTopic: 'orders.dlq' });
    expect(e.message).toMatch(/retryTopic .*orders\.dlq.* deadLetter\.topic/);
    expect(e.message).toMatch(/separate topic/);
  });

  it('refuses a retry topic that is one of the consumed topics', () => {
    const e = configError({ topics: ['orders', 'orders.retry'], retryTopic: 'orders.retry' });
    expect(e.message).toMatch(/retryTopic .*orders\.retry.* topics/);
    expect(e.message).toMatch(/remove it from topics/i);
  });

  it("refuses an option name it does not know, the adapter's own and core's alike", () => {
    expect(configError({ partitionsConsumedConcurently: 4 } as never).message).toBe(
      'unknown option "partitionsConsumedConcurently" (did you mean "partitionsConsumedConcurrently"?)',
    );
    expect(configError({ leaseMS: 5_000 } as never).message).toMatch(/did you mean "leaseMs"/);
  });

  it("refuses an unknown option name of the producer's, of a send's and of deadLetter's", async () => {
    expect(() => createProducer({ kafka, timeoutMS: 5 } as never)).toThrow('(did you mean "timeoutMs"?)');
    // Before: a misspelt idempotencyKey sent the record under its request id, unnoticed.
    const producer = createProducer({ kafka });
    await expect(producer.send('orders', {}, { idempotencyKy: 'k' } as never)).rejects.toThrow(
      'unknown option "idempotencyKy" in send options (did you mean "idempotencyKey"?)',
    );
    await producer.disconnect();
    expect(configError({ deadLetter: { topc: 'orders.dlq' } } as never).message).toBe(
      'unknown option "deadLetter.topc" (did you mean "deadLetter.topic"?)',
    );
  });

  it("refuses reading uncommitted records (an aborted transaction's records would be handled), in either layout", () => {
    for (const consumerConfig of [
      { readUncommitted: true },
      { kafkaJS: { readUncommitted: true } },
      { 'isolation.level': 'read_uncommitted' },
    ]) {
      expect(configError({ consumerConfig }).message).toMatch(/aborted transactions/);
    }
    createConsumer({ ...base, consumerConfig: { readUncommitted: false } });
  });

  it('refuses partitionsConsumedConcurrently below 1 (no partition would ever be processed)', () => {
    expect(configError({ partitionsConsumedConcurrently: 0 }).message).toMatch(/integer >= 1 \(got 0\)/);
    expect(configError({ partitionsConsumedConcurrently: 1.5 }).message).toMatch(/integer >= 1/);
  });

  it('refuses an empty retry topic', () => {
    expect(configError({ retryTopic: '' }).message).toMatch(/retryTopic/);
  });

  it('still refuses a dead-letter topic that is consumed', () => {
    expect(configError({ topics: ['orders', 'orders.dlq'] }).message).toMatch(/deadLetter\.topic/);
  });

  it('accepts distinct retry and dead-letter topics', () => {
    expect(() => createConsumer({ ...base, retryTopic: 'orders.retry' })).not.toThrow();
  });

  it('names the consumer after the group, and says so when the group id cannot be a consumer name', () => {
    expect(createConsumer(base).processor.options.consumer).toBe('billing');
    expect(configError({ groupId: 'billing/eu' }).message).toMatch(/groupId .*set consumer explicitly/);
    expect(
      createConsumer({ ...base, groupId: 'billing/eu', consumer: 'billing-eu' }).processor.options.consumer,
    ).toBe('billing-eu');
  });
});
