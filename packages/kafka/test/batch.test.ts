/** The batch runner against a scripted client and processor: what gets resolved and committed when. */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Delivery, Disposition, Processor } from '@exactly-once/core/spi';
import { describe, expect, it } from 'vitest';
import { type BatchEnv, runBatch } from '../src/batch.js';
import type {
  EachBatchPayloadLike,
  OffsetsByTopicPartitionLike,
  ProducerRecordMessageLike,
} from '../src/client.js';
import type { ExactlyOnceProducer } from '../src/producer.js';
import { emptyStats } from '../src/stats.js';
import { partitionsMark } from '../src/positions.js';

const ack: Disposition = { action: 'ack', outcome: 'acquired' };
const defer = (delayMs: number): Disposition => ({ action: 'defer', outcome: 'busy', delayMs });
const deadLetterError = { name: 'MalformedMessageError', code: 'MALFORMED_MESSAGE', message: 'bad' };
const deadLetter: Disposition = {
  action: 'dead-letter',
  outcome: 'invalid',
  reason: {
    error: deadLetterError,
    attempts: 0,
    consumer: 'c',
    originalDestination: 't',
    at: 0,
  },
};

function payload(count: number, heartbeat: () => Promise<void> = async () => {}) {
  const resolved: string[] = [];
  const commits: string[] = [];
  let paused = 0;
  const p: EachBatchPayloadLike = {
    batch: {
      topic: 't',
      partition: 0,
      messages: Array.from({ length: count }, (_, i) => ({
        key: Buffer.from(`k${i}`),
        value: Buffer.from(JSON.stringify({ i })),
        offset: String(i),
        timestamp: '0',
        headers: { 'x-idempotency-key': Buffer.from(`id-${i}`) },
      })),
    },
    resolveOffset: (o) => resolved.push(o),
    heartbeat,
    pause: () => {
      paused++;
      return () => {};
    },
    commitOffsetsIfNecessary: async (offsets?: OffsetsByTopicPartitionLike) => {
      commits.push(offsets?.topics[0]?.partitions[0]?.offset ?? '?');
    },
    isRunning: () => true,
    isStale: () => false,
  };
  return { p, resolved, commits, paused: () => paused };
}

function env(
  script: (d: Delivery, call: number) => Promise<Disposition> | Disposition,
  over: Partial<BatchEnv> = {},
) {
  const calls: Delivery[] = [];
  const sent: { topic: string; record: ProducerRecordMessageLike }[] = [];
  const resumes: number[] = [];
  // Every scripted run counts as a handler run (`onRunning`): the batch may detach it.
  const process = async (d: Delivery, onRunning?: () => void) => {
    calls.push(d);
    onRunning?.();
    return script(d, calls.length);
  };
  const notRun: Disposition = { action: 'defer', outcome: 'not-run', delayMs: 0 };
  const processor = {
    process,
    // Like core's: each record runs once the one before it settled; after one that did not, the
    // later ones answer not-run.
    processInOrder: (deliveries: readonly Delivery[], onRunning?: (index: number) => void) => {
      let previous = Promise.resolve(true);
      let released = false;
      const dispositions = deliveries.map((d, index) => {
        const run = previous.then((go) => (go && !released ? process(d, () => onRunning?.(index)) : notRun));
        previous = run.then((r) => r.action === 'ack' || r.action === 'dead-letter');
        return run;
      });
      return {
        dispositions,
        release: async () => {
          released = true;
        },
      };
    },
  } as unknown as Processor;
  const producer = {
    sendRecords: async (topic: string, records: ProducerRecordMessageLike[]) => {
      for (const record of records) sent.push({ topic, record });
    },
  } as unknown as ExactlyOnceProducer;
  const controller = new AbortController();
  const e: BatchEnv = {
    processor,
    groupId: 'g',
    deadLetterTopic: 't.dlq',
    retryTopic: undefined,
    producer,
    logger: { debug() {}, info() {}, warn() {}, error() {} },
    stats: emptyStats(),
    commitEveryMessages: 100,
    commitIntervalMs: 60_000,
    heartbeatIntervalMs: 5,
    maxInPlaceWaitMs: 50,
    graceMs: () => 20,
    stopSignal: controller.signal,
    scheduleResume: (ms) => resumes.push(ms),
    track: () => {},
    copiesOnHold: new Map(),
    groupSizes: new Map(),
    // Anchored already (as after a first batch): the tests below count only their own commits.
    anchored: new Set(['t:0']),
    marks: new Map(),
    positions: new Map(),
    noticeSkip: () => {},
    ...over,
  };
  return { e, calls, sent, resumes, stop: () => controller.abort() };
}

const offsetOf = (d: Delivery) => Number(d.attributes?.['messaging.kafka.offset']);

/** A batch of `count` records of partition `partition` from offset `from`. */
function batchOf(partition: number, from: number, count: number) {
  const made = payload(count);
  const messages = made.p.batch.messages.map((m, i) => ({ ...m, offset: String(from + i) }));
  made.p = { ...made.p, batch: { topic: 't', partition, messages } };
  return made;
}

describe('batch runner', () => {
  it("commits a partition's first fetched offset before anything runs, once per partition", async () => {
    const order: string[] = [];
    const { e } = env(
      () => {
        order.push('run');
        return { action: 'ack', outcome: 'acquired' };
      },
      { anchored: new Set() },
    );
    const first = payload(2);
    const commit = first.p.commitOffsetsIfNecessary;
    first.p.commitOffsetsIfNecessary = async (offsets) => {
      order.push(`commit ${offsets?.topics[0]?.partitions[0]?.offset}`);
      return commit(offsets);
    };
    await runBatch(e, first.p);
    // A record whose run is given up (or whose worker dies) before the batch's own commit is read
    // again by the next owner from the anchored offset, not from the partition's end.
    expect(order).toEqual(['commit 0', 'run', 'run', 'commit 2']);
    const second = payload(2);
    await runBatch(e, second.p);
    expect(second.commits).toEqual(['2']);
  });

  it("carries the topic's partition mark in each commit's metadata, once the consumer has one", async () => {
    const marks = new Map<string, string>();
    const { e } = env(() => ({ action: 'ack', outcome: 'acquired' }), { marks });
    const seen: (string | undefined)[] = [];
    const record = (b: ReturnType<typeof payload>) => {
      b.p.commitOffsetsIfNecessary = async (offsets) => {
        seen.push(offsets?.topics[0]?.partitions[0]?.metadata);
      };
      return b.p;
    };
    await runBatch(e, record(payload(1)));
    marks.set('t', partitionsMark(4));
    await runBatch(e, record(payload(2)));
    expect(seen).toEqual([undefined, 'exactly-once:partitions=4']);
  });

  it('notices a batch that starts past where the last one left off by more than a marker', async () => {
    const skips: string[] = [];
    const { e } = env(() => ({ action: 'ack', outcome: 'acquired' }), {
      noticeSkip: (topic, partition, from) => void skips.push(`${topic}:${partition} from ${from}`),
    });
    await runBatch(e, batchOf(0, 0, 2).p); // left off at 2
    await runBatch(e, batchOf(0, 2, 1).p); // where it left off
    await runBatch(e, batchOf(0, 4, 1).p); // one offset on: a transaction's marker
    expect(skips).toEqual([]);
    await runBatch(e, batchOf(0, 9, 1).p); // offsets 5 to 8 skipped
    expect(skips).toEqual(['t:0 from 5']);
    expect(e.positions.get('t:0')).toBe(10n);
  });

  it('records go on while an offset commit is on its way; the batch returns after it, with its last commit', async () => {
    const { p, resolved, commits } = payload(7);
    const { e } = env(() => ack, { commitEveryMessages: 2 });
    // The first commit (after 2 records) is held until every record has been resolved.
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let commitsStarted = 0;
    const commit = p.commitOffsetsIfNecessary;
    p.commitOffsetsIfNecessary = async (offsets) => {
      if (++commitsStarted === 1) await held;
      return commit(offsets);
    };
    let returned = false;
    const running = runBatch(e, p).then(() => {
      returned = true;
    });
    for (let i = 0; i < 100 && resolved.length < 7; i++) await new Promise((r) => setTimeout(r, 5));
    // Awaited in the records' loop, the held commit stopped the batch at its second record.
    expect(resolved).toEqual(['0', '1', '2', '3', '4', '5', '6']);
    // One commit at a time: none other started while the first is on its way, and the batch waits.
    expect(commitsStarted).toBe(1);
    expect(returned).toBe(false);
    release();
    await running;
    expect(commits).toEqual(['2', '7']);
  });

  it('resolves and commits only up to the first unsettled record, pausing for a long wait', async () => {
    const { p, resolved, commits, paused } = payload(5);
    const { e, resumes } = env((d) => (offsetOf(d) === 2 ? defer(5_000) : ack));
    await runBatch(e, p);
    expect(resolved).toEqual(['0', '1']);
    expect(commits).toEqual(['2']);
    expect(paused()).toBe(1);
    expect(resumes).toEqual([5_000]);
  });

  it('waits short delays in place and processes the same record again', async () => {
    const { p, resolved, commits } = payload(2);
    const { e, calls } = env((d, call) => (offsetOf(d) === 0 && call < 3 ? defer(5) : ack));
    await runBatch(e, p);
    expect(calls.map(offsetOf)).toEqual([0, 0, 0, 1]);
    expect(resolved).toEqual(['0', '1']);
    expect(commits).toEqual(['2']);
  });

  it('dead-letters with reason and origin headers, retrying the produce until acknowledged', async () => {
    const { p, resolved } = payload(1);
    let failures = 0;
    const sent: ProducerRecordMessageLike[] = [];
    const producer = {
      sendRecords: async (_topic: string, records: ProducerRecordMessageLike[]) => {
        if (failures++ < 2) throw new Error('broker unavailable');
        sent.push(...records);
      },
    } as unknown as ExactlyOnceProducer;
    // Backoffs of 200 and 400 ms: in place under a maxInPlaceWaitMs of 1 s.
    const { e } = env(() => deadLetter, { producer, maxInPlaceWaitMs: 1000 });
    await runBatch(e, p);
    expect(resolved).toEqual(['0']);
    expect(sent).toHaveLength(1);
    expect(sent[0]?.headers).toMatchObject({
      'x-eo-error-code': 'MALFORMED_MESSAGE',
      'x-eo-original-topic': 't',
      'x-eo-original-partition': '0',
      'x-eo-original-offset': '0',
    });
    expect(String(sent[0]?.headers?.['x-idempotency-key'])).toBe('id-0');
  });

  it('a copy refused past maxInPlaceWaitMs is put on hold and its partition paused; the next fetch sends it with the first reason', async () => {
    // Retried in place for good, it held up every partition of the consumer (kafkajs fetches
    // again only once every batch of a fetch returned).
    let refusing = true;
    const sent: ProducerRecordMessageLike[] = [];
    const producer = {
      sendRecords: async (_topic: string, records: ProducerRecordMessageLike[]) => {
        if (refusing) throw new Error('MESSAGE_TOO_LARGE');
        sent.push(...records);
      },
    } as unknown as ExactlyOnceProducer;
    const previouslyFailed: Disposition = {
      ...deadLetter,
      reason: {
        ...(deadLetter as { reason: object }).reason,
        error: { name: 'PreviouslyFailedError', code: 'PREVIOUSLY_FAILED', message: 'failed before' },
      },
    } as Disposition;
    const first = payload(2);
    const made = env((_d, call) => (call === 1 ? deadLetter : previouslyFailed), {
      producer,
      maxInPlaceWaitMs: 250,
    });
    await runBatch(made.e, first.p);
    expect(first.resolved).toEqual([]);
    expect(first.paused()).toBe(1);
    expect(made.resumes).toEqual([400]); // 200 ms in place, then paused
    expect([...made.e.copiesOnHold.values()]).toEqual([{ attempts: 2, deadLetter }]);

    // Fetched again after the resume: the record now answers PREVIOUSLY_FAILED (its record is
    // FAILED), the copy keeps the first reason and the backoff goes on from the third send.
    const second = payload(2);
    await runBatch(made.e, second.p);
    expect(made.resumes).toEqual([400, 800]);
    refusing = false;
    const third = payload(2);
    await runBatch(made.e, third.p);
    expect(third.resolved).toEqual(['0', '1']);
    expect(sent[0]?.headers).toMatchObject({ 'x-eo-error-code': 'MALFORMED_MESSAGE' });
    expect(made.e.copiesOnHold.size).toBe(0);
  });

  it('lets go of the copies on hold of a partition revoked meanwhile once a fetch starts past them', async () => {
    // The dead-letter topic refuses every copy: each partition's first record is put on hold and
    // the partition paused. A rebalance then takes the partitions away and their next owner
    // settles the records and commits past them (the consumer is told nothing of it); given the
    // partitions back, this member fetches from the committed offsets, never the held records.
    let refusing = true;
    const producer = {
      sendRecords: async () => {
        if (refusing) throw new Error('NOT_ENOUGH_REPLICAS');
      },
    } as unknown as ExactlyOnceProducer;
    const partitions = 20;
    const made = env(() => deadLetter, {
      producer,
      anchored: new Set(Array.from({ length: partitions }, (_, p) => `t:${p}`)),
    });
    for (let p = 0; p < partitions; p++) {
      const b = batchOf(p, 0, 1);
      await runBatch(made.e, b.p);
      expect(b.paused()).toBe(1);
    }
    expect(made.e.copiesOnHold.size).toBe(partitions);
    refusing = false;
    for (let p = 0; p < partitions; p++) {
      const b = batchOf(p, 1, 2);
      await runBatch(made.e, b.p);
      expect(b.resolved).toEqual(['1', '2']);
    }
    // Each entry stayed for the consumer's life: one more per partition and rebalance.
    expect(made.e.copiesOnHold.size).toBe(0);
  });

  it('detaches a run still going past maxInPlaceWaitMs: the partition pauses and the batch returns', async () => {
    // Waited for in place, a long handler held up every partition of the consumer.
    const { p, resolved, commits, paused } = payload(3);
    let finish: (d: Disposition) => void = () => {};
    const tracked: Promise<unknown>[] = [];
    const made = env((d) => (offsetOf(d) === 1 ? new Promise<Disposition>((r) => (finish = r)) : ack), {
      track: (r) => tracked.push(r),
    });
    await runBatch(made.e, p);
    expect(resolved).toEqual(['0']);
    expect(commits).toEqual(['1']);
    expect(paused()).toBe(1);
    expect(made.e.stats).toMatchObject({ detached: 1, inFlight: 1, abandoned: 0 });
    expect(tracked).toHaveLength(2); // its run, and the next record's (released, not run)
    expect(made.resumes).toEqual([]); // not before the run ends
    finish({ action: 'retry', outcome: 'acquired', delayMs: 700, nextAttempt: 2, error: deadLetterError });
    await tracked[0];
    await Promise.resolve();
    expect(made.resumes).toEqual([700]);
    expect(made.e.stats.inFlight).toBe(0);
  });

  it('a detached run that dead-letters holds its disposition: the record fetched again keeps the first reason', async () => {
    const previouslyFailed = {
      ...deadLetter,
      reason: {
        ...(deadLetter as { reason: object }).reason,
        error: { ...deadLetterError, code: 'PREVIOUSLY_FAILED' },
      },
    } as Disposition;
    let finish: (d: Disposition) => void = () => {};
    const tracked: Promise<unknown>[] = [];
    const made = env(
      (_d, call) => (call === 1 ? new Promise<Disposition>((r) => (finish = r)) : previouslyFailed),
      { track: (r) => tracked.push(r) },
    );
    await runBatch(made.e, payload(1).p);
    finish(deadLetter);
    await tracked[0];
    await Promise.resolve();
    expect(made.resumes).toEqual([0]);
    const again = payload(1);
    await runBatch(made.e, again.p);
    expect(again.resolved).toEqual(['0']);
    expect(made.sent[0]?.record.headers).toMatchObject({ 'x-eo-error-code': 'MALFORMED_MESSAGE' });
    expect(made.e.copiesOnHold.size).toBe(0);
  });

  it('never detaches a run whose handler has not started (a slow begin): it is waited for in place', async () => {
    // Detached, its group was released and the begin answered by giving its own lease back:
    // with a store slower than maxInPlaceWaitMs, the partition made no progress at all.
    const { p, resolved, paused } = payload(2);
    const slowBegin = () => new Promise<Disposition>((r) => setTimeout(() => r(ack), 150));
    const processor = {
      processInOrder: (deliveries: readonly Delivery[]) => ({
        dispositions: deliveries.map(slowBegin),
        release: async () => {},
      }),
    } as unknown as Processor;
    const { e } = env(() => ack, { processor });
    await runBatch(e, p);
    expect(resolved).toEqual(['0', '1']);
    expect(paused()).toBe(0);
    expect(e.stats.detached).toBe(0);
  });

  it('a held publish-failed dead letter settles the record fetched again while its publish still fails', async () => {
    // Before: each fetch deferred it again, for as many deferrals as before the first escalation.
    const publishFailed: Disposition = { ...deadLetter, outcome: 'publish-failed' } as Disposition;
    const deferred: Disposition = { action: 'defer', outcome: 'publish-failed', delayMs: 500 };
    let finish: (d: Disposition) => void = () => {};
    const tracked: Promise<unknown>[] = [];
    const made = env((_d, call) => (call === 1 ? new Promise<Disposition>((r) => (finish = r)) : deferred), {
      track: (r) => tracked.push(r),
    });
    await runBatch(made.e, payload(1).p);
    finish(publishFailed);
    await tracked[0];
    const again = payload(1);
    await runBatch(made.e, again.p);
    expect(again.resolved).toEqual(['0']);
    expect(made.sent).toHaveLength(1);
    expect(made.e.stats.deadLettered).toBe(1);
    expect(made.e.copiesOnHold.size).toBe(0);
  });

  it('when it ends early, a batch tracks the handlers already running ahead of its last record', async () => {
    // Before: only the detached run was tracked, so stop() could resolve (and the app close its
    // store) under a handler of the next record, whose completion then never landed.
    const { p } = payload(3);
    const finish: ((d: Disposition) => void)[] = [];
    const processor = {
      processInOrder: (deliveries: readonly Delivery[], onRunning: (index: number) => void) => {
        const dispositions = deliveries.map((_d, index) =>
          index < 2 ? new Promise<Disposition>((r) => finish.push(r)) : Promise.resolve(defer(0)),
        );
        // Record 0 awaits its completion write while record 1's handler already runs.
        onRunning(0);
        onRunning(1);
        return { dispositions, release: async () => {} };
      },
    } as unknown as Processor;
    const tracked: Promise<unknown>[] = [];
    const { e } = env(() => ack, { processor, track: (r) => tracked.push(r) });
    await runBatch(e, p);
    expect(e.stats.detached).toBe(1);
    expect(tracked).toHaveLength(3); // record 0 (detached), 1 (running) and 2 (not run)
    expect(e.stats.inFlight).toBe(2);
    for (const f of finish) f(ack);
    await Promise.all(tracked);
    await Promise.resolve();
    expect(e.stats.inFlight).toBe(0);
  });

  it('after a detach, the partition begins groups of one record, doubling as groups run to their end', async () => {
    // A detach gives back the leases begun after the run: with every handler long, full groups
    // cost 32 begins and 31 releases per record.
    let finish: (d: Disposition) => void = () => {};
    const tracked: Promise<unknown>[] = [];
    const made = env((_d, call) => (call === 1 ? new Promise<Disposition>((r) => (finish = r)) : ack), {
      track: (r) => tracked.push(r),
    });
    const sizes: number[] = [];
    const inner = made.e.processor.processInOrder.bind(made.e.processor);
    const processor = {
      ...made.e.processor,
      processInOrder: (deliveries: readonly Delivery[], onRunning?: (index: number) => void) => {
        sizes.push(deliveries.length);
        return inner(deliveries, onRunning);
      },
    } as Processor;
    const e = { ...made.e, processor };
    await runBatch(e, payload(40).p);
    expect(sizes).toEqual([32]);
    finish(ack);
    await tracked[0];
    const again = payload(40);
    await runBatch(e, again.p);
    expect(again.resolved).toHaveLength(40);
    expect(sizes).toEqual([32, 1, 2, 4, 8, 16, 9]);
    expect(e.groupSizes.size).toBe(0); // back to full groups
  });

  it('on stop, gives a hanging run the grace period, then leaves it unresolved', async () => {
    const { p, resolved, commits } = payload(3);
    let stop = () => {};
    const never = new Promise<Disposition>(() => {});
    const tracked: Promise<unknown>[] = [];
    const made = env(
      (d) => {
        if (offsetOf(d) === 1) {
          stop();
          return never;
        }
        return ack;
      },
      { track: (r) => tracked.push(r) },
    );
    stop = made.stop;
    await runBatch(made.e, p);
    expect(resolved).toEqual(['0']);
    expect(commits).toEqual(['1']);
    expect(made.e.stats.abandoned).toBe(1);
    expect(tracked).toHaveLength(2); // its run, and the next record's (released, not run)
  });

  it('on stop, a copy the broker never acknowledges gets the grace period, then the record is left unresolved', async () => {
    const { p, resolved, commits } = payload(2);
    const made = env(
      (d) =>
        offsetOf(d) === 1
          ? {
              action: 'dead-letter',
              outcome: 'failed',
              reason: {
                error: { name: 'E', code: 'E', message: 'e' },
                attempts: 1,
                consumer: 'c',
                originalDestination: 't',
                at: 0,
              },
            }
          : ack,
      {
        producer: {
          sendRecords: () => {
            made.stop(); // a stalled broker: the send never ends, and the consumer is being stopped
            return new Promise<void>(() => {});
          },
        } as unknown as ExactlyOnceProducer,
      },
    );
    // Before, the batch (and with it stop()) waited for the send for ever: the test timed out.
    await runBatch(made.e, p);
    expect(resolved).toEqual(['0']);
    expect(commits).toEqual(['1']);
  });

  it('rethrows a rebalance reported by a heartbeat so the client rejoins at once', async () => {
    const rebalance = Object.assign(new Error('rebalancing'), { type: 'REBALANCE_IN_PROGRESS' });
    const { p, resolved } = payload(3, async () => {
      throw rebalance;
    });
    const { e } = env((d) =>
      offsetOf(d) === 0 ? ack : new Promise<Disposition>((r) => setTimeout(() => r(defer(1)), 200)),
    );
    await expect(runBatch(e, p)).rejects.toBe(rebalance);
    expect(resolved).toEqual(['0']);
  });

  it('takes a late ack within the grace period and commits it', async () => {
    const rebalance = Object.assign(new Error('rebalancing'), { type: 'ILLEGAL_GENERATION' });
    const { p, resolved, commits } = payload(2, async () => {
      throw rebalance;
    });
    const { e } = env(() => new Promise<Disposition>((r) => setTimeout(() => r(ack), 15)), {
      graceMs: () => 1_000,
      heartbeatIntervalMs: 1,
    });
    await expect(runBatch(e, p)).rejects.toBe(rebalance);
    expect(resolved).toEqual(['0']);
    expect(commits).toEqual(['1']);
  });

  it('lets go of settled records while a long batch goes on (nothing of theirs is held until it ends)', async () => {
    // The collector, to see what is still held; exposed at run time, for this check only.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const count = 3_000;
    const { p } = payload(count);
    let release!: (d: Disposition) => void;
    const last = new Promise<Disposition>((r) => {
      release = r;
    });
    const answers: WeakRef<Disposition>[] = [];
    const { e } = env(
      (d) => {
        if (offsetOf(d) === count - 1) return last;
        // A fresh answer per record: its liveness is what is checked.
        const answer: Disposition = { action: 'ack', outcome: 'acquired' };
        answers.push(new WeakRef(answer));
        return answer;
      },
      { maxInPlaceWaitMs: 60_000 },
    ); // the last run is waited for in place, not detached
    const batch = runBatch(e, p);
    await waitUntilSettled(() => e.stats.acked === count - 1);
    gc();
    await new Promise((r) => setTimeout(r, 0));
    gc();
    // Every record but the last is settled: at most the current group's answers may be held.
    const held = answers.filter((a) => a.deref() !== undefined).length;
    expect(held).toBeLessThanOrEqual(64);
    release(ack);
    await batch;
    expect(e.stats.acked).toBe(count);
  });
});

async function waitUntilSettled(done: () => boolean): Promise<void> {
  for (let i = 0; i < 1_000 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(done()).toBe(true);
}
