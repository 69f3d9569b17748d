import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { env } from '../support/env.js';
import { dropStorePrefixes, trackedPrefix } from '../support/redis.js';

export const newRedis = () => new Redis(env.redisUrl, { maxRetriesPerRequest: 3 });

/** The Redis key prefix of the store of `queue`'s consumer, dropped by {@link closeRedis}. */
export function storePrefix(queue: string): string {
  return trackedPrefix(`t:${queue}`);
}

/** Drops the records of every store this file made with {@link storePrefix}, then quits. */
export async function closeRedis(redis: Redis): Promise<void> {
  await dropStorePrefixes(redis);
  await redis.quit();
}

/** A raw amqplib connection for the test's own publishing and inspection. */
export async function rawChannel() {
  const conn = await amqp.connect(env.amqpUrl);
  // Byte rewrites on the socket: how a test sends what amqplib cannot write, e.g. an AMQP string
  // whose bytes are not UTF-8 (each `from` is replaced by the `to` of the same length).
  const rewrites: [Buffer, Buffer][] = [];
  const stream = (conn as unknown as { connection: { stream: NodeJS.WritableStream } }).connection.stream;
  const write = stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean;
  stream.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (!Buffer.isBuffer(chunk) || rewrites.length === 0) return write(chunk, ...rest);
    let out: Buffer = chunk;
    for (const [from, to] of rewrites) {
      for (let at = out.indexOf(from); at >= 0; at = out.indexOf(from, at + 1)) {
        out = Buffer.from(out);
        to.copy(out, at);
      }
    }
    return write(out, ...rest);
  }) as typeof stream.write;
  const ch = await conn.createConfirmChannel();
  return {
    ch,
    /** From now on, every `from` this connection writes goes out as `to` (same length). */
    rewriteOnWire(from: string, to: Buffer) {
      if (Buffer.byteLength(from) !== to.length) throw new Error('a rewrite keeps the length');
      rewrites.push([Buffer.from(from), to]);
    },
    /** The queue's counts, or undefined when it does not exist (checked on a throwaway channel). */
    async check(queue: string) {
      const probe = await conn.createChannel();
      probe.on('error', () => {});
      try {
        return await probe.checkQueue(queue);
      } catch {
        return undefined;
      } finally {
        await probe.close().catch(() => {});
      }
    },
    /** AMQP header values may be any table value: arrays, numbers, nested tables. */
    async publish(queue: string, body: unknown, headers: Record<string, unknown> = {}, messageId?: string) {
      const content = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
      await new Promise<void>((resolve, reject) =>
        ch.sendToQueue(
          queue,
          content,
          { persistent: true, headers, ...(messageId ? { messageId } : {}) },
          (e) => (e ? reject(e) : resolve()),
        ),
      );
    },
    /** Reads every message currently in `queue` (acking them). */
    async drain(queue: string) {
      const out: amqp.GetMessage[] = [];
      for (;;) {
        const m = await ch.get(queue, { noAck: true });
        if (!m) return out;
        out.push(m);
      }
    },
    async count(queue: string) {
      return (await ch.checkQueue(queue)).messageCount;
    },
    async deleteQueues(queues: string[]) {
      for (const q of queues) await ch.deleteQueue(q).catch(() => {});
    },
    async close() {
      await ch.close().catch(() => {});
      await conn.close().catch(() => {});
    },
  };
}

/** Queues a consumer on `queue` declares, for clean-up. */
export function queuesOf(queue: string, delays: number[]) {
  return [queue, `${queue}.dlq`, `${queue}.out`, ...delays.map((d) => `${queue}.retry.${d}`)];
}
