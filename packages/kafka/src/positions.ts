/**
 * Partitions the group never committed, pinned where their reset put them. With
 * `fromBeginning: false` a partition without a committed offset starts at its end whenever a member
 * is assigned it. The first batch of a partition commits its first offset (see BatchRun.anchor),
 * but a partition that got no record while a member owned it was never committed: the next start
 * reset it to its end again, past every record written while no member ran, and those were never
 * processed. So on each assignment the partitions without a commit are held until their end is
 * committed and the client moved there, then fetched from it: a later start continues from that
 * commit. (kafkajs: paused meanwhile; librdkafka: its assignment waits for the returned promise.)
 * The retry topic's partitions are pinned at their beginning.
 */

import { type Logger, toErrorInfo } from '@exactly-once/core';
import type { AdminLike, AssignmentListener } from './client.js';

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
  /** Partitions (`<topic>:<partition>`) this consumer has committed a position for. */
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
    const pinning = (async () => {
      try {
        const admin = await env.admin();
        for (const { topic, partitions } of held) {
          const [committed] = await admin.fetchOffsets({ groupId: env.groupId, topics: [topic] });
          const without = partitions.filter(
            (p) => Number(committed?.partitions.find((c) => c.partition === p)?.offset ?? -1) < 0,
          );
          if (without.length === 0) continue;
          const ends = await admin.fetchTopicOffsets(topic);
          // A newer assignment or a stop made this one void: its partitions may be another member's.
          if (current !== assignments || env.stopSignal.aborted) return;
          const offsets = without.map((partition) => ({
            topic,
            partition,
            offset: String(
              ends.find((e) => e.partition === partition)?.[topic === env.retryTopic ? 'low' : 'high'] ?? '0',
            ),
          }));
          await control.commit(offsets);
          for (const o of offsets) {
            control.seek(o);
            env.anchored.add(`${topic}:${o.partition}`);
          }
        }
      } catch (error) {
        if (!env.stopSignal.aborted) {
          env.logger.warn(
            'could not commit the position of partitions the group never committed: until a record of theirs is processed, a restart resets them to their end again',
            { groupId: env.groupId, partitions: held, error: toErrorInfo(error) },
          );
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
