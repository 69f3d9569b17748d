/**
 * Redis server CPU per processed key, measured on a real server through the real batch scripts.
 *
 *   npx tsx --conditions=@exactly-once/source packages/store-redis/bench/cpu-per-key.ts [N] [--batch B] [--compact] [--markers M] [--floor]
 *
 * Begins and completes N new keys (default 100,000) in batches of B (default 32, about what a
 * consumer under load hands the store), one batch in flight, with an 11-byte inline result and no
 * outgoing messages, under a fresh prefix in DB 15 of EO_REDIS_URL (default
 * redis://127.0.0.1:6379): each batch is begun, then completed, as the pipeline does; then all
 * are begun again (duplicates). Per phase it prints the server's script CPU per key and per call
 * (INFO commandstats), this process's CPU per key (the client side: packing, ioredis, decoding)
 * and keys per second with one batch in flight. With --compact the store indexes completions.
 * With --markers M, every marker bucket first holds what M compacted keys would leave there (random
 * ids, written directly in the bucket layout), so each new key's begin looks through buckets of a
 * store of that size; then (with --compact) the N keys are compacted and begun once more.
 * With --floor, the same batches then run the commands a new key's begin and complete run (EXISTS
 * of two marker keys, SET NX GET PXAT of a value the size of its IN_PROGRESS record; GET, SET PXAT
 * of one the size of its COMPLETED record) in a script that does nothing else, and an empty
 * script is called once per batch: what the store's scripts cost beyond their commands, per key
 * and per call. Deletes only its own keys. Run it on an otherwise idle server: commandstats are
 * server-wide.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { createRedisStore, redisKeyFor } from '../src/index.js';
import { markerBucketKey, TAG_COUNT, tagsBySlot } from '../src/layout.js';
import { deletePrefix } from './own-keys.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    batch: { type: 'string', default: '32' },
    compact: { type: 'boolean', default: false },
    markers: { type: 'string', default: '0' },
    floor: { type: 'boolean', default: false },
  },
});
const n = Number(positionals[0] ?? 100_000);
const markers = Number(values.markers);
const batch = Number(values.batch);
const url = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
const client = new Redis(url, { db: 15, maxRetriesPerRequest: 1 });
const keyPrefix = `c${randomBytes(1).toString('hex')}`;
const store = createRedisStore({
  client,
  keyPrefix,
  ...(values.compact ? { compactAfterMs: 3_600_000 } : {}),
});
const result = { kind: 'inline' as const, data: new TextEncoder().encode('{"ok":true}') };
const fingerprint = randomBytes(32).toString('hex');

/** Server microseconds and calls spent in script commands so far. */
async function scriptUsec(): Promise<{ usec: number; calls: number }> {
  const info = await client.info('commandstats');
  let usec = 0;
  let calls = 0;
  for (const m of info.matchAll(
    /cmdstat_(?:evalsha|eval|evalsha_ro|eval_ro|fcall):calls=(\d+),usec=(\d+)/g,
  )) {
    calls += Number(m[1]);
    usec += Number(m[2]);
  }
  return { usec, calls };
}

/** Runs `work` over the N keys and prints server and client CPU per key. */
async function phase(name: string, work: () => Promise<void>): Promise<void> {
  const before = await scriptUsec();
  const cpu = process.cpuUsage();
  const started = performance.now();
  await work();
  const ms = performance.now() - started;
  const { user, system } = process.cpuUsage(cpu);
  const after = await scriptUsec();
  const usec = after.usec - before.usec;
  const cell = (value: number, width: number) => value.toFixed(1).padStart(width);
  console.log(
    `${name.padEnd(24)} ${cell(usec / n, 10)} ${cell(usec / (after.calls - before.calls), 11)} ` +
      `${cell((user + system) / n, 11)} ${cell((n / ms) * 1000, 8)}`,
  );
}

/** Fills each slot's bucket with its share of `count` markers (sorted 18-byte entries, 4-byte header). */
async function fillBuckets(count: number): Promise<void> {
  const expiresAt = Buffer.alloc(4);
  expiresAt.writeUInt32BE(Math.floor(Date.now() / 1000) + 86_400);
  let pipeline = client.pipeline();
  let queued = 0;
  for (const tags of tagsBySlot()) {
    const entries = Array.from({ length: Math.round((count * tags.length) / TAG_COUNT) }, () =>
      Buffer.concat([randomBytes(10), expiresAt, randomBytes(4)]),
    ).sort(Buffer.compare);
    pipeline.set(markerBucketKey(keyPrefix, tags[0] as number), Buffer.concat([Buffer.alloc(4), ...entries]));
    if (++queued % 500 === 0) {
      await pipeline.exec();
      pipeline = client.pipeline();
    }
  }
  await pipeline.exec();
}

try {
  await store.checkServer();
  if (markers > 0) {
    await fillBuckets(markers);
    console.log(
      `marker buckets hold ${markers} markers (~${Math.round(markers / tagsBySlot().length)} a bucket)`,
    );
  }
  const { beginMany, completeMany } = store;
  if (!beginMany || !completeMany) throw new Error('the store has no batch operations');
  console.log(`${'phase'.padEnd(24)}  srv us/key  srv us/call  node us/key   keys/s`);
  const keys = Array.from({ length: n }, () => `orders:billing:${randomUUID()}`);
  const begins = (from: number) =>
    keys.slice(from, from + batch).map((key) => ({ key, fingerprint, owner: 'bench', leaseMs: 60_000 }));
  console.log(`N=${n} keys, batches of ${batch}, prefix ${keyPrefix}, ${url}`);
  // Each batch begun, then completed, as the pipeline does (the key layout cache is warm for the
  // complete, as there).
  await phase('begin + complete (new)', async () => {
    for (let i = 0; i < n; i += batch) {
      const fences: number[] = [];
      for (const begun of await beginMany.call(store, begins(i))) {
        if (begun.status !== 'acquired') throw new Error(`begin: ${begun.status}`);
        fences.push(begun.fence);
      }
      const requests = keys.slice(i, i + batch).map((key, j) => ({
        key,
        fence: fences[j] as number,
        result,
        outgoing: [],
        retentionMs: 86_400_000,
      }));
      for (const done of await completeMany.call(store, requests)) if (done !== 'ok') throw new Error(done);
    }
  });
  if (values.floor) {
    // Every key of the first phase is COMPLETED now: the size a complete writes.
    const completedBytes = Number(await client.strlen(redisKeyFor(keyPrefix, keys[0] as string)));
    const floorBegin = `for i = 1, #KEYS do
      redis.call('EXISTS', KEYS[i] .. 'm', KEYS[i] .. 'l')
      redis.call('SET', KEYS[i], ARGV[1], 'NX', 'GET', 'PXAT', ARGV[2])
    end`;
    const floorComplete = `for i = 1, #KEYS do
      redis.call('GET', KEYS[i])
      redis.call('SET', KEYS[i], ARGV[1], 'PXAT', ARGV[2])
    end`;
    const until = String(Date.now() + 86_400_000);
    const floorKeys = keys.map((key) => `${keyPrefix}:floor:{${key}}:${randomBytes(8).toString('hex')}`);
    const value = (bytes: number) => randomBytes(bytes);
    const inProgress = value(completedBytes + 60); // an IN_PROGRESS record holds its owner and key too
    const completed = value(completedBytes);
    console.log(
      `floor values: ${inProgress.length} B (IN_PROGRESS), ${completed.length} B (COMPLETED, as stored above)`,
    );
    await phase('floor: commands alone', async () => {
      for (let i = 0; i < n; i += batch) {
        const part = floorKeys.slice(i, i + batch);
        await client.eval(floorBegin, part.length, ...part, inProgress, until);
        await client.eval(floorComplete, part.length, ...part, completed, until);
      }
    });
    await phase('floor: empty calls', async () => {
      for (let i = 0; i < n; i += batch) {
        await client.eval('return 1', 0);
        await client.eval('return 1', 0);
      }
    });
  }
  await phase('begin (duplicate)', async () => {
    for (let i = 0; i < n; i += batch) {
      for (const begun of await beginMany.call(store, begins(i))) {
        if (begun.status !== 'duplicate') throw new Error(`duplicate: ${begun.status}`);
      }
    }
  });
  if (markers > 0 && values.compact) {
    const compacting = createRedisStore({ client, keyPrefix, compactAfterMs: 0 });
    const stats = await compacting.compactCompleted({ concurrency: 64 });
    console.log(`compacted ${stats.compacted}`);
    await phase('begin (compacted dup.)', async () => {
      for (let i = 0; i < n; i += batch) {
        for (const begun of await beginMany.call(store, begins(i))) {
          if (begun.status !== 'duplicate') throw new Error(`compacted duplicate: ${begun.status}`);
        }
      }
    });
  }
} finally {
  await deletePrefix(client, keyPrefix);
  client.disconnect();
}
