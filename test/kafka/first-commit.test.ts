/**
 * Where the group's position on a partition starts and how far its commits go, against the real
 * broker: partitions the group never committed (with the default `fromBeginning: false`, a
 * position the consumer pins on assignment), a committed position the log no longer holds, and a
 * topic written in transactions (commits past the markers). Each test names what was skipped,
 * never processed, before.
 */

import type { Logger } from '@exactly-once/core';
import {
  createConsumer,
  type KafkaConsumer,
  type KafkaConsumerOptions,
  type KafkaLike,
} from '@exactly-once/kafka';
import { createRedisStore } from '@exactly-once/store-redis';
import type { Redis } from 'ioredis';
import type { Admin, EachBatchHandler, Kafka } from 'kafkajs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIENTS,
  clientKafka,
  committed,
  createTopics,
  dropStorePrefixes,
  fastGroup,
  newKafka,
  newRedis,
  quietLogger,
  storePrefix,
  uniqueName,
  waitUntil,
} from './helpers.js';

let kafka: Kafka;
let admin: Admin;
let redis: Redis;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  kafka = newKafka('first-commit-test');
  admin = kafka.admin();
  await admin.connect();
  redis = newRedis();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

afterAll(async () => {
  await admin?.disconnect();
  if (redis) await dropStorePrefixes(redis);
  await redis?.quit();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function produce(topic: string, key: string, partition?: number): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  await producer.send({
    topic,
    acks: -1,
    messages: [{ value: JSON.stringify({ amount: 1 }), headers: { 'x-idempotency-key': key }, partition }],
  });
  await producer.disconnect();
}

/**
 * A consumer of `topic` (dead letters to `<topic>.dlq`) noting each key it handles in `handled`,
 * unless given a handler of its own.
 */
function noting(
  kafkaOf: KafkaLike,
  {
    topic,
    handled,
    ...options
  }: { topic: string; handled: string[] } & Omit<
    KafkaConsumerOptions<{ amount: number }>,
    'kafka' | 'topics' | 'deadLetter' | 'store' | 'handler'
  > & { keyPrefix?: string; handler?: KafkaConsumerOptions<{ amount: number }>['handler'] },
): KafkaConsumer {
  const { keyPrefix = storePrefix(), ...rest } = options;
  return createConsumer<{ amount: number }>({
    kafka: kafkaOf,
    topics: [topic],
    deadLetter: { topic: `${topic}.dlq` },
    store: createRedisStore({ client: redis, keyPrefix }),
    consumerConfig: fastGroup,
    logger: quietLogger,
    retentionCheck: 'off',
    handler: (_p, ctx) => {
      handled.push(ctx.key);
    },
    ...rest,
  });
}

/**
 * A, the group's first member, settles `<name>-0` on partition 0 of a new two-partition topic and
 * stops; `meanwhile` runs while no member does and writes `<name>-1`; B then starts on the same
 * group. Answers the keys handled once `<name>-1` is among them.
 */
async function acrossARestart(
  client: (typeof CLIENTS)[number],
  name: string,
  meanwhile: (topic: string) => Promise<void>,
): Promise<string[]> {
  const topic = uniqueName(name);
  const groupId = uniqueName(`${name}-group`);
  await createTopics(admin, [topic, `${topic}.dlq`], 2);
  const keyPrefix = storePrefix();
  const handled: string[] = [];
  const make = () => noting(clientKafka(client, `${name}-test`), { topic, groupId, keyPrefix, handled });
  const a = make();
  await a.start();
  await joined(groupId);
  await produce(topic, `${name}-0`, 0);
  await waitUntil(() => a.stats.acked === 1, { message: 'A settled the record of partition 0' });
  await a.stop();
  await meanwhile(topic);
  const b = make();
  cleanups.push(() => b.stop());
  await b.start();
  await waitUntil(() => handled.includes(`${name}-1`), {
    timeoutMs: 30_000,
    message: () => `B processed the record written while the group was down (handled: ${handled})`,
  });
  return handled;
}

/**
 * A, the group's first member, commits `<name>-0` on a new one-partition topic and stops; then
 * `<name>-1` to `<name>-<written>` are written and the records before offset `deletedBefore`
 * deleted, as a retention would while the group is down.
 */
async function committedThenDeleted(
  kafkaOf: KafkaLike,
  name: string,
  written: number,
  deletedBefore: number,
) {
  const topic = uniqueName(name);
  const groupId = uniqueName(`${name}-group`);
  await createTopics(admin, [topic, `${topic}.dlq`], 1);
  const keyPrefix = storePrefix();
  const handled: string[] = [];
  const a = noting(kafkaOf, { topic, groupId, keyPrefix, handled });
  await a.start();
  await joined(groupId); // the new group's position on the empty partition is set (its end)
  await produce(topic, `${name}-0`, 0);
  await waitUntil(async () => (await committed(admin, groupId, topic)).get(0) === 1, {
    message: `A committed ${name}-0`,
  });
  await a.stop();
  for (let i = 1; i <= written; i++) await produce(topic, `${name}-${i}`, 0);
  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: String(deletedBefore) }] });
  return { topic, groupId, keyPrefix, handled };
}

/** `errors` holds one error, the one saying records were deleted before the group processed them. */
function expectOneLoss(errors: Record<string, unknown>[], fields: Record<string, number>): void {
  expect(errors).toEqual([
    expect.objectContaining({
      message: expect.stringMatching(/^records were deleted by the topic's retention/),
      ...fields,
    }),
  ]);
}

/** Raises `topic` to `count` partitions and waits until the cluster's metadata has them all. */
async function addPartition(topic: string, count: number): Promise<void> {
  await admin.createPartitions({ topicPartitions: [{ topic, count }] });
  await waitUntil(
    async () => {
      const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
      const partitions = topics[0]?.partitions ?? [];
      return partitions.length === count && partitions.every((p) => p.leader >= 0);
    },
    { message: `${topic} has ${count} partitions` },
  );
}

/** Waits until the group is stable and its new member's positions are set. */
async function joined(groupId: string): Promise<void> {
  await waitUntil(async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Stable', {
    message: 'the member joined',
  });
  await sleep(1_500);
}

/**
 * A runs a record of a never-committed partition, stop() gives its run up before any commit;
 * then B, started on the same group, must read it again: were nothing committed, it would start
 * at the partition's end, after the record.
 */
async function givenUpBeforeAnyCommit(client: Kafka, logger: Logger = quietLogger): Promise<void> {
  const topic = uniqueName('first-commit');
  const groupId = uniqueName('first-commit-group');
  await createTopics(admin, [topic, `${topic}.dlq`], 1);
  const keyPrefix = storePrefix();
  const completed: string[] = [];
  const make = (name: string, handlerMs: number, kafkaOf: Kafka): KafkaConsumer =>
    createConsumer<{ amount: number }>({
      kafka: kafkaOf,
      groupId,
      topics: [topic],
      deadLetter: { topic: `${topic}.dlq` },
      store: createRedisStore({ client: redis, keyPrefix }),
      consumerConfig: fastGroup,
      logger,
      leaseMs: 2_000,
      retentionCheck: 'off',
      handler: async (_p, ctx) => {
        await sleep(handlerMs);
        completed.push(`${name} ${ctx.key}`);
      },
    });
  const a = make('A', 5_000, client);
  await a.start();
  // The member has joined and its position on the empty partition is set (its end).
  await waitUntil(async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Stable', {
    message: 'A joined',
  });
  await sleep(1_500);
  await produce(topic, 'fc-1');
  await waitUntil(() => a.stats.received === 1, { message: 'A fetched the record' });
  await a.stop({ timeoutMs: 200 }); // its run is given up, nothing committed by it
  const b = make('B', 0, kafka);
  cleanups.push(() => b.stop());
  await b.start();
  // B must read the record again and settle it: it runs it if A's handler had not started yet
  // (its lease was given back); if it had, A's run goes on in the background holding the key, and
  // B acks the record as a duplicate once it completed. Either way the handler ran once.
  await waitUntil(() => b.stats.acked === 1, { timeoutMs: 60_000, message: 'B settled fc-1' });
  await a.idle(10_000);
  expect(completed).toHaveLength(1);
}

/**
 * `kafka` whose consumers' first offset commit fails once, as a broker request can (the commits
 * after it, and everything else, go to the real broker). It has no admin client, so the consumer
 * cannot commit the position of an assignment's uncommitted partitions before their first fetch
 * (as when that commit fails): the first batch's own commit is the partition's first.
 */
function failingFirstCommit(real: Kafka): Kafka {
  let failed = false;
  const consumer = (config: Parameters<Kafka['consumer']>[0]) => {
    const c = real.consumer(config);
    const run = c.run.bind(c);
    c.run = (options) => {
      const eachBatch = options?.eachBatch as EachBatchHandler;
      return run({
        ...options,
        eachBatch: (payload) =>
          eachBatch({
            ...payload,
            commitOffsetsIfNecessary: async (offsets) => {
              if (!failed && offsets !== undefined) {
                failed = true;
                throw new Error('Request OffsetCommit(key: 8, version: 5) timed out');
              }
              return payload.commitOffsetsIfNecessary(offsets);
            },
          }),
      });
    };
    return c;
  };
  return new Proxy(real, {
    get: (target, p, r) =>
      p === 'consumer' ? consumer : p === 'admin' ? undefined : Reflect.get(target, p, r),
  });
}

describe('kafka: partitions the group never committed (fromBeginning: false)', () => {
  it('a record whose run stop() gave up before any commit is processed by the next owner', async () => {
    await givenUpBeforeAnyCommit(kafka);
  }, 120_000);

  it('a record is not run while the first offset commit fails: it runs once that commit is through', async () => {
    // The broker refuses the first commit once, with an error that is not a rebalance (a request
    // timeout, a coordinator moving). Before, the record ran anyway; its run given up, nothing was
    // committed and the next owner started at the end again.
    const refused: string[] = [];
    const logger = {
      ...quietLogger,
      warn: (message: string) => {
        refused.push(message);
      },
    };
    await givenUpBeforeAnyCommit(failingFirstCommit(kafka), logger);
    expect(refused).toContain('first offset commit failed');
  }, 120_000);

  it.each(CLIENTS)(
    '%s: on assignment, partitions without a commit are committed at once: work topics at their end, the retry topic at its beginning',
    async (client) => {
      const topic = uniqueName('pinned');
      const retryTopic = `${topic}.retry`;
      const groupId = uniqueName('pinned-group');
      await createTopics(admin, [topic, retryTopic, `${topic}.dlq`], 2);
      // Written before the group's first start: not for it (fromBeginning: false).
      await produce(topic, 'before-1', 0);
      await produce(topic, 'before-2', 0);
      const handled: string[] = [];
      const consumer = noting(clientKafka(client, 'pinned-test'), { topic, groupId, retryTopic, handled });
      cleanups.push(() => consumer.stop());
      await consumer.start();
      let last: (number | undefined)[] = [];
      const positions = async () => {
        const [work, retry] = await Promise.all([
          committed(admin, groupId, topic),
          committed(admin, groupId, retryTopic),
        ]);
        last = [work.get(0), work.get(1), retry.get(0), retry.get(1)];
        return last;
      };
      // Before, none of these had a commit until a record of theirs was processed.
      await waitUntil(async () => (await positions()).every((o) => o !== undefined && o >= 0), {
        timeoutMs: 30_000,
        message: () => `every partition committed (${last.join(', ')})`,
      });
      expect(last).toEqual([2, 0, 0, 0]);
      expect(handled).toEqual([]);
    },
    120_000,
  );

  it.each(CLIENTS)(
    '%s: a record written while the group was down, to a partition that was quiet while it ran, is processed after the restart',
    async (client) => {
      // A ran with both partitions assigned; only partition 0 had records. Before, nothing was ever
      // committed for partition 1, so B's start reset it to its end again, past the record written
      // while no member ran: it was never processed.
      const handled = await acrossARestart(client, 'quiet-partition', async (topic) => {
        await produce(topic, 'quiet-partition-1', 1);
      });
      expect(handled).toEqual(['quiet-partition-0', 'quiet-partition-1']);
    },
    120_000,
  );

  it.each(CLIENTS)(
    '%s: a record written while the group was down, to a partition added meanwhile, is processed after the restart',
    async (client) => {
      // Before, the added partition had no commit and was pinned at its end like a partition of a
      // new group: the record written to it before B was assigned it was never processed.
      const handled = await acrossARestart(client, 'added-partition', async (topic) => {
        await addPartition(topic, 3);
        await produce(topic, 'added-partition-1', 2);
      });
      expect(handled).toEqual(['added-partition-0', 'added-partition-1']);
    },
    120_000,
  );

  it('a record written to a partition added while the group runs is processed once the group sees it', async () => {
    const topic = uniqueName('added-running');
    const groupId = uniqueName('added-running-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    const handled: string[] = [];
    const c = noting(kafka, {
      topic,
      groupId,
      handled,
      // The group learns of the partition at its next metadata refresh (kafkajs: 5 min by default).
      consumerConfig: { ...fastGroup, metadataMaxAge: 3_000 },
    });
    cleanups.push(() => c.stop());
    await c.start();
    await joined(groupId);
    await produce(topic, 'ar-0', 0);
    await waitUntil(() => handled.includes('ar-0'), { message: 'the record of partition 0 processed' });
    await addPartition(topic, 2);
    await produce(topic, 'ar-1', 1);
    await waitUntil(() => handled.includes('ar-1'), {
      timeoutMs: 45_000,
      message: () => `the record of the added partition processed (handled: ${handled})`,
    });
    expect(handled).toEqual(['ar-0', 'ar-1']);
  }, 120_000);

  it("a member that pinned before another member's partition had a commit marks its commits once it has one", async () => {
    // The member of an earlier version (a plain kafkajs consumer) holds one partition and commits
    // nothing at first: the consumer's pin of the other cannot see every partition committed.
    const topic = uniqueName('late-mark');
    const groupId = uniqueName('late-mark-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 2);
    const earlier = kafka.consumer({ groupId, ...fastGroup });
    cleanups.push(() => earlier.disconnect());
    let theirs: number | undefined;
    earlier.on(earlier.events.GROUP_JOIN, (event) => {
      theirs = event.payload.memberAssignment[topic]?.[0];
    });
    await earlier.connect();
    await earlier.subscribe({ topics: [topic] });
    await earlier.run({ autoCommit: false, eachMessage: async () => {} });
    const handled: string[] = [];
    const c = noting(kafka, { topic, groupId, handled });
    cleanups.push(() => c.stop());
    await c.start();
    await waitUntil(
      async () => {
        const members = (await admin.describeGroups([groupId])).groups[0]?.members ?? [];
        return members.length === 2 && theirs !== undefined;
      },
      { message: 'both members assigned a partition' },
    );
    await joined(groupId);
    const ours = theirs === 0 ? 1 : 0;
    await earlier.commitOffsets([{ topic, partition: theirs as number, offset: '0' }]);
    // The consumer looks again 1, 2, 4... s after its pin; then its commits carry the mark.
    await sleep(4_000);
    await produce(topic, 'lm-0', ours);
    await waitUntil(() => c.stats.acked === 1, { message: 'the record settled' });
    await waitUntil(
      async () => {
        const [t] = await admin.fetchOffsets({ groupId, topics: [topic] });
        return t?.partitions.find((p) => p.partition === ours)?.metadata === 'exactly-once:partitions=2';
      },
      { timeoutMs: 15_000, message: 'the commit of the record carries the partition count' },
    );
  }, 120_000);

  it("an uncommitted partition of a group whose commits carry no partition count (an earlier version's) starts at its end", async () => {
    // Nothing tells a partition added later from one that was quiet under an earlier version,
    // whose records from before the group began must stay skipped.
    const topic = uniqueName('unmarked');
    const groupId = uniqueName('unmarked-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 2);
    await produce(topic, 'um-old-0', 0);
    await produce(topic, 'um-old-1', 1);
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '1' }] });
    const handled: string[] = [];
    const c = noting(kafka, { topic, groupId, handled });
    cleanups.push(() => c.stop());
    await c.start();
    await joined(groupId);
    await produce(topic, 'um-new-1', 1);
    await waitUntil(() => handled.includes('um-new-1'), {
      message: () => `the record written after the start processed (handled: ${handled})`,
    });
    await sleep(1_000);
    expect(handled).toEqual(['um-new-1']);
  }, 120_000);

  it.each(CLIENTS)(
    '%s: a retry copy written before the retry topic was ever committed is read after a restart',
    async (client) => {
      const topic = uniqueName('first-retry');
      const retryTopic = `${topic}.retry`;
      const groupId = uniqueName('first-retry-group');
      await createTopics(admin, [topic, retryTopic, `${topic}.dlq`], 1);
      const keyPrefix = storePrefix();
      const runs: string[] = [];
      const make = (name: string): KafkaConsumer =>
        createConsumer<{ amount: number }>({
          kafka: clientKafka(client, 'first-retry-test'),
          groupId,
          topics: [topic],
          retryTopic,
          deadLetter: { topic: `${topic}.dlq` },
          store: createRedisStore({ client: redis, keyPrefix }),
          consumerConfig: fastGroup,
          logger: quietLogger,
          retentionCheck: 'off',
          retry: { maxAttempts: 3, initialDelayMs: 4_000, maxDelayMs: 4_000, jitter: 'none' },
          handler: async (_p, ctx) => {
            runs.push(`${name} attempt ${ctx.attempt}`);
            if (ctx.attempt === 1) throw new Error('try again later');
          },
        });
      const a = make('A');
      await a.start();
      await waitUntil(async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Stable', {
        message: 'A joined',
      });
      await sleep(1_500);
      await produce(topic, 'rt-1');
      await waitUntil(() => a.stats.retried === 1, { message: 'the retry copy written' });
      await a.stop(); // a deploy: the copy is not due yet
      const b = make('B');
      cleanups.push(() => b.stop());
      await b.start();
      await waitUntil(() => runs.includes('B attempt 2'), {
        timeoutMs: 60_000,
        message: () => `B ran attempt 2 (${runs})`,
      });
    },
    120_000,
  );
});

/** `kafka` whose admin clients fail their first offset fetch (the rest goes to the real broker). */
function failingFirstOffsetFetch(real: Kafka): Kafka {
  let failed = false;
  const admin = () => {
    const a = real.admin();
    const fetchOffsets = a.fetchOffsets.bind(a);
    a.fetchOffsets = (async (options: Parameters<typeof fetchOffsets>[0]) => {
      if (!failed) {
        failed = true;
        throw new Error('Request OffsetFetch(key: 9, version: 3) timed out');
      }
      return fetchOffsets(options);
    }) as typeof a.fetchOffsets;
    return a;
  };
  return new Proxy(real, {
    get: (target, p, r) => (p === 'admin' ? admin : Reflect.get(target, p, r)),
  });
}

describe('kafka: a pin that fails', () => {
  it('holds the partitions and is tried again: the records written before the group existed stay skipped', async () => {
    // Released unpinned, the partitions would start at their beginning (the client's reset when
    // the consumer pins): a new group would process the whole topic.
    const topic = uniqueName('pin-fails');
    const groupId = uniqueName('pin-fails-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    await produce(topic, 'before', 0);
    const handled: string[] = [];
    const warnings: string[] = [];
    const consumer = noting(failingFirstOffsetFetch(kafka), {
      topic,
      groupId,
      handled,
      logger: { ...quietLogger, warn: (message: string) => void warnings.push(message) },
    });
    cleanups.push(() => consumer.stop());
    await consumer.start();
    await waitUntil(async () => (await committed(admin, groupId, topic)).get(0) === 1, {
      message: 'the pin tried again and committed',
    });
    await produce(topic, 'after', 0);
    await waitUntil(() => handled.length >= 1, { message: 'the record written after the pin' });
    expect(handled).toEqual(['after']);
    expect(warnings.some((w) => w.startsWith('could not commit the start of partitions'))).toBe(true);
  }, 120_000);
});

describe('kafka: a committed offset the log no longer holds (deleted by retention)', () => {
  it.each(CLIENTS)(
    '%s: the group resumes at the oldest record kept, not at the end',
    async (client) => {
      // kafkajs and librdkafka reset an out-of-range position as for a new group: with
      // fromBeginning false, to the end. Before, the records still kept after the deleted ones were
      // skipped, never processed, as if the group were new.
      // While the group is down: five records, the first two deleted before it comes back.
      const { topic, groupId, keyPrefix, handled } = await committedThenDeleted(
        clientKafka(client, 'out-of-range-test'),
        'out-of-range',
        5,
        3,
      );
      const errors: Record<string, unknown>[] = [];
      const make = () =>
        noting(clientKafka(client, 'out-of-range-test'), {
          topic,
          groupId,
          keyPrefix,
          handled,
          logger: { ...quietLogger, error: (message, meta) => void errors.push({ message, ...meta }) },
        });
      const b = make();
      cleanups.push(() => b.stop());
      await b.start();
      await waitUntil(() => handled.length >= 4, {
        timeoutMs: 30_000,
        message: () => `B processed the records kept (handled: ${handled})`,
      });
      expect(handled).toEqual(['out-of-range-0', 'out-of-range-3', 'out-of-range-4', 'out-of-range-5']);
      // And the loss is said: two records deleted before the group processed them.
      expectOneLoss(errors, { partition: 0, committed: 1, oldestKept: 3, lost: 2 });
    },
    120_000,
  );
});

describe('kafka: a running member that falls behind the retention', () => {
  it('says how many records were deleted before it processed them, and goes on with the oldest kept', async () => {
    // Before, only kafkajs' own logger said so ("Offset out of range, resetting to default offset").
    // kafkajs fetches a partition again only once its batch returned; librdkafka fetches ahead (up
    // to its queue's size), so a lag of a few records, as here, never reaches the deleted ones.
    const topic = uniqueName('lagging');
    const groupId = uniqueName('lagging-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    const handled: string[] = [];
    const errors: Record<string, unknown>[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const c = noting(kafka, {
      topic,
      groupId,
      handled,
      fromBeginning: true,
      // The slow record is waited for in place: the partition is not fetched meanwhile.
      maxInPlaceWaitMs: 60_000,
      logger: { ...quietLogger, error: (message, meta) => void errors.push({ message, ...meta }) },
      handler: async (_p, ctx) => {
        if (ctx.key === 'lg-1') await held;
        handled.push(ctx.key);
      },
    });
    cleanups.push(() => c.stop());
    await c.start();
    await produce(topic, 'lg-0', 0);
    await waitUntil(() => handled.includes('lg-0'), { message: 'lg-0 processed' });
    await produce(topic, 'lg-1', 0); // its handler waits
    for (let i = 2; i <= 5; i++) await produce(topic, `lg-${i}`, 0);
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '4' }] });
    release();
    await waitUntil(() => handled.includes('lg-5'), {
      timeoutMs: 30_000,
      message: () => `the records kept processed (handled: ${handled})`,
    });
    expect(handled).toEqual(['lg-0', 'lg-1', 'lg-4', 'lg-5']);
    await waitUntil(() => errors.length > 0, { message: 'the loss reported' });
    expectOneLoss(errors, { partition: 0, position: 2, oldestKept: 4, lost: 2 });
  }, 120_000);
});

describe("kafka: kafkajs' own reset of a position the log no longer holds", () => {
  it('a member that ends before its first commit after the reset leaves the records kept to the next owner', async () => {
    // kafkajs commits its reset (-2, "earliest") to the group before it fetches again. Before, a
    // member that ended before its own next commit (a stop past its timeout here; a crash or a
    // rebalance likewise) left that -2, which the next owner's pin took for "never committed" and
    // pinned at the end: the records kept were skipped, never processed.
    const { topic, groupId, keyPrefix, handled } = await committedThenDeleted(kafka, 'reset-window', 4, 3);
    // B's handler runs until stop() aborts it: B settles nothing after kafkajs' reset, and its key
    // goes back uncounted.
    const b = noting(newKafka('reset-window-test'), {
      topic,
      groupId,
      keyPrefix,
      handled,
      leaseMs: 2_000,
      handler: (_p, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
        }),
    });
    await b.start();
    await waitUntil(async () => (await committed(admin, groupId, topic)).get(0) === -2, {
      message: 'kafkajs committed its reset (-2) for the group',
    });
    await b.stop({ timeoutMs: 500 });
    await b.idle(10_000);
    const warnings: string[] = [];
    const c = noting(kafka, {
      topic,
      groupId,
      keyPrefix,
      handled,
      logger: { ...quietLogger, warn: (message) => void warnings.push(message) },
    });
    cleanups.push(() => c.stop());
    await c.start();
    await waitUntil(() => handled.length >= 3, {
      timeoutMs: 30_000,
      message: () => `C processed the records kept (handled: ${handled})`,
    });
    expect(handled).toEqual(['reset-window-0', 'reset-window-3', 'reset-window-4']);
    expect(warnings).toEqual([
      expect.stringMatching(/^the group's commit is kafkajs' reset to the oldest record/),
    ]);
  }, 120_000);
});

describe('kafka: a work topic written in transactions', () => {
  it('processes each committed record once, no aborted one, and commits past the markers', async () => {
    // A transactional producer upstream (Kafka Streams, a Java service with transactional.id).
    // Before, the commit stopped at the last record (a lag of 1 or more that never went away), and
    // a trailing aborted transaction was never committed past at all.
    const topic = uniqueName('tx-input');
    const groupId = uniqueName('tx-input-group');
    await createTopics(admin, [topic, `${topic}.dlq`], 1);
    const writer = kafka.producer({
      transactionalId: uniqueName('tx-writer'),
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await writer.connect();
    cleanups.push(() => writer.disconnect());
    const write = async (keys: string[], commit: boolean) => {
      const tx = await writer.transaction();
      await tx.send({
        topic,
        messages: keys.map((key) => ({ value: '{"amount":1}', headers: { 'x-idempotency-key': key } })),
      });
      await (commit ? tx.commit() : tx.abort());
    };
    const handled: string[] = [];
    const consumer = noting(kafka, { topic, groupId, handled, fromBeginning: true });
    cleanups.push(() => consumer.stop());
    const committedTo = (offset: number, message: string) =>
      waitUntil(async () => (await committed(admin, groupId, topic)).get(0) === offset, { message });
    // Offsets: k0 0, k1 1, commit marker 2; k2 3, k3 4 aborted, marker 5; k4 6, marker 7. Written
    // before the consumer starts, so that its first fetch ends in the marker.
    await write(['k0', 'k1'], true);
    await write(['k2', 'k3'], false);
    await write(['k4'], true);
    await consumer.start();
    await committedTo(8, 'a commit past the last marker');
    expect(handled).toEqual(['k0', 'k1', 'k4']);
    // Caught up, an aborted transaction (8, 9, marker 10): a fetch of nothing but filtered records.
    await write(['k5', 'k6'], false);
    await committedTo(11, 'a commit past the aborted transaction');
    await write(['k7'], true);
    await committedTo(13, 'a commit past the next transaction');
    expect(handled).toEqual(['k0', 'k1', 'k4', 'k7']);
  }, 120_000);
});
