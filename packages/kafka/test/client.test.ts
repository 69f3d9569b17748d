/**
 * The client bridge with stand-ins for both clients: which one a `Kafka` is, where options go,
 * and how the librdkafka client's batch payload is turned into the kafkajs contract. The real
 * clients run the same paths against the broker in test/kafka.
 */
import { describe, expect, it, vi } from 'vitest';
import {
  consumerClient,
  type EachBatchPayloadLike,
  isRebalanceError,
  type KafkaLike,
  kafkaErrorTags,
  producerClient,
} from '../src/client.js';

const KAFKAJS_CONSUMER_KEYS = ['groupId', 'sessionTimeout', 'maxWaitTimeInMs', 'fromBeginning', 'autoCommit'];

/** Refuses kafkajs' keys at the top level, as `@confluentinc/kafka-javascript` does. */
function confluentStandIn() {
  const consumers: { config: Record<string, unknown>; consumer: ReturnType<typeof fakeConsumer> }[] = [];
  // `dependentAdmin` is an API of the librdkafka client only.
  const producers: { config: Record<string, unknown>; sendBatch: ReturnType<typeof vi.fn> }[] = [];
  const refuse = (config: Record<string, unknown>, keys: string[]) => {
    const key = Object.keys(config).find((k) => keys.includes(k));
    if (key)
      throw new Error(`The '${key}' property seems to be a KafkaJS property in the main config block.`);
  };
  const kafka = {
    consumer(config: Record<string, unknown>) {
      refuse(config, KAFKAJS_CONSUMER_KEYS);
      const consumer = { ...fakeConsumer(), dependentAdmin() {} };
      consumers.push({ config, consumer });
      return consumer;
    },
    producer(config: Record<string, unknown>) {
      refuse(config, ['idempotent', 'maxInFlightRequests', 'timeout']);
      const sendBatch = vi.fn(async (batch: { topicMessages: { messages: { headers?: unknown }[] }[] }) => {
        // Like the real client: rewrites the records it is given.
        for (const t of batch.topicMessages) for (const m of t.messages) m.headers = [{ rewritten: 'yes' }];
      });
      producers.push({ config, sendBatch });
      return { connect: async () => {}, disconnect: async () => {}, sendBatch, dependentAdmin() {} };
    },
  };
  return { kafka: kafka as unknown as KafkaLike, consumers, producers };
}

function fakeConsumer() {
  return {
    run: vi.fn(async (_config: { eachBatch: (p: unknown) => Promise<void> }) => {}),
    subscribe: vi.fn(async () => {}),
    commitOffsets: vi.fn(async () => {}),
    connect: async () => {},
    disconnect: async () => {},
  };
}

function rawPayload(topic: string, partition: number) {
  return {
    batch: { topic, partition, messages: [] },
    resolveOffset: vi.fn(),
    heartbeat: async () => {},
    pause: vi.fn(() => () => {
      throw new Error('Resume can only be called while connected.');
    }),
    commitOffsetsIfNecessary: vi.fn(async () => {}),
    isRunning: () => true,
    isStale: () => false,
  };
}

describe('client bridge', () => {
  it('passes kafkajs its own layout: fromBeginning on subscribe, no auto-commit on run', async () => {
    const consumer = fakeConsumer();
    const kafka = { consumer: vi.fn(() => consumer), producer: vi.fn() } as unknown as KafkaLike;
    const client = consumerClient(kafka, { groupId: 'g', sessionTimeout: 6000 }, { fromBeginning: true });
    expect(client.kind).toBe('kafkajs');
    expect(kafka.consumer).toHaveBeenCalledWith({
      maxWaitTimeInMs: 1000,
      groupId: 'g',
      sessionTimeout: 6000,
    });
    await client.subscribe(['t']);
    expect(consumer.subscribe).toHaveBeenCalledWith({ topics: ['t'], fromBeginning: true });
    const eachBatch = async () => {};
    await client.run(4, eachBatch);
    expect(consumer.run).toHaveBeenCalledWith({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 4,
      eachBatch,
    });
  });

  it("passes on kafkajs' crash event with whether kafkajs restarts the consumer", () => {
    const listeners: ((event: unknown) => void)[] = [];
    const consumer = {
      ...fakeConsumer(),
      events: { CRASH: 'consumer.crash' },
      on: (name: string, fn: (event: unknown) => void) => {
        if (name === 'consumer.crash') listeners.push(fn);
      },
    };
    const kafka = { consumer: () => consumer, producer: vi.fn() } as unknown as KafkaLike;
    const client = consumerClient(kafka, { groupId: 'g' }, { fromBeginning: false });
    const crashes: [unknown, boolean | undefined][] = [];
    client.onCrash((error, restart) => crashes.push([error, restart]));
    const error = new Error('boom');
    for (const fn of listeners) {
      fn({ payload: { error, groupId: 'g', restart: true } });
      fn({ payload: { error, groupId: 'g', restart: false } });
      fn({ payload: { error } });
    }
    expect(crashes).toEqual([
      [error, true],
      [error, false],
      [error, undefined],
    ]);
  });

  it('detects @confluentinc/kafka-javascript and moves kafkajs options into its kafkaJS block', async () => {
    const { kafka, consumers } = confluentStandIn();
    const client = consumerClient(
      kafka,
      { groupId: 'g', sessionTimeout: 6000, 'fetch.wait.max.ms': 100, kafkaJS: { rackId: 'r1' } },
      { fromBeginning: true },
    );
    expect(client.kind).toBe('confluent');
    const { config, consumer } = consumers[0] as (typeof consumers)[number];
    expect(config.kafkaJS).toEqual({
      rackId: 'r1',
      groupId: 'g',
      sessionTimeout: 6000,
      fromBeginning: true,
      autoCommit: false,
    });
    expect(config['fetch.wait.max.ms']).toBe(100);
    expect(typeof config.rebalance_cb).toBe('function');
    await client.subscribe(['t']);
    expect(consumer.subscribe).toHaveBeenCalledWith({ topics: ['t'] });
    await client.run(2, async () => {});
    const runConfig = consumer.run.mock.calls[0]?.[0] as Record<string, unknown>;
    expect(runConfig).not.toHaveProperty('autoCommit');
    expect(runConfig).toMatchObject({ eachBatchAutoResolve: false, partitionsConsumedConcurrently: 2 });
  });

  it('confluent batches: explicit commits through the consumer, revocation as isStale, safe resume', async () => {
    const { kafka, consumers } = confluentStandIn();
    const userRebalance = vi.fn();
    const client = consumerClient(
      kafka,
      { groupId: 'g', rebalance_cb: userRebalance },
      { fromBeginning: false },
    );
    const { config, consumer } = consumers[0] as (typeof consumers)[number];
    let seen: EachBatchPayloadLike | undefined;
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    await client.run(1, async (payload) => {
      seen = payload;
      await held;
      throw Object.assign(new Error('rebalance'), { code: 27 }); // swallowed: librdkafka rejoins itself
    });
    const eachBatch = consumer.run.mock.calls[0]?.[0].eachBatch as (p: unknown) => Promise<void>;
    const raw = rawPayload('t', 3);
    const running = eachBatch(raw);
    await vi.waitFor(() => expect(seen).toBeDefined());
    const payload = seen as EachBatchPayloadLike;

    await payload.commitOffsetsIfNecessary({
      topics: [{ topic: 't', partitions: [{ partition: 3, offset: '8' }] }],
    });
    expect(consumer.commitOffsets).toHaveBeenCalledWith([{ topic: 't', partition: 3, offset: '8' }]);
    expect(raw.commitOffsetsIfNecessary).not.toHaveBeenCalled();
    payload.resolveOffset('7');
    expect(raw.resolveOffset).toHaveBeenCalledWith('7');
    expect(() => payload.pause()()).not.toThrow();

    const rebalance = config.rebalance_cb as (
      e: { code: number },
      a: { topic: string; partition: number }[],
    ) => void;
    rebalance({ code: -174 }, [{ topic: 't', partition: 2 }]);
    expect(payload.isStale()).toBe(false);
    rebalance({ code: -174 }, [{ topic: 't', partition: 3 }]);
    expect(payload.isStale()).toBe(true);
    expect(userRebalance).toHaveBeenCalledTimes(2);

    release();
    await expect(running).resolves.toBeUndefined();
  });

  it('confluent producer: acks and timeout as producer options, copies of the records per send', async () => {
    const { kafka, producers } = confluentStandIn();
    const client = producerClient(kafka, { 'linger.ms': 1, compression: 4 }, 5000);
    expect(client).toMatchObject({ kind: 'confluent', batchesSends: true });
    const { config, sendBatch } = producers[0] as (typeof producers)[number];
    expect(config).toEqual({
      'linger.ms': 1,
      kafkaJS: { compression: 4, idempotent: true, acks: -1, timeout: 5000 },
    });
    const record = { key: 'k', value: Buffer.from('v'), headers: { a: 'b' } };
    await client.send([{ topic: 't', messages: [record] }]);
    expect(sendBatch.mock.calls[0]?.[0]).not.toHaveProperty('acks');
    expect(sendBatch.mock.calls[0]?.[0]).not.toHaveProperty('timeout');
    expect(record.headers).toEqual({ a: 'b' });
  });

  it('kafkajs producer: idempotent, one request in flight, acks and timeout per send', async () => {
    const sendBatch = vi.fn(async () => {});
    const producer = vi.fn(() => ({ connect: async () => {}, disconnect: async () => {}, sendBatch }));
    const client = producerClient({ consumer: vi.fn(), producer } as unknown as KafkaLike, {}, 5000);
    expect(client).toMatchObject({ kind: 'kafkajs', batchesSends: false });
    expect(producer).toHaveBeenCalledWith({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: expect.any(Function),
    });
    await client.send([{ topic: 't', messages: [] }]);
    expect(sendBatch).toHaveBeenCalledWith({
      topicMessages: [{ topic: 't', messages: [] }],
      acks: -1,
      timeout: 5000,
    });
  });

  it('kafkajs producer: a record keeps the partition first chosen for it when asked again (a retry)', () => {
    const producer = vi.fn((_config: { createPartitioner: () => (args: object) => number }) => ({
      connect: async () => {},
      disconnect: async () => {},
      sendBatch: async () => {},
    }));
    // A partitioner of the caller's that answers the next partition each time (kafkajs' default
    // does so for records without a key).
    let next = 0;
    const roundRobin = () => () => next++ % 3;
    producerClient(
      { consumer: vi.fn(), producer } as unknown as KafkaLike,
      { createPartitioner: roundRobin },
      5000,
    );
    const partition = producer.mock.calls[0]?.[0].createPartitioner();
    if (!partition) throw new Error('no partitioner');
    const partitionMetadata = [0, 1, 2].map((partitionId) => ({ partitionId, leader: 1 }));
    const a = { value: 'a' };
    const b = { value: 'b' };
    const first = [a, b].map((message) => partition({ topic: 't', partitionMetadata, message }));
    expect(first).toEqual([0, 1]);
    // The retry asks again for the same record objects: same answers, the caller's not asked.
    expect([a, b].map((message) => partition({ topic: 't', partitionMetadata, message }))).toEqual(first);
    expect(partition({ topic: 't', partitionMetadata, message: { value: 'c' } })).toBe(2);
  });

  it('recognises rebalance errors of both clients', () => {
    expect(isRebalanceError({ type: 'REBALANCE_IN_PROGRESS' })).toBe(true);
    expect(isRebalanceError({ type: 'ERR_UNKNOWN', code: 16 })).toBe(true);
    expect(isRebalanceError({ type: 'ERR_ILLEGAL_GENERATION', code: 22 })).toBe(true);
    expect(isRebalanceError({ type: 'ERR__TRANSPORT', code: -195 })).toBe(false);
    expect(isRebalanceError(new Error('x'))).toBe(false);
    expect(isRebalanceError(null)).toBe(false);
  });

  it("reads a client's own tags off an error for logs, through kafkajs' retry wrapper", () => {
    // librdkafka: "Broker: Message size too large" from the broker or from the client's own limit.
    expect(kafkaErrorTags({ type: 'ERR_MSG_SIZE_TOO_LARGE', code: 10 })).toEqual({
      type: 'ERR_MSG_SIZE_TOO_LARGE',
      code: 10,
    });
    const protocol = Object.assign(
      new Error('The request included a message larger than the max message size'),
      {
        type: 'MESSAGE_TOO_LARGE',
      },
    );
    expect(kafkaErrorTags(Object.assign(new Error('retries exceeded'), { originalError: protocol }))).toEqual(
      {
        type: 'MESSAGE_TOO_LARGE',
      },
    );
    expect(kafkaErrorTags(new Error('plain'))).toBeUndefined();
    expect(kafkaErrorTags(undefined)).toBeUndefined();
  });
});
