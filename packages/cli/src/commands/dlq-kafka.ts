/**
 * Dead letters in a Kafka topic (the consumer's `deadLetter.topic`). Records are read by offset
 * range with a throwaway consumer group (never committed, deleted afterwards) that seeks each
 * partition to the start of its range. A replay produces each record again (same key, same value,
 * the original headers without the dead-letter reason) to the topic it came from, with an
 * idempotent producer and acks from all in-sync replicas, one record at a time. A dead-letter
 * topic cannot be edited: the replayed records stay in it, and the command reports the offsets it
 * replayed so they are not replayed twice by mistake (if they are, the store answers the second
 * copy as a duplicate).
 */
import { randomUUID } from 'node:crypto';
import { Headers } from '@exactly-once/core';
import type { IHeaders, Kafka, KafkaMessage } from 'kafkajs';
import { CliError, describeError, UsageError } from '../errors.js';
import { type Io, progress } from '../output.js';
import { importPeer } from '../stores.js';
import { parseHostPorts } from '../parse.js';
import {
  bytesText,
  type DeadLetter,
  type HeaderText,
  isReplayDropped,
  letterKey,
  letterRequestId,
  type ReplayResult,
  replayLog,
  type ResetOutcome,
  reasonOf,
  refusedAfterReset,
  replayBase,
  single,
} from './dlq-common.js';

type KafkaModule = typeof import('kafkajs');

/** Offsets `[from, to)` of one partition. */
export interface OffsetRange {
  readonly partition: number;
  readonly from: number;
  readonly to: number;
}

export interface KafkaSource {
  readonly description: string;
  /** Records per partition between the low and high watermarks. */
  watermarks(): Promise<{ partition: number; low: number; high: number }[]>;
  read(ranges: readonly OffsetRange[], label?: string): Promise<DeadLetter[]>;
  replay(
    letters: readonly DeadLetter[],
    options: { readonly to?: string; readonly reset?: (letter: DeadLetter) => Promise<ResetOutcome> },
  ): Promise<ReplayResult[]>;
  close(): Promise<void>;
}

const READ_TIMEOUT_MS = 60_000;

export async function openKafka(io: Io, brokersText: string, topic: string): Promise<KafkaSource> {
  const brokers = parseHostPorts('--kafka', brokersText).map(({ host, port }) =>
    host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`,
  );
  const { Kafka: KafkaClass, logLevel } = await importPeer<KafkaModule>('kafkajs');
  const kafka: Kafka = new KafkaClass({
    clientId: 'exactly-once-cli',
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
    retry: { retries: 3, initialRetryTime: 300, maxRetryTime: 3_000 },
  });
  const admin = kafka.admin();
  try {
    await admin.connect();
  } catch (error) {
    throw new CliError(`cannot connect to Kafka at ${brokers.join(',')}: ${describeError(error)}`);
  }
  const description = `Kafka topic ${topic}`;
  let producer: ReturnType<Kafka['producer']> | undefined;

  const watermarks = async () => {
    try {
      const offsets = await admin.fetchTopicOffsets(topic);
      return offsets
        .map((o) => ({ partition: o.partition, low: Number(o.low), high: Number(o.high) }))
        .sort((a, b) => a.partition - b.partition);
    } catch (error) {
      const text = describeError(error);
      throw new CliError(
        `${description}: ${/does not host this topic|UNKNOWN_TOPIC/i.test(text) ? 'no such topic' : text}`,
      );
    }
  };

  return {
    description,
    watermarks,
    async read(ranges, label = 'reading') {
      const wanted = new Map<number, OffsetRange>();
      for (const r of ranges) if (r.to > r.from) wanted.set(r.partition, r);
      if (wanted.size === 0) return [];
      const total = [...wanted.values()].reduce((n, r) => n + (r.to - r.from), 0);
      const bar = progress(io, label, total);
      const groupId = `exactly-once-cli-${randomUUID()}`;
      const consumer = kafka.consumer({
        groupId,
        sessionTimeout: 10_000,
        rebalanceTimeout: 10_000,
        heartbeatInterval: 1_000,
        maxWaitTimeInMs: 500,
        allowAutoTopicCreation: false,
      });
      const found = new Map<string, DeadLetter>();
      const done = new Set<number>();
      try {
        await consumer.connect();
        await consumer.subscribe({ topic, fromBeginning: true });
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new CliError(`${description}: read timed out after ${READ_TIMEOUT_MS / 1000} s`)),
            READ_TIMEOUT_MS,
          );
          // A partition's range is read once a batch reaches its last offset. The batch's end event,
          // not eachBatch, says so: kafkajs hands eachBatch no batch whose records are all filtered
          // out (a commit marker, an aborted transaction's records), and a range may end in one.
          consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
            const range = wanted.get(payload.partition);
            if (!range || Number(payload.lastOffset) < range.to - 1) return;
            done.add(payload.partition);
            if (done.size === wanted.size) {
              clearTimeout(timer);
              resolve();
            }
          });
          consumer
            .run({
              autoCommit: false,
              eachBatch: async ({ batch }) => {
                const range = wanted.get(batch.partition);
                if (!range || done.has(batch.partition)) return;
                for (const message of batch.messages) {
                  const offset = Number(message.offset);
                  if (offset < range.from || offset >= range.to) continue;
                  const id = `${batch.partition}:${offset}`;
                  if (!found.has(id)) {
                    found.set(id, toLetter(batch.partition, message));
                    bar.increment();
                  }
                }
              },
            })
            .then(() => {
              for (const r of wanted.values()) {
                consumer.seek({ topic, partition: r.partition, offset: String(r.from) });
              }
            })
            .catch(reject);
        });
      } catch (error) {
        throw error instanceof CliError ? error : new CliError(`${description}: ${describeError(error)}`);
      } finally {
        bar.stop();
        await consumer.disconnect().catch(() => undefined);
        await admin.deleteGroups([groupId]).catch(() => undefined);
      }
      return [...found.values()].sort((a, b) =>
        a.kafka && b.kafka
          ? a.kafka.partition - b.kafka.partition || Number(a.kafka.offset) - Number(b.kafka.offset)
          : 0,
      );
    },
    async replay(letters, options) {
      if (!producer) {
        producer = kafka.producer({
          idempotent: true,
          maxInFlightRequests: 1,
          allowAutoTopicCreation: false,
        });
        try {
          await producer.connect();
        } catch (error) {
          throw new CliError(`cannot connect a Kafka producer: ${describeError(error)}`);
        }
      }
      const bar = progress(io, 'replaying', letters.length);
      const results: ReplayResult[] = [];
      const log = replayLog(io);
      const done = (result: ReplayResult) => {
        results.push(result);
        log(result);
      };
      try {
        for (const letter of letters) {
          const base = replayBase(letter);
          const to = options.to ?? letter.origin.destination;
          if (!to) {
            done({
              ...base,
              replayed: false,
              error: 'no x-eo-original-topic header: give --to <topic>',
            });
            continue;
          }
          let reset: ResetOutcome | undefined;
          if (options.reset) {
            reset = await options.reset(letter);
            const refused = refusedAfterReset(reset);
            if (refused !== undefined) {
              done({ ...base, to, reset, replayed: false, error: refused });
              continue;
            }
          }
          try {
            await producer.send({
              topic: to,
              acks: -1,
              messages: [
                {
                  key: rawOf.get(letter)?.key ?? null,
                  value: rawOf.get(letter)?.value ?? null,
                  headers: replayHeaders(letter),
                },
              ],
            });
            done({ ...base, to, ...(reset ? { reset } : {}), replayed: true });
          } catch (error) {
            done({
              ...base,
              to,
              ...(reset ? { reset } : {}),
              replayed: false,
              error: describeError(error),
            });
          }
          bar.increment();
        }
      } finally {
        bar.stop();
      }
      return results;
    },
    async close() {
      await producer?.disconnect().catch(() => undefined);
      await admin.disconnect().catch(() => undefined);
    },
  };
}

/** The raw record of each letter read, for its replay: key and value bytes, headers as they were. */
const rawOf = new WeakMap<
  DeadLetter,
  { readonly key: Buffer | null; readonly value: Buffer | null; readonly headers: IHeaders }
>();

function replayHeaders(letter: DeadLetter): IHeaders {
  const out: IHeaders = {};
  // A header without a value cannot be produced (the client refuses null): it goes out empty,
  // still present, as the consumer's own copies carry it.
  const one = (v: Buffer | string | null) => v ?? '';
  for (const [name, value] of Object.entries(rawOf.get(letter)?.headers ?? {})) {
    if (isReplayDropped(name) || value === undefined) continue;
    out[name] = Array.isArray(value) ? value.map(one) : one(value as Buffer | string | null);
  }
  return out;
}

/** A header as shown: a repeated header shows every value, never only the last. */
function headerText(value: IHeaders[string]): HeaderText | undefined {
  const one = (v: Buffer | string | null) =>
    v === null ? '' : Buffer.isBuffer(v) ? bytesText(v) : String(v);
  if (value === undefined || value === null) return undefined;
  return Array.isArray(value) ? value.map(one) : one(value as Buffer | string);
}

function toLetter(partition: number, message: KafkaMessage): DeadLetter {
  const headers: Record<string, HeaderText> = {};
  for (const [name, value] of Object.entries(message.headers ?? {})) {
    const text = value === null ? null : headerText(value);
    if (text !== undefined) headers[name] = text;
  }
  const { key, unusableKey } = letterKey(message.headers ?? {});
  const { requestId, unusableRequestId } = letterRequestId(message.headers ?? {});
  const destination = single(headers['x-eo-original-topic']) ?? single(headers[Headers.OriginalDestination]);
  const originalPartition = single(headers['x-eo-original-partition']);
  const originalOffset = single(headers['x-eo-original-offset']);
  const raw = { key: message.key, value: message.value, headers: message.headers ?? {} };
  const letter: DeadLetter = {
    id: `${partition}:${message.offset}`,
    ...(key === undefined ? {} : { key }),
    ...(unusableKey === undefined ? {} : { unusableKey }),
    ...(requestId === undefined ? {} : { requestId }),
    ...(unusableRequestId === undefined ? {} : { unusableRequestId }),
    reason: reasonOf(headers),
    origin: {
      ...(destination === undefined ? {} : { destination }),
      ...(originalPartition === undefined ? {} : { partition: originalPartition }),
      ...(originalOffset === undefined ? {} : { offset: originalOffset }),
    },
    headers,
    body: message.value ?? Buffer.alloc(0),
    ...(message.value === null ? { noValue: true as const } : {}),
    kafka: {
      key: message.key === null ? null : message.key.toString('utf8'),
      partition,
      offset: message.offset,
    },
  };
  rawOf.set(letter, raw);
  return letter;
}

/**
 * `p:o` (one record), `p:o1-o2` (inclusive) or `p:o1-` (to the end) into ranges; `--all` is every
 * record between the watermarks.
 */
export function parseKafkaIds(
  ids: readonly string[],
  marks: readonly { partition: number; low: number; high: number }[],
): OffsetRange[] {
  const ranges: OffsetRange[] = [];
  for (const id of ids) {
    const m = /^(\d+):(\d+)(?:(-)(\d+)?)?$/.exec(id.trim());
    if (!m)
      throw new UsageError(
        `"${id}" is not <partition>:<offset>, <partition>:<from>-<to> or <partition>:<from>-`,
      );
    const partition = Number(m[1]);
    if (m[4] !== undefined && Number(m[4]) < Number(m[2]))
      throw new UsageError(`"${id}": the range ends before it starts (<partition>:<from>-<to>, from <= to)`);
    const mark = marks.find((w) => w.partition === partition);
    if (!mark) throw new CliError(`partition ${partition} does not exist`);
    const from = Math.max(Number(m[2]), mark.low);
    const to = Math.min(
      m[3] ? (m[4] === undefined ? mark.high : Number(m[4]) + 1) : Number(m[2]) + 1,
      mark.high,
    );
    if (to <= from)
      throw new CliError(
        mark.high > mark.low
          ? `${id}: no record there (partition ${partition} holds offsets ${mark.low} to ${mark.high - 1})`
          : `${id}: no record there (partition ${partition} is empty)`,
      );
    ranges.push({ partition, from, to });
  }
  // One range per partition: the span of what was asked (the read filters nothing else out).
  const merged = new Map<number, OffsetRange>();
  for (const r of ranges) {
    const prev = merged.get(r.partition);
    merged.set(
      r.partition,
      prev ? { partition: r.partition, from: Math.min(prev.from, r.from), to: Math.max(prev.to, r.to) } : r,
    );
  }
  return [...merged.values()];
}

/** Whether a letter's offset was asked for by one of `ids`. */
export function kafkaIdMatcher(ids: readonly string[]): (letter: DeadLetter) => boolean {
  const wanted = ids.map((id) => {
    const m = /^(\d+):(\d+)(?:(-)(\d+)?)?$/.exec(id.trim()) as RegExpExecArray;
    const from = Number(m[2]);
    const to = m[3] ? (m[4] === undefined ? Number.POSITIVE_INFINITY : Number(m[4])) : from;
    return { partition: Number(m[1]), from, to };
  });
  return (letter) =>
    letter.kafka !== undefined &&
    wanted.some(
      (w) =>
        w.partition === letter.kafka?.partition &&
        Number(letter.kafka.offset) >= w.from &&
        Number(letter.kafka.offset) <= w.to,
    );
}
