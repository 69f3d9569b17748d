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
 * the returned promise.) A commit of kafkajs' own reset to the earliest offset (-2, left by a
 * member that ended before its next commit) is no missing commit: pinned at the beginning. The
 * retry topic's partitions are pinned at their beginning. A pin that fails is tried again, the
 * partitions held, until it is through: released unpinned, they would start at their beginning.
 *
 * A partition added to a topic later is no partition to skip: its records were all written after
 * the group began, but the group learns of it only at its next assignment (kafkajs refreshes
 * metadata every 5 minutes), and pinned at its end, the records written to it meanwhile were
 * never processed. Once every partition of a work topic has a commit, the consumer's commits on
 * that topic carry its partition count in their metadata (`exactly-once:partitions=<n>`), and a
 * partition found without a commit at or past the count a commit carries was added since: it is
 * pinned at its beginning. Without such a commit (a group of an earlier version, whose quiet
 * partitions were never committed) nothing tells a new partition from an old quiet one, and it is
 * pinned at its end.
 */

import { type Logger, toErrorInfo } from '@exactly-once/core';
import { pause } from '@exactly-once/core/spi';
import { brokerBackoff } from './batch.js';
import {
  type AdminLike,
  type AssignmentListener,
  type PartitionControl,
  type TopicPartitionOffset,
  type TopicPartitions,
  withMetadata,
} from './client.js';

const MARK_PREFIX = 'exactly-once:partitions=';
/** The error a loss to the topic's retention is logged with (the pin's, and a running member's). */
const DELETED_UNPROCESSED =
  "records were deleted by the topic's retention before the group processed them; it resumes at the oldest record kept";
/** What kafkajs commits when it resets a position the log no longer holds (its "earliest"). */
const RESET_TO_EARLIEST = -2;

/** The metadata of commits on a topic whose `partitions` partitions all have a commit. */
export function partitionsMark(partitions: number): string {
  return `${MARK_PREFIX}${partitions}`;
}

/** The partition count a commit's metadata carries, or undefined (none, or another's metadata). */
export function markedPartitions(metadata: string | null | undefined): number | undefined {
  if (typeof metadata !== 'string' || !metadata.startsWith(MARK_PREFIX)) return undefined;
  const digits = metadata.slice(MARK_PREFIX.length);
  return /^[1-9][0-9]{0,8}$/.test(digits) ? Number(digits) : undefined;
}

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
  /**
   * By work topic, the metadata of this consumer's commits on it: {@link partitionsMark} of its
   * partition count, set once every partition was seen with a commit.
   */
  readonly marks: Map<string, string>;
  readonly stopSignal: AbortSignal;
  /** Tracks the pinning under way, so `stop` can wait for it. */
  track(work: Promise<unknown>): void;
}

/** The listener for each new assignment: holds, pins and releases its uncommitted partitions. */
export function pinUncommitted(env: PinEnv): AssignmentListener {
  let assignments = 0;
  // Partitions held now, with the assignment that holds them (a newer one takes them over).
  const holding = new Map<string, number>();
  // Work topics whose commits are looked at again until they can be marked (see confirmMarks).
  const confirming = new Set<string>();
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
            const unmarked = (await pin(env, held, control, voided)).filter((t) => !confirming.has(t));
            if (unmarked.length > 0) {
              for (const t of unmarked) confirming.add(t);
              const confirm = confirmMarks(env, unmarked).finally(() => {
                for (const t of unmarked) confirming.delete(t);
              });
              env.track(confirm);
            }
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

/**
 * Commits the start of `held`'s partitions that have no commit, and moves the client there.
 * Answers the work topics not every partition of which was seen with a commit (see confirmMarks).
 */
async function pin(
  env: PinEnv,
  held: readonly TopicPartitions[],
  control: PartitionControl,
  voided: () => boolean,
): Promise<string[]> {
  const admin = await env.admin();
  const unmarked: string[] = [];
  for (const { topic, partitions } of held) {
    const { commits, ends } = await readTopic(env, admin, topic);
    // A newer assignment or a stop made this one void: its partitions may be another member's.
    if (voided()) return [];
    const retry = topic === env.retryTopic;
    // Partitions at or past the count the group's commits carry were added since.
    let marked: number | undefined;
    for (const c of commits) {
      const n = markedPartitions(c.metadata);
      if (n !== undefined && (marked === undefined || n > marked)) marked = n;
    }
    const mark = env.marks.get(topic);
    const without: TopicPartitionOffset[] = [];
    for (const partition of partitions) {
      // Pinned or found committed by an earlier try of this pin: not logged or committed again.
      if (env.anchored.has(`${topic}:${partition}`)) continue;
      const at = committedAt(commits, partition);
      const end = ends.find((e) => e.partition === partition);
      let start: 'low' | 'high' | undefined;
      if (at === RESET_TO_EARLIEST) {
        // kafkajs commits its reset of an out-of-range position, then fetches from the oldest
        // record kept; a member that ended before its next commit left it. Not a partition the
        // group never committed: it resumes where that member did.
        env.logger.warn(
          "the group's commit is kafkajs' reset to the oldest record (records were deleted by the topic's retention before the group processed them); it resumes at the oldest record kept",
          { groupId: env.groupId, topic, partition, oldestKept: Number(end?.low ?? 0) },
        );
        start = 'low';
      } else if (at < 0) {
        const added = !retry && marked !== undefined && partition >= marked;
        if (added) {
          env.logger.info('a partition added to the topic since the group began is read from its beginning', {
            groupId: env.groupId,
            topic,
            partition,
            partitionsBefore: marked,
          });
        }
        start = retry || added ? 'low' : 'high';
      }
      if (start !== undefined) {
        without.push(withMetadata({ topic, partition, offset: String(end?.[start] ?? '0') }, mark));
        continue;
      }
      // Committed, so never reset by the client, except past a position the log no longer holds.
      env.anchored.add(`${topic}:${partition}`);
      const oldest = Number(end?.low ?? 0);
      if (at < oldest) {
        env.logger.error(DELETED_UNPROCESSED, {
          groupId: env.groupId,
          topic,
          partition,
          committed: at,
          oldestKept: oldest,
          lost: oldest - at,
        });
      }
    }
    if (without.length > 0) {
      await control.commit(without);
      for (const o of without) {
        control.seek(o);
        env.anchored.add(`${topic}:${o.partition}`);
      }
    }
    if (retry) continue;
    const pinned = new Set(without.map((o) => o.partition));
    if (!markIfAllCommitted(env, topic, { commits, ends }, pinned)) unmarked.push(topic);
  }
  return unmarked;
}

type TopicCommits = Awaited<ReturnType<typeof readTopic>>;

/** The group's commits on `topic` and the topic's partitions with their oldest and end offsets. */
async function readTopic(env: PinEnv, admin: AdminLike, topic: string) {
  const [committed] = await admin.fetchOffsets({ groupId: env.groupId, topics: [topic] });
  const ends = await admin.fetchTopicOffsets(topic);
  return { commits: committed?.partitions ?? [], ends };
}

function committedAt(commits: TopicCommits['commits'], partition: number): number {
  return Number(commits.find((c) => c.partition === partition)?.offset ?? -1);
}

/**
 * Sets the topic's mark when every partition has a commit (or is among `pinned`, committed just
 * now); answers whether it did.
 */
function markIfAllCommitted(
  env: PinEnv,
  topic: string,
  { commits, ends }: TopicCommits,
  pinned: ReadonlySet<number> = new Set(),
): boolean {
  if (!ends.every((e) => pinned.has(e.partition) || committedAt(commits, e.partition) >= 0)) return false;
  env.marks.set(topic, partitionsMark(ends.length));
  return true;
}

/**
 * Looks again, a few times, at the commits of work topics some partition of which had none when
 * this consumer pinned (another member was pinning it at the same moment, or an earlier version's
 * member owns a quiet one): once every partition has one, this consumer's commits carry the mark.
 * Given up after ten looks (about 3 minutes): until then, and without a mark, a partition added
 * later is pinned at its end, as by an earlier version.
 */
async function confirmMarks(env: PinEnv, topics: readonly string[]): Promise<void> {
  let left = topics.filter((t) => !env.marks.has(t));
  for (let look = 1; look <= 10 && left.length > 0; look++) {
    if (!(await pause(Math.min(1_000 * 2 ** (look - 1), 30_000), env.stopSignal))) return;
    const unmarked: string[] = [];
    for (const topic of left) {
      if (env.marks.has(topic)) continue;
      try {
        if (markIfAllCommitted(env, topic, await readTopic(env, await env.admin(), topic))) continue;
      } catch (error) {
        env.logger.debug('could not read the commits of a topic to mark them', {
          groupId: env.groupId,
          topic,
          error: toErrorInfo(error),
        });
      }
      unmarked.push(topic);
    }
    left = unmarked;
  }
}

/** What {@link noticeSkip} needs of the consumer. */
export interface SkipEnv {
  readonly groupId: string;
  admin(): Promise<AdminLike>;
  readonly logger: Logger;
  track(work: Promise<unknown>): void;
}

/**
 * Says so when records of a partition this consumer was reading were deleted by retention before
 * it processed them: its client then resets the position to the oldest record kept, by itself
 * (kafkajs logs it only to its own logger). Called when a batch starts past where the last one
 * left off (`from`); a gap of aborted or compacted records is no loss: the oldest record kept is
 * not past `from` then. One look at a time per partition.
 */
export function noticeSkip(env: SkipEnv): (topic: string, partition: number, from: bigint) => void {
  const looking = new Set<string>();
  return (topic, partition, from) => {
    const id = `${topic}:${partition}`;
    if (looking.has(id)) return;
    looking.add(id);
    const look = (async () => {
      try {
        const admin = await env.admin();
        const oldest = (await admin.fetchTopicOffsets(topic)).find((e) => e.partition === partition)?.low;
        if (oldest === undefined || BigInt(oldest) <= from) return;
        env.logger.error(DELETED_UNPROCESSED, {
          groupId: env.groupId,
          topic,
          partition,
          position: Number(from),
          oldestKept: Number(oldest),
          lost: Number(BigInt(oldest) - from),
        });
      } catch (error) {
        env.logger.debug('could not read the oldest offset of a partition read past a gap', {
          groupId: env.groupId,
          topic,
          partition,
          error: toErrorInfo(error),
        });
      } finally {
        looking.delete(id);
      }
    })();
    env.track(look);
  };
}
