/**
 * Where a partition the group never committed starts, decided by the consumer rather than by the
 * client's reset. With `fromBeginning: false` such a partition starts at its end. Left to the
 * client, that reset came back: a partition that got no record while a member owned it was never
 * committed, and the next start reset it to its end again, past every record written while no
 * member ran; and a committed offset the log no longer holds (records deleted by retention) was
 * reset to the end too, past every record still kept. So the client's reset always goes to the
 * beginning (an out-of-range position resumes at the oldest record kept), and on each assignment
 * the partitions without a commit are held until their end is committed and the client moved
 * there, then fetched from it. (kafkajs: paused meanwhile; librdkafka: its assignment waits for
 * the returned promise.) The retry topic's partitions are pinned at their beginning. A pin that
 * fails is tried again, the partitions held, until it is through: released unpinned, they would
 * start at their beginning.
 */

import { type Logger, toErrorInfo } from '@exactly-once/core';
import { pause } from '@exactly-once/core/spi';
import { brokerBackoff } from './batch.js';
import type { AdminLike, AssignmentListener, PartitionControl, TopicPartitions } from './client.js';

export interface PinEnv {
  readonly groupId: string;
  /** The work topics: pinned at their end. */
  readonly topics: readonly string[];
  /**
   * Pinned at its beginning: it holds only this consumer's copies, none to skip. (kafkajs reads it
   * from its beginning anyway; librdkafka's reset is consumer-wide and would start it at its end.)
   */
  readonly retryTopic: string | undefined;
  /** A connected admin client, made on first use. */
  admin(): Promise<AdminLike>;
  readonly logger: Logger;
  /** Partitions (`<topic>:<partition>`) known to have a commit: this consumer's, or found on assignment. */
  readonly anchored: Set<string>;
  readonly stopSignal: AbortSignal;
  /** Tracks the pinning under way, so `stop` can wait for it. */
  track(work: Promise<unknown>): void;
}

/** The listener for each new assignment: holds, pins and releases its uncommitted partitions. */
export function pinUncommitted(env: PinEnv): AssignmentListener {
  let assignments = 0;
  // Partitions held now, with the assignment that holds them (a newer one takes them over).
  const holding = new Map<string, number>();
  return (assignment, control) => {
    const current = ++assignments;
    const paused = new Set(
      control.paused().flatMap(({ topic, partitions }) => partitions.map((p) => `${topic}:${p}`)),
    );
    // Partitions the batches paused (a retry's wait, a detached run) are theirs: left alone.
    const held = assignment
      .filter(({ topic }) => env.topics.includes(topic) || topic === env.retryTopic)
      .map(({ topic, partitions }) => ({
        topic,
        partitions: partitions.filter((p) => {
          const id = `${topic}:${p}`;
          return !env.anchored.has(id) && (!paused.has(id) || holding.has(id));
        }),
      }))
      .filter(({ partitions }) => partitions.length > 0);
    if (held.length === 0) return undefined;
    for (const { topic, partitions } of held)
      for (const p of partitions) holding.set(`${topic}:${p}`, current);
    control.pause(held);
    const voided = () => current !== assignments || env.stopSignal.aborted;
    const pinning = (async () => {
      try {
        for (let attempt = 1; !voided(); attempt++) {
          try {
            await pin(env, held, control, voided);
            return;
          } catch (error) {
            env.logger.warn(
              'could not commit the start of partitions the group never committed; they wait and it is tried again',
              { groupId: env.groupId, partitions: held, attempt, error: toErrorInfo(error) },
            );
          }
          await pause(brokerBackoff(attempt), env.stopSignal);
        }
      } finally {
        const release = held
          .map(({ topic, partitions }) => ({
            topic,
            partitions: partitions.filter((p) => holding.get(`${topic}:${p}`) === current),
          }))
          .filter(({ partitions }) => partitions.length > 0);
        for (const { topic, partitions } of release)
          for (const p of partitions) holding.delete(`${topic}:${p}`);
        if (release.length > 0 && !env.stopSignal.aborted) control.resume(release);
      }
    })();
    env.track(pinning);
    return pinning;
  };
}

/** Commits the start of `held`'s partitions that have no commit, and moves the client there. */
async function pin(
  env: PinEnv,
  held: readonly TopicPartitions[],
  control: PartitionControl,
  voided: () => boolean,
): Promise<void> {
  const admin = await env.admin();
  for (const { topic, partitions } of held) {
    const [committed] = await admin.fetchOffsets({ groupId: env.groupId, topics: [topic] });
    const ends = await admin.fetchTopicOffsets(topic);
    // A newer assignment or a stop made this one void: its partitions may be another member's.
    if (voided()) return;
    const without: { topic: string; partition: number; offset: string }[] = [];
    for (const partition of partitions) {
      // Pinned or found committed by an earlier try of this pin: not logged or committed again.
      if (env.anchored.has(`${topic}:${partition}`)) continue;
      const at = Number(committed?.partitions.find((c) => c.partition === partition)?.offset ?? -1);
      const end = ends.find((e) => e.partition === partition);
      if (at < 0) {
        without.push({
          topic,
          partition,
          offset: String(end?.[topic === env.retryTopic ? 'low' : 'high'] ?? '0'),
        });
        continue;
      }
      // Committed, so never reset by the client, except past a position the log no longer holds.
      env.anchored.add(`${topic}:${partition}`);
      const oldest = Number(end?.low ?? 0);
      if (at < oldest) {
        env.logger.error(
          "records were deleted by the topic's retention before the group processed them; it resumes at the oldest record kept",
          { groupId: env.groupId, topic, partition, committed: at, oldestKept: oldest, lost: oldest - at },
        );
      }
    }
    if (without.length === 0) continue;
    await control.commit(without);
    for (const o of without) {
      control.seek(o);
      env.anchored.add(`${topic}:${o.partition}`);
    }
  }
}
