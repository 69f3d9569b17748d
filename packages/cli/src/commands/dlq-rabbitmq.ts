/**
 * Dead letters in a RabbitMQ queue (the consumer's `deadLetter.queue`, `<queue>.dlq` by default),
 * read with `basic.get` on a channel of our own: a listing holds the messages unacked and closing
 * the channel hands them all back (the broker requeues them; they come back marked redelivered,
 * and a quorum queue puts them back in another order).
 *
 * A replay publishes a copy on a confirm channel (persistent, `mandatory`) to the exchange and
 * routing key the message was first delivered with, and acks the dead letter only after the
 * broker confirmed the copy and no `basic.return` said that no queue took it. A crash in between
 * leaves the letter in the queue and the copy delivered: two copies, never none; the store
 * answers the second one as a duplicate.
 */
import { createHash } from 'node:crypto';
import { Headers } from '@exactly-once/core';
import { copyOptions, giveBackConfirmSlot } from '@exactly-once/rabbitmq/spi';
import type { Channel, ConfirmChannel, GetMessage, Options } from 'amqplib';
import { CliError, describeError, UsageError } from '../errors.js';
import { type Io, progress } from '../output.js';
import { importPeer, redacted } from '../stores.js';
import { parseUrl } from '../parse.js';
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
  replayTarget,
  single,
} from './dlq-common.js';

type AmqpModule = typeof import('amqplib');
type Connection = Awaited<ReturnType<AmqpModule['connect']>>;

export interface RabbitSource {
  readonly description: string;
  /** The queue's message count when the read began. */
  count(): Promise<number>;
  /** Reads up to `limit` letters from the head and hands them all back. */
  list(limit: number): Promise<DeadLetter[]>;
  /** Replays the letters `select` picks among the first `limit`, in queue order. */
  replay(
    limit: number,
    select: (letter: DeadLetter) => boolean,
    options: {
      readonly to?: string;
      readonly reset?: (letter: DeadLetter) => Promise<ResetOutcome>;
    },
  ): Promise<ReplayResult[]>;
  close(): Promise<void>;
}

export async function openRabbit(io: Io, urlText: string, queue: string): Promise<RabbitSource> {
  const url = parseUrl('--amqp', urlText, ['amqp:', 'amqps:']);
  const amqp = await importPeer<AmqpModule>('amqplib');
  let connection: Connection;
  try {
    connection = await amqp.connect(urlText, { timeout: 5_000 });
  } catch (error) {
    throw new CliError(`cannot connect to RabbitMQ at ${redacted(url)}: ${describeError(error)}`);
  }
  connection.on('error', () => {});
  const description = `RabbitMQ queue ${queue}`;

  const onThrowaway = async <T>(fn: (ch: Channel) => Promise<T>): Promise<T> => {
    const ch = await connection.createChannel();
    ch.on('error', () => {});
    try {
      return await fn(ch);
    } finally {
      await ch.close().catch(() => undefined);
    }
  };
  const count = async () => {
    try {
      return (await onThrowaway((ch) => ch.checkQueue(queue))).messageCount;
    } catch (error) {
      throw new CliError(
        `${description}: ${/NOT_FOUND|404/.test(String(error)) ? 'no such queue' : describeError(error)}`,
      );
    }
  };
  const exchanges = new Map<string, boolean>();
  const exchangeExists = async (name: string) => {
    if (name === '') return true;
    let known = exchanges.get(name);
    if (known === undefined) {
      known = await onThrowaway((ch) => ch.checkExchange(name)).then(
        () => true,
        () => false,
      );
      exchanges.set(name, known);
    }
    return known;
  };

  /** Gets up to `limit` messages on `ch` (unacked), with a progress bar. */
  const getAll = async (ch: Channel, limit: number, label: string) => {
    const total = Math.min(limit, await count());
    const bar = progress(io, label, total);
    const got: { message: GetMessage; letter: DeadLetter }[] = [];
    try {
      while (got.length < total) {
        const message = await ch.get(queue, { noAck: false });
        if (message === false) break;
        got.push({ message, letter: toLetter(message) });
        bar.increment();
      }
    } finally {
      bar.stop();
    }
    return got;
  };

  return {
    description,
    count,
    async list(limit) {
      await count();
      return onThrowaway(async (ch) => (await getAll(ch, limit, 'reading')).map((g) => g.letter));
    },
    async replay(limit, select, options) {
      await count();
      const ch: ConfirmChannel = await connection.createConfirmChannel();
      let returned = false;
      let closed: unknown;
      ch.on('return', () => {
        returned = true;
      });
      ch.on('error', (error) => {
        closed = error;
      });
      try {
        const chosen = (await getAll(ch, limit, 'reading')).filter((g) => select(g.letter));
        const bar = progress(io, 'replaying', chosen.length);
        const results: ReplayResult[] = [];
        const log = replayLog(io);
        const done = (result: ReplayResult) => {
          results.push(result);
          log(result);
        };
        try {
          for (const { message, letter } of chosen) {
            if (closed !== undefined) {
              done({ ...replayBase(letter), replayed: false, error: 'channel closed' });
              continue;
            }
            done(await replayOne(ch, message, letter));
            bar.increment();
          }
        } finally {
          bar.stop();
        }
        return results;
      } finally {
        // Letters not replayed (not chosen, or failed) go back to the queue as the channel closes.
        await ch.close().catch(() => undefined);
      }

      async function replayOne(
        ch: ConfirmChannel,
        message: GetMessage,
        letter: DeadLetter,
      ): Promise<ReplayResult> {
        const target =
          options.to !== undefined
            ? { exchange: '', routingKey: options.to }
            : letter.origin.exchange !== undefined && letter.origin.routingKey !== undefined
              ? { exchange: letter.origin.exchange, routingKey: letter.origin.routingKey }
              : letter.origin.destination !== undefined
                ? { exchange: '', routingKey: letter.origin.destination }
                : undefined;
        const base = replayBase(letter);
        if (!target) return { ...base, replayed: false, error: 'no origin header: give --to <queue>' };
        const to = options.to ?? replayTarget(letter) ?? target.routingKey;
        if (!(await exchangeExists(target.exchange))) {
          return { ...base, to, replayed: false, error: `exchange ${target.exchange} does not exist` };
        }
        let reset: ResetOutcome | undefined;
        if (options.reset) {
          reset = await options.reset(letter);
          const refused = refusedAfterReset(reset);
          if (refused !== undefined) return { ...base, to, reset, replayed: false, error: refused };
        }
        returned = false;
        try {
          await new Promise<void>((resolve, reject) => {
            const confirmed = (err: unknown) =>
              err ? reject(new Error('the broker refused the copy (nack)')) : resolve();
            try {
              ch.publish(
                target.exchange,
                target.routingKey,
                message.content,
                replayOptions(message),
                confirmed,
              );
            } catch (error) {
              // amqplib could not encode the copy; nothing was sent. Unless its place in the
              // confirm order is given back, every later copy would wait for ever for its confirm.
              if (!giveBackConfirmSlot(ch, confirmed)) closed = error;
              reject(error);
            }
          });
        } catch (error) {
          return { ...base, to, ...(reset ? { reset } : {}), replayed: false, error: describeError(error) };
        }
        if (returned) {
          return {
            ...base,
            to,
            ...(reset ? { reset } : {}),
            replayed: false,
            error: 'no queue took the copy',
          };
        }
        ch.ack(message);
        return { ...base, to, ...(reset ? { reset } : {}), replayed: true };
      }
    },
    async close() {
      await connection.close().catch(() => undefined);
    },
  };
}

/** A header value's text, for display and for reading the reason headers; an array's, per value. */
function headerText(value: unknown): HeaderText | undefined {
  return Array.isArray(value) ? value.map((v) => valueText(v) ?? '') : valueText(value);
}

function valueText(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint')
    return String(value);
  if (Buffer.isBuffer(value)) return bytesText(value);
  if (value instanceof Date) return value.toISOString();
  try {
    return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
  } catch {
    return String(value);
  }
}

/** Headers the broker changes each time a letter is handed back, left out of a letter's digest. */
const REDELIVERY_HEADERS = new Set(['x-delivery-count', 'x-death']);

/**
 * The id of a letter without a message id: `#` and 12 hex digits of a digest of its body and
 * headers. Not its position: a quorum queue hands listed letters back in another order, so a
 * position would name another letter in the next command.
 */
function digestId(message: GetMessage, headers: Readonly<Record<string, HeaderText>>): string {
  const hash = createHash('sha256');
  for (const name of Object.keys(headers).sort()) {
    const value = headers[name];
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    if (!REDELIVERY_HEADERS.has(name.toLowerCase())) hash.update(`${name}\0${text}\0`);
  }
  return `#${hash.update(message.content).digest('hex').slice(0, 12)}`;
}

function toLetter(message: GetMessage): DeadLetter {
  const raw = (message.properties.headers ?? {}) as Record<string, unknown>;
  const headers: Record<string, HeaderText> = {};
  for (const [name, value] of Object.entries(raw)) {
    const text = headerText(value);
    if (text !== undefined) headers[name] = text;
  }
  const messageId = message.properties.messageId as unknown;
  const { key, unusableKey } = letterKey(raw);
  const { requestId, unusableRequestId } = letterRequestId(raw);
  const exchange = single(headers['x-eo-original-exchange']);
  const routingKey = single(headers['x-eo-original-routing-key']);
  const destination = single(headers[Headers.OriginalDestination]);
  return {
    id:
      messageId === undefined || messageId === null || messageId === ''
        ? digestId(message, headers)
        : String(messageId),
    ...(key === undefined ? {} : { key }),
    ...(unusableKey === undefined ? {} : { unusableKey }),
    ...(requestId === undefined ? {} : { requestId }),
    ...(unusableRequestId === undefined ? {} : { unusableRequestId }),
    reason: reasonOf(headers),
    origin: {
      ...(destination === undefined ? {} : { destination }),
      ...(exchange === undefined ? {} : { exchange }),
      ...(routingKey === undefined ? {} : { routingKey }),
    },
    headers,
    properties: propertiesOf(message),
    body: message.content,
  };
}

/** The letter's AMQP properties but its headers, as text, as set (a timestamp's unit is the publisher's). */
function propertiesOf(message: GetMessage): Record<string, string> {
  const properties: Record<string, string> = {};
  for (const [name, value] of Object.entries(message.properties as unknown as Record<string, unknown>)) {
    if (name !== 'headers' && value !== undefined && value !== null) properties[name] = String(value);
  }
  return properties;
}

/**
 * The replayed copy: made as the consumer makes its copies (the original's identity, properties
 * and headers), without the dead-letter reason, and `mandatory` so that an unroutable one is seen.
 */
function replayOptions(message: GetMessage): Options.Publish {
  const headers: Record<string, unknown> = {};
  for (const [name, value] of Object.entries((message.properties.headers ?? {}) as Record<string, unknown>)) {
    if (!isReplayDropped(name)) headers[name] = value;
  }
  return { ...copyOptions(message.properties, headers), mandatory: true };
}

/** `--limit` for a replay without ids must be explicit about taking everything. */
export function rabbitSelection(ids: readonly string[], all: boolean): (letter: DeadLetter) => boolean {
  if (ids.length > 0 && all) throw new UsageError('give ids or --all, not both');
  if (ids.length === 0 && !all) throw new UsageError('give the ids to replay (see dlq list), or --all');
  const wanted = new Set(ids);
  return all ? () => true : (letter) => wanted.has(letter.id);
}
