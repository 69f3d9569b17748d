/**
 * What a COMPLETED record would cost as a field of a shared hash instead of a key of its own: a
 * layout weighed for the storage targets, not the one the store uses (see bytes-per-key.ts for
 * that). Writes N fields (a random 10-byte id each, the record's bytes as the value) spread over B
 * hashes, as a per-slot (13,152) or per-tag (65,536) layout would, each hash with an expiry, and
 * reports the used_memory delta per field and the encoding Redis chose.
 *
 *   npm run bench:hash-layout -w @exactly-once/store-redis -- N VALUE_BYTES [BUCKETS]
 *
 * VALUE_BYTES: 86 holds a COMPLETED record exactly (fence, attempt, completedAt, expiresAt, the
 * 32-byte fingerprint, the 24-byte trace reference, an 11-byte result); 60 is what fits Redis 7.0's
 * default `hash-max-listpack-value` (64) with room for an 11-byte result once the record drops
 * either the trace reference or all but 8 bytes of the fingerprint. Runs in DB 15 of EO_REDIS_URL
 * under a fresh prefix, deletes only its own keys; run it on an otherwise idle server.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { deletePrefix } from './own-keys.js';

const [n = 1_000_000, valueBytes = 60, buckets = 13_152] = process.argv.slice(2).map(Number);
const client = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379', { db: 15 });
const prefix = `h${randomBytes(2).toString('hex')}`;
const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await client.info('memory'))?.[1]);
const value = randomBytes(valueBytes);
const bucketOf = (b: number) => `${prefix}:{${b.toString(16).padStart(4, '0')}}c`;

try {
  const base = await usedMemory();
  for (let i = 0; i < n; i += 5000) {
    const pipeline = client.pipeline();
    for (let j = i; j < Math.min(n, i + 5000); j++) {
      const id = randomBytes(10);
      const bucket = bucketOf(id.readUInt16BE(0) % buckets);
      pipeline.hset(bucket, id, value);
      if (j < buckets) pipeline.pexpire(bucket, 86_400_000);
    }
    await pipeline.exec();
  }
  const perField = ((await usedMemory()) - base) / n;
  const encoding = await client.object('ENCODING', bucketOf(1));
  const limits = await client.config('GET', 'hash-max-listpack-*');
  console.log(
    `N=${n} value=${valueBytes} B buckets=${buckets}: ${perField.toFixed(1)} B per record, ` +
      `encoding ${encoding} (server ${JSON.stringify(limits)})`,
  );
} finally {
  await deletePrefix(client, prefix);
  client.disconnect();
}
