/**
 * One `eachBatch` call: the records of one partition, processed strictly in order. A record's
 * offset is resolved only once it is settled (acked or dead-lettered), so the fetch position and
 * every commit stay at or before the first unsettled record: a crash or a revocation never skips
 * work, it only repeats some, and repeats resolve as duplicates in the processed-store.
 */

import { type Logger, toErrorInfo } from '@exactly-once/core';
import {
  settle as ackLast,
  type DeadLetterDisposition,
  type Delivery,
  type Disposition,
  doublingBackoff,
  type OrderedRun,
  type Processor,
  settledWithin,
} from '@exactly-once/core/spi';
import {
  type EachBatchPayloadLike,
  isRebalanceError,
  type KafkaMessageLike,
  kafkaErrorTags,
  type SkippedBatch,
  withMetadata,
} from './client.js';
import { deadLetterRecord, retryAtOf, retryRecord, toDelivery } from './delivery.js';
import type { ExactlyOnceProducer } from './producer.js';
import { type ConsumerStats, countOutcome } from './stats.js';

/** What the consumer shares with every batch it runs. */
export interface BatchEnv {
  readonly processor: Processor;
  readonly groupId: string;
  readonly deadLetterTopic: string;
  readonly retryTopic: string | undefined;
  readonly producer: ExactlyOnceProducer;
  readonly logger: Logger;
  readonly stats: ConsumerStats;
  readonly commitEveryMessages: number;
  readonly commitIntervalMs: number;
  readonly heartbeatIntervalMs: number;
  readonly maxInPlaceWaitMs: number;
  /**
   * How long a run already under way may still finish once its batch is interrupted:
   * `revokeGraceMs` on a revocation, what is left of `stop({ timeoutMs })` when stopping.
   */
  graceMs(): number;
  /** Aborts when the consumer is stopping. */
  readonly stopSignal: AbortSignal;
  /** Schedules `resume` after `ms` unless the consumer stops first. */
  scheduleResume(ms: number, resume: () => void): void;
  /** Tracks runs still going after their batch gave up on them, so `stop` can wait for them. */
  track(run: Promise<unknown>): void;
  /** Copies the broker refused, by `<topic>:<partition>:<offset>`, while their partition is paused. */
  readonly copiesOnHold: Map<string, CopyOnHold>;
  /**
   * Group sizes of partitions whose last run was detached or gave way to a takeover, by
   * `<topic>:<partition>` (see CHUNK).
   */
  readonly groupSizes: Map<string, number>;
  /**
   * Partitions (`<topic>:<partition>`) known to have a commit: this consumer's, or found on
   * assignment (see anchor, and positions.ts).
   */
  readonly anchored: Set<string>;
  /** By work topic, the metadata its commits carry (see positions.ts). */
  readonly marks: ReadonlyMap<string, string>;
  /**
   * By partition (`<topic>:<partition>`), the offset after the last record this consumer settled
   * there, since the partition was last assigned to it (cleared on each assignment).
   */
  readonly positions: Map<string, bigint>;
  /**
   * A batch started past where the partition's last one left off, by more than a transaction's
   * marker: `from` is where it left off (see positions.ts, noticeSkip).
   */
  noticeSkip(topic: string, partition: number, from: bigint): void;
}

/**
 * A retry or dead-letter copy the broker did not acknowledge, kept while its partition is paused
 * (see {@link BatchRun.produce}); the record is fetched again on resume and its copy tried again.
 */
export interface CopyOnHold {
  /** Sends tried so far: the backoff goes on growing across pauses. */
  readonly attempts: number;
  /**
   * The dead-letter disposition first decided. The record's next run answers `PREVIOUSLY_FAILED`
   * (its record is FAILED now): the copy still carries the first reason.
   */
  readonly deadLetter?: DeadLetterDisposition;
}

/**
 * Between two tries of a broker write that failed (a copy's send, the first offset commit, the
 * pin of an assignment's uncommitted partitions): 0.2 s, doubling, at most 30 s (core's backoff
 * rule).
 */
export const brokerBackoff = doublingBackoff(200, 30_000);

/**
 * `rebatch`: the record was not run because the one before it was tried again in place; run the
 * rest of the batch again from it (its lease was kept, so no store round trip is repeated).
 */
type Step = 'settled' | 'paused' | 'abandoned' | 'rebatch';

/**
 * Records of one partition begun together: their store round trips are shared, their handlers
 * still run one after another in offset order (see Processor.processInOrder). Small enough that a
 * crash leaves few leases behind: each of them makes the next begin of its record a takeover,
 * which waits for the lease and counts as an attempt.
 */
const CHUNK = 32;
/*
 * A detached run gives back the leases of the records begun after it (up to CHUNK - 1): where
 * every handler runs long, that would be CHUNK begins and releases per record. So after a detach
 * (and after giving way to a record taken over, see settle) a partition's groups start at one
 * record and double with each group run to its end.
 */

/** Runs one batch. Throws only a rebalance error, so kafkajs rejoins the group at once. */
export async function runBatch(env: BatchEnv, payload: EachBatchPayloadLike): Promise<void> {
  const run = new BatchRun(env, payload);
  await run.run();
}

/**
 * Commits the position after a batch kafkajs skipped (records a reader never gets: transaction
 * markers, an aborted transaction's records), so that a partition whose last offset is a
 * transaction's marker reaches a lag of 0. As safe as any commit here: kafkajs fetches a partition
 * from its first unresolved offset, so every record before the batch is settled. Not retried: the
 * next record's commit covers it.
 */
export async function commitSkipped(env: BatchEnv, skipped: SkippedBatch): Promise<void> {
  if (env.stopSignal.aborted) return;
  const { topic, partition, next } = skipped;
  try {
    await skipped.commit(env.marks.get(topic));
    env.anchored.add(`${topic}:${partition}`);
    env.positions.set(`${topic}:${partition}`, BigInt(next));
    env.stats.commits++;
  } catch (error) {
    env.logger.debug('offset commit after skipped records failed', {
      topic,
      partition,
      offset: next,
      error: toErrorInfo(error),
    });
  }
}

class BatchRun {
  private readonly topic: string;
  private readonly partition: number;
  /** `<topic>:<partition>`. */
  private readonly partitionId: string;
  private stopped = false;
  /** Per record of the batch, when (monotonic ms) its handler last started; 0: not yet. */
  private readonly handlerStartedAt: Float64Array;
  /**
   * Ends the batch's latest wait (see {@link unlessInterrupted}) with `undefined` when the batch
   * must stop taking on work (revoked, stale, or the consumer stops), or `detached`. The batch
   * waits for one thing at a time; a wait that has ended already takes no second answer.
   */
  private endWait: ((answer: undefined | 'detached') => void) | undefined;
  /**
   * Whether that wait is for record `waitingIndex`'s run, which the heartbeat tick detaches (see
   * {@link detach}) once its handler has run past `maxInPlaceWaitMs`.
   */
  private waitIsRun = false;
  private waitingIndex = 0;
  private rebalanceError: unknown;
  /** Ordered groups started by this batch (see Processor.processInOrder). */
  private readonly runs: OrderedRun[] = [];
  /** The offset of the batch's last settled record; a BigInt only when it is committed. */
  private settledOffset: string | undefined;
  private committedNext: bigint | undefined;
  private sinceCommit = 0;
  private lastCommitAt = performance.now();
  /** The offset commit on its way (see commitAlong). */
  private committing: Promise<void> | undefined;

  constructor(
    private readonly env: BatchEnv,
    private readonly payload: EachBatchPayloadLike,
  ) {
    this.topic = payload.batch.topic;
    this.partition = payload.batch.partition;
    this.partitionId = `${this.topic}:${this.partition}`;
    this.handlerStartedAt = new Float64Array(payload.batch.messages.length);
    if (env.stopSignal.aborted) this.interrupt();
    else env.stopSignal.addEventListener('abort', this.onStop, { once: true });
  }

  // Removed when the batch ends: the stop signal lives as long as the consumer, batches do not.
  private readonly onStop = () => this.interrupt();

  private interrupt(): void {
    if (this.stopped) return;
    this.stopped = true;
    // Handlers of records not under way yet must not start once the batch is given up.
    void this.releaseRuns();
    const end = this.endWait;
    this.endWait = undefined;
    end?.(undefined);
  }

  /**
   * What `pending` answers, or undefined once the batch is interrupted first; with `detachAt`,
   * also `detached` once the heartbeat tick detaches the wait for that record's run (see
   * {@link detach}). Not a race with a promise of the interrupt: every race would leave a reaction
   * on that batch-long promise, and with it each record's run, until the batch ends (a batch is
   * thousands of records). On every record's path: a promise and nothing else made per wait.
   */
  private unlessInterrupted<T>(pending: Promise<T>): Promise<T | undefined>;
  private unlessInterrupted<T>(pending: Promise<T>, detachAt: number): Promise<T | 'detached' | undefined>;
  private unlessInterrupted<T>(pending: Promise<T>, detachAt?: number): Promise<T | 'detached' | undefined> {
    // Interrupted already: an answer that is already there still wins, as in a race.
    if (this.stopped) return Promise.race([pending, Promise.resolve(undefined)]);
    this.waitIsRun = detachAt !== undefined;
    if (detachAt !== undefined) this.waitingIndex = detachAt;
    return new Promise<T | 'detached' | undefined>((resolve, reject) => {
      this.endWait = resolve;
      pending.then(resolve, reject);
    });
  }

  /**
   * A run still going past `maxInPlaceWaitMs` (a long handler): the partition is paused and the
   * batch ends, because kafkajs fetches again only once every batch of a fetch has returned, so
   * waiting in place would hold up every partition of the consumer. The run goes on; once it
   * settles the partition resumes (after its delay, for a retry or defer) and the record, still
   * unresolved, is fetched again: the store answers it (a duplicate of the completed key, or
   * PREVIOUSLY_FAILED, whose copy then carries the first reason) and it is settled in order.
   */
  private detach(message: KafkaMessageLike, pending: Promise<Disposition>): Step {
    const { env } = this;
    const resume = this.payload.pause();
    env.stats.paused++;
    env.stats.detached++;
    env.groupSizes.set(this.partitionId, 1);
    const id = this.copyId(message);
    this.goOnWithout(pending, (d) => {
      if (d?.action === 'dead-letter') {
        // A run of it detached before may have decided first (a fetch that came back while
        // this one still ran): that reason stays.
        const held = env.copiesOnHold.get(id);
        env.copiesOnHold.set(id, { attempts: held?.attempts ?? 0, deadLetter: held?.deadLetter ?? d });
      }
      if (d?.action === 'retry') env.stats.retried++;
      if (d?.action === 'defer') env.stats.deferred++;
      env.scheduleResume(d?.action === 'retry' || d?.action === 'defer' ? d.delayMs : 0, resume);
    });
    return 'paused';
  }

  /**
   * A run the batch no longer waits for (detached, given up, or started ahead of where the batch
   * ended): `stop` waits for it, `inFlight` counts it and its outcome is counted when it ends;
   * `ended` gets its disposition (undefined if it threw).
   */
  private goOnWithout(pending: Promise<Disposition>, ended?: (d: Disposition | undefined) => void): void {
    const { env } = this;
    env.track(pending);
    env.stats.inFlight++;
    void pending
      .then(
        (d) => {
          countOutcome(env.stats, d);
          ended?.(d);
        },
        () => ended?.(undefined),
      )
      .finally(() => {
        env.stats.inFlight--;
      });
  }

  /** Ends the batch's ordered groups: no handler of theirs starts any more; kept leases go back. */
  private releaseRuns(): Promise<unknown> {
    return Promise.all(this.runs.splice(0).map((r) => r.release()));
  }

  private live(): boolean {
    if (!this.stopped && (!this.payload.isRunning() || this.payload.isStale())) this.interrupt();
    return !this.stopped;
  }

  async run(): Promise<void> {
    // kafkajs heartbeats only between batches; a long handler or a wait would otherwise let the
    // session time out and cause a rebalance. Its own throttle keeps these calls cheap. (On
    // librdkafka, which heartbeats by itself, the timer only notices a revocation: isStale.)
    const timer = setInterval(() => this.heartbeat(), this.env.heartbeatIntervalMs);
    const messages = this.payload.batch.messages;
    const { stats } = this.env;
    // Retry-topic records wait for their due time one by one; the others run in ordered groups.
    const grouped = this.topic !== this.env.retryTopic;
    let group: { from: number; run: OrderedRun } | undefined;
    let i = 0;
    if (this.env.copiesOnHold.size > 0) this.letGoOfSettledHolds();
    this.checkSkip();
    try {
      const anchored = await this.anchor();
      while (anchored && i < messages.length) {
        const message = messages[i] as KafkaMessageLike;
        let started: Promise<Disposition> | undefined;
        if (grouped) {
          if (group === undefined || i - group.from >= group.run.dispositions.length) {
            if (!this.live()) break;
            // Every record of the group before settled, so it keeps no lease: let it go rather
            // than hold its runs (and their results) until the batch ends.
            const done = group === undefined ? -1 : this.runs.indexOf(group.run);
            if (done >= 0) this.runs.splice(done, 1);
            const from = i;
            const run = this.env.processor.processInOrder(
              messages.slice(i, i + this.groupSize(group !== undefined)).map((m) => this.deliveryOf(m)),
              (index) => this.handlerStarted(from + index),
            );
            this.runs.push(run);
            group = { from: i, run };
          }
          // Already started: an interrupt gives it the grace period like any run under way.
          started = group.run.dispositions[i - group.from];
        } else if (!this.live()) break;
        stats.received++;
        stats.inFlight++;
        let step: Step | 'again' = 'again';
        try {
          if (started !== undefined) {
            const answer = await this.unlessInterrupted(started, i);
            // An ack, the common answer, is settled here rather than in another async frame.
            step =
              typeof answer === 'object' && answer.action === 'ack'
                ? this.acked(message, answer)
                : await this.answered(message, started, answer);
          }
          if (step === 'again') step = await this.settle(message, i);
        } finally {
          stats.inFlight--;
        }
        if (step === 'abandoned') stats.abandoned++;
        if (step === 'rebatch') {
          stats.received--; // counted again when it is run
          if (!this.live()) break;
          group = undefined;
          continue;
        }
        if (step !== 'settled') break;
        i++;
        if (
          this.sinceCommit >= this.env.commitEveryMessages ||
          performance.now() - this.lastCommitAt >= this.env.commitIntervalMs
        ) {
          this.commitAlong();
        }
      }
      if (i > 0 && i === messages.length) this.settleTrailing();
    } finally {
      clearInterval(timer);
      // Records begun but never run (the batch paused or was given up): give their leases back,
      // so whoever fetches them next does not find them busy for a whole lease.
      const releasing = this.releaseRuns();
      if (group !== undefined) this.trackRest(group, i);
      await releasing;
      this.env.stopSignal.removeEventListener('abort', this.onStop);
      // The batch's last commit, after the one on its way: kafkajs takes a batch's commits only
      // until its eachBatch returns.
      await this.committing;
      await this.commit();
      if (this.settledOffset !== undefined && this.rebalanceError === undefined && !this.payload.isStale()) {
        this.env.positions.set(this.partitionId, BigInt(this.settledOffset) + 1n);
      }
    }
    // Rethrown so kafkajs rejoins now instead of after its next own heartbeat.
    if (this.rebalanceError !== undefined) throw this.rebalanceError;
  }

  /**
   * Copies on hold of this partition before the batch's first record: that record's position is
   * past them, so they were settled, by this member or by another one that owned the partition
   * meanwhile (a rebalance took it away while it was paused). Without this, each such entry stayed
   * for the consumer's life.
   */
  private letGoOfSettledHolds(): void {
    const first = this.payload.batch.messages[0];
    if (first === undefined) return;
    const prefix = `${this.partitionId}:`;
    const from = BigInt(first.offset);
    for (const id of this.env.copiesOnHold.keys()) {
      if (id.startsWith(prefix) && BigInt(id.slice(prefix.length)) < from) this.env.copiesOnHold.delete(id);
    }
  }

  /**
   * The client fetches a partition from where its last batch left off, unless that position was
   * no longer in the log (its records deleted by retention while this consumer lagged) and the
   * client reset it to the oldest record kept. A gap of one offset is a transaction's marker.
   */
  private checkSkip(): void {
    const first = this.payload.batch.messages[0];
    const from = this.env.positions.get(this.partitionId);
    if (first !== undefined && from !== undefined && BigInt(first.offset) > from + 1n) {
      this.env.noticeSkip(this.topic, this.partition, from);
    }
  }

  private heartbeat(): void {
    if (!this.live()) return;
    // One check per tick rather than a timer per record: a run is detached within a tick after
    // its handler passed maxInPlaceWaitMs. Not before the handler started: a slow begin detached
    // would release its group and give its own lease back, again at every fetch.
    const since = this.handlerStartedAt[this.waitingIndex] ?? 0;
    if (this.waitIsRun && since > 0 && performance.now() - since > this.env.maxInPlaceWaitMs) {
      this.endWait?.('detached');
    }
    this.payload.heartbeat().catch((error: unknown) => {
      if (isRebalanceError(error)) {
        this.rebalanceError ??= error;
        this.interrupt();
      } else {
        this.env.logger.debug('kafka heartbeat failed', { error: toErrorInfo(error) });
      }
    });
  }

  /** The size of the partition's next group; `grow` when the group before ran to its end. */
  private groupSize(grow: boolean): number {
    const { groupSizes } = this.env;
    let size = groupSizes.get(this.partitionId) ?? CHUNK;
    if (grow && size < CHUNK) {
      size = Math.min(CHUNK, size * 2);
      if (size === CHUNK) groupSizes.delete(this.partitionId);
      else groupSizes.set(this.partitionId, size);
    }
    return size;
  }

  private handlerStarted(index: number): void {
    this.handlerStartedAt[index] = performance.now();
  }

  /**
   * The runs of `group` after record `i` when the batch ends: handlers that started ahead of it
   * (up to the group's window) go on, so `stop` waits for them too and `inFlight` counts them.
   */
  private trackRest(group: { from: number; run: OrderedRun }, i: number): void {
    const { env } = this;
    const { dispositions } = group.run;
    for (let j = i + 1 - group.from; j < dispositions.length; j++) {
      const pending = dispositions[j] as Promise<Disposition>;
      if ((this.handlerStartedAt[group.from + j] ?? 0) > 0) this.goOnWithout(pending);
      // Not started: given back as not run, which stop() also waits for (processor.givenBack).
      else env.track(pending);
    }
  }

  private deliveryOf(message: KafkaMessageLike) {
    return toDelivery(
      this.topic,
      this.partition,
      message,
      this.env.groupId,
      this.topic === this.env.retryTopic,
    );
  }

  /**
   * Runs a record (again, for a grouped record: its first run started in its group) until it is
   * settled, or the batch pauses or gives it up.
   */
  private async settle(message: KafkaMessageLike, index: number): Promise<Step> {
    const { env } = this;
    if (this.topic === env.retryTopic) {
      const due = retryAtOf(message);
      const wait = due === undefined ? 0 : due - Date.now();
      if (wait > 0) {
        const step = await this.wait(wait);
        if (step !== 'settled') return step;
      }
    }
    for (;;) {
      this.handlerStartedAt[index] = 0;
      const pending = env.processor.process(this.deliveryOf(message), () => this.handlerStarted(index));
      const step = await this.answered(message, pending, await this.unlessInterrupted(pending, index));
      if (step !== 'again') return step;
    }
  }

  /**
   * Acts on what the run `pending` of a record answered (see {@link unlessInterrupted}); `again`
   * when the record is to run again now (a retry or a deferral waited out in place).
   */
  private async answered(
    message: KafkaMessageLike,
    pending: Promise<Disposition>,
    answer: Disposition | 'detached' | undefined,
  ): Promise<Step | 'again'> {
    const { env } = this;
    if (answer === 'detached') return this.detach(message, pending);
    const d = answer ?? (await this.lateAnswer(pending));
    if (d === undefined) {
      // Given up; the run goes on unowned (its writes are fenced) and is still in flight.
      this.goOnWithout(pending);
      return 'abandoned';
    }
    if (d.outcome === 'not-run') {
      // Gave way to a record taken over: the records a dead worker held run one at a time, so
      // beginning 32 at once here would be given back again at each of them.
      if (d.action === 'defer' && d.gaveWay) env.groupSizes.set(this.partitionId, 1);
      return 'rebatch';
    }
    if (d.action === 'ack') return this.acked(message, d);
    countOutcome(env.stats, d);
    // A grouped record's run has its delivery already: it is mapped again only to be copied.
    switch (d.action) {
      case 'dead-letter': {
        const step = await this.settleWithCopy(d, message, this.deliveryOf(message));
        if (step !== 'settled') return step;
        env.stats.deadLettered++;
        return 'settled';
      }
      case 'retry': {
        if (env.retryTopic !== undefined) {
          const step = await this.settleWithCopy(d, message, this.deliveryOf(message));
          if (step !== 'settled') return step;
          env.stats.retried++;
          return 'settled';
        }
        env.stats.retried++;
        const step = await this.wait(d.delayMs);
        return step === 'settled' ? 'again' : step;
      }
      case 'defer': {
        // Its dead letter was decided before (a copy refused, or a detached run escalating an
        // unconfirmed publish): the record is still unpublished, so that decision stands
        // rather than another round of deferrals.
        const held = d.outcome === 'publish-failed' ? env.copiesOnHold.get(this.copyId(message)) : undefined;
        if (held?.deadLetter !== undefined) {
          const step = await this.settleWithCopy(held.deadLetter, message, this.deliveryOf(message));
          if (step !== 'settled') return step;
          env.stats.deadLettered++;
          return 'settled';
        }
        env.stats.deferred++;
        this.logDefer(d, message);
        const step = await this.wait(d.delayMs);
        return step === 'settled' ? 'again' : step;
      }
    }
  }

  private acked(message: KafkaMessageLike, d: Extract<Disposition, { action: 'ack' }>): Step {
    const { env } = this;
    countOutcome(env.stats, d);
    env.stats.acked++;
    if (env.copiesOnHold.size > 0) env.copiesOnHold.delete(this.copyId(message));
    return this.resolve(message);
  }

  private copyId(message: KafkaMessageLike): string {
    return `${this.partitionId}:${message.offset}`;
  }

  /**
   * Produces the retry or dead-letter copy (acks -1), then resolves the original's offset: core's
   * ack-last order. `paused` when the broker kept refusing it (the partition waits, the copy is
   * on hold), `abandoned` when the batch was interrupted first.
   */
  private async settleWithCopy(
    d: Extract<Disposition, { action: 'retry' | 'dead-letter' }>,
    message: KafkaMessageLike,
    delivery: Delivery,
  ): Promise<Step> {
    const { env, topic, partition } = this;
    const id = this.copyId(message);
    const held = env.copiesOnHold.get(id);
    const settling = d.action === 'dead-letter' && held?.deadLetter !== undefined ? held.deadLetter : d;
    let sent = 'settled' as Step;
    const copy = async (to: string, record: Parameters<ExactlyOnceProducer['sendRecords']>[1][number]) => {
      sent = await this.produce(to, record, settling, id);
      if (sent !== 'settled') throw new Error('the copy was not acknowledged');
    };
    const fromRetryTopic = topic === env.retryTopic;
    try {
      await ackLast(settling, {
        retryCopy: (r) =>
          copy(
            env.retryTopic as string,
            retryRecord(topic, partition, message, delivery, r, Date.now(), fromRetryTopic),
          ),
        deadLetterCopy: (dl) =>
          copy(env.deadLetterTopic, deadLetterRecord(topic, partition, message, dl.reason, fromRetryTopic)),
        ack: () => this.resolve(message),
      });
      if (held !== undefined) env.copiesOnHold.delete(id);
      return 'settled';
    } catch {
      return sent === 'paused' ? 'paused' : 'abandoned';
    }
  }

  /**
   * Every record settled: records a reader never gets after the last one (a transaction's commit
   * marker) are settled with it, so the commit covers them and the partition's lag can reach 0.
   */
  private settleTrailing(): void {
    const last = this.payload.batch.lastOffset?.();
    if (last === undefined || this.settledOffset === undefined || BigInt(last) <= BigInt(this.settledOffset))
      return;
    this.payload.resolveOffset(last);
    this.settledOffset = last;
  }

  private resolve(message: KafkaMessageLike): Step {
    this.payload.resolveOffset(message.offset);
    this.settledOffset = message.offset;
    this.sinceCommit++;
    return 'settled';
  }

  /**
   * The batch was interrupted while it waited for a run (see {@link unlessInterrupted}): the run
   * still gets `revokeGraceMs` (when stopping: the rest of stop's timeout) to finish, so a short
   * handler's work is committed rather than repeated. After that it goes on unowned (its writes
   * are fenced; undefined) and the record stays unresolved for whoever owns the partition next.
   */
  private async lateAnswer(pending: Promise<Disposition>): Promise<Disposition | undefined> {
    if (!(await settledWithin([pending], this.env.graceMs()))) return undefined;
    const late = await pending;
    // Only a settle that needs no more broker round trips than a commit is taken this late.
    return late?.action === 'ack' || late?.action === 'dead-letter' ? late : undefined;
  }

  /**
   * The partition waits `ms` before the record is tried again. Short waits happen in place (the
   * heartbeat timer keeps the session alive); longer ones pause the partition and end the batch,
   * because kafkajs fetches again only when every batch of the fetch has returned: waiting in
   * place would stall the other partitions too. The unresolved record is fetched again on resume.
   */
  private async wait(ms: number): Promise<Step> {
    if (ms > this.env.maxInPlaceWaitMs) {
      const resume = this.payload.pause();
      this.env.stats.paused++;
      this.env.scheduleResume(ms, resume);
      return 'paused';
    }
    let timer: NodeJS.Timeout | undefined;
    const slept = await this.unlessInterrupted(
      new Promise<boolean>((resolve) => {
        timer = setTimeout(resolve, ms, true);
      }),
    );
    clearTimeout(timer);
    return slept ? 'settled' : 'abandoned';
  }

  /**
   * Produces a copy, sending it again with a growing backoff until the broker acknowledges it.
   * Backoffs up to `maxInPlaceWaitMs` are waited in place; a longer one puts the copy on hold and
   * pauses the partition (`paused`): kafkajs fetches again only once every batch of a fetch
   * returned, so retrying in place for good (a dead-letter topic too small for the copy, or
   * missing) held up every partition of the consumer, not only this one.
   */
  private async produce(
    topic: string,
    record: Parameters<ExactlyOnceProducer['sendRecords']>[1][number],
    settling: Extract<Disposition, { action: 'retry' | 'dead-letter' }>,
    id: string,
  ): Promise<Step> {
    for (let attempt = (this.env.copiesOnHold.get(id)?.attempts ?? 0) + 1; ; attempt++) {
      try {
        const sending = this.env.producer.sendRecords(topic, [record]);
        sending.catch(() => undefined); // a send given up on may still fail later
        // Interrupted (revoked, stopping): the send gets the grace period like a run under way,
        // then the record is left unresolved (a copy landing later is a duplicate copy, never a
        // lost one) so that stop() keeps its timeout against a stalled broker.
        if ((await this.unlessInterrupted(sending.then(() => true))) === undefined) {
          if (!(await settledWithin([sending], this.env.graceMs()))) return 'abandoned';
        }
        await sending;
        return 'settled';
      } catch (error) {
        const tags = kafkaErrorTags(error);
        this.env.logger.warn(`${settling.action} copy not acknowledged; retrying`, {
          topic,
          attempt,
          error: toErrorInfo(error),
          ...(tags ? { kafkaError: tags } : {}),
        });
        const backoff = brokerBackoff(attempt);
        if (backoff > this.env.maxInPlaceWaitMs) {
          this.env.copiesOnHold.set(id, {
            attempts: attempt,
            ...(settling.action === 'dead-letter' ? { deadLetter: settling } : {}),
          });
        }
        const step = await this.wait(backoff);
        if (step !== 'settled') return step;
      }
    }
  }

  /**
   * Commits `offset` as the partition's next; false when that failed (logged; a rebalance error
   * also interrupts the batch, so kafkajs rejoins).
   */
  private async commitOffset(offset: string, what: string): Promise<boolean> {
    try {
      await this.payload.commitOffsetsIfNecessary({
        topics: [
          {
            topic: this.topic,
            partitions: [withMetadata({ partition: this.partition, offset }, this.env.marks.get(this.topic))],
          },
        ],
      });
      this.env.anchored.add(this.partitionId);
      this.env.stats.commits++;
      return true;
    } catch (error) {
      if (isRebalanceError(error)) {
        this.rebalanceError ??= error;
        this.interrupt();
      }
      this.env.logger.warn(`${what} failed`, {
        topic: this.topic,
        partition: this.partition,
        offset,
        error: toErrorInfo(error),
      });
      return false;
    }
  }

  /**
   * Commits the batch's first offset before anything of it runs, once per partition in this
   * consumer's life. A partition the group never committed starts wherever the client's reset
   * points (its end, unless `fromBeginning`): were the first records' runs given up or their worker
   * killed before a commit, the next owner would start at the end again, after them, and never
   * read them. Committing the first fetched offset is always safe: nothing before it was read.
   * Until that commit is acknowledged no record of the batch runs: false when the batch ends
   * without it (interrupted, or its partition paused to try again later, from the same offset).
   */
  private async anchor(): Promise<boolean> {
    const first = this.payload.batch.messages[0];
    if (first === undefined || this.env.anchored.has(this.partitionId)) return true;
    for (let attempt = 1; ; attempt++) {
      if (await this.commitOffset(first.offset, 'first offset commit')) return true;
      if (!this.live() || (await this.wait(brokerBackoff(attempt))) !== 'settled') return false;
    }
  }

  /**
   * Commits the settled offsets while the records go on: an offset commit is a broker round trip
   * (about 6 ms on an idle Kafka 4 broker here, 20 ms and more beside four partitions' fetches),
   * and awaiting one every `commitEveryMessages` records made them most of a partition's time.
   * One at a time, so they land in order; a record's ack is its resolved offset, not this commit
   * (a commit lost with the process repeats settled records, which the store answers as
   * duplicates). A rebalance it meets interrupts the batch as an awaited one would.
   */
  private commitAlong(): void {
    if (this.committing !== undefined) return;
    this.committing = this.commit().finally(() => {
      this.committing = undefined;
    });
  }

  private async commit(): Promise<void> {
    if (this.settledOffset === undefined) return;
    const next = BigInt(this.settledOffset) + 1n;
    if (next === this.committedNext) return;
    this.sinceCommit = 0;
    this.lastCommitAt = performance.now();
    // Not fatal when it fails: a later commit carries a higher offset; until then a restart
    // repeats a few settled records, which the store answers as duplicates.
    if (await this.commitOffset(next.toString(), 'offset commit')) this.committedNext = next;
  }

  private logDefer(d: Extract<Disposition, { action: 'defer' }>, message: KafkaMessageLike): void {
    if (d.outcome === 'busy') return; // routine: another run holds the key
    // A store outage is logged once by the store's health watch, not once a second per partition.
    const level = d.outcome === 'store-unavailable' ? 'debug' : 'info';
    this.env.logger[level]('record deferred', {
      topic: this.topic,
      partition: this.partition,
      offset: message.offset,
      outcome: d.outcome,
      delayMs: d.delayMs,
      ...(d.error ? { error: d.error } : {}),
    });
  }
}
