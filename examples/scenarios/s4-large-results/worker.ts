/**
 * The encoding worker process of S4, run alone so its RSS is the run's only (started by
 * `runInChild` in scenario.ts). It starts the encoder, publishes one EncodeVideo job and then the
 * same job again, reads the result back by pointer (sha256 verified), flips one byte of the blob
 * and reads it again (BlobIntegrityError), and prints one JSON line: a {@link WorkerReport}.
 *
 * Config: environment. EO_S4_BYTES (result size), EO_S4_BLOB_DIR (fs blob store directory),
 * EO_S4_RUN (a name for the queue and key prefix), EO_AMQP_URL, EO_REDIS_URL.
 * Run with `--expose-gc` for a settled baseline.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import {
  BlobIntegrityError,
  type BlobPointer,
  createFsBlobStore,
  recordKeyFor,
  stableKey,
} from '@exactly-once/core';
import { createPublisher, type RabbitConsumer } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { createEncoder, type EncodeJob } from './encoder.js';
import { startRssMeter } from './rss-meter.js';

export interface WorkerReport {
  readonly bytes: number;
  /** Handler runs, counted by the handler itself (outside the SDK). */
  readonly encodes: number;
  /** Deliveries of the job (the original and its duplicate) and how the consumer settled them. */
  readonly received: number;
  readonly acked: number;
  readonly duplicates: number;
  /** The pointer in the record, which answered the duplicate. */
  readonly pointer: BlobPointer;
  /** Whether the record holds the stream's raw bytes (not JSON). */
  readonly raw: boolean;
  readonly expectedSha256: string;
  readonly readSha256: string;
  readonly readBytes: number;
  /** What reading the blob gave after one byte of it was flipped. */
  readonly corrupted: { readonly error: string; readonly message: string };
  readonly rss: { readonly baseline: number; readonly peak: number; readonly growth: number };
}

const bytes = Number(process.env.EO_S4_BYTES);
const directory = process.env.EO_S4_BLOB_DIR as string;
const run = process.env.EO_S4_RUN as string;
const amqpUrl = process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const redisUrl = process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379';
const queue = `s4.${run}.encode`;

const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
const store = createRedisStore({ client: redis, keyPrefix: `s4-${run}` });
const blobs = createFsBlobStore({ directory });
const expected = createHash('sha256');
let encodes = 0;
let meter: ReturnType<typeof startRssMeter> | undefined;
const encoder: RabbitConsumer = createEncoder({
  amqpUrl,
  queue,
  store,
  blobs,
  onEncode: () => encodes++,
  onChunk: (chunk) => {
    expected.update(chunk);
    meter?.sample();
  },
});
const publisher = createPublisher({ connection: amqpUrl });

const until = async (what: string, ok: () => boolean) => {
  for (let waited = 0; !ok(); waited += 20) {
    if (waited > 1_800_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

try {
  await encoder.start();
  await publisher.ready?.();
  meter = startRssMeter(); // baseline: everything loaded and connected

  // The upload service publishes the job; its key is stable, so a re-sent job is a duplicate.
  const job: EncodeJob = { videoId: `video-${run}`, outputBytes: bytes };
  const key = stableKey('encode', { videoId: job.videoId });
  await publisher.send(queue, job, { idempotencyKey: key });
  await until('the first delivery to be acked', () => encoder.stats.acked >= 1);
  await publisher.send(queue, job, { idempotencyKey: key });
  await until('the duplicate to be acked', () => encoder.stats.acked >= 2);

  // A client looks the result up by its key and reads it by pointer: verified as it streams.
  const record = await store.get(recordKeyFor({ consumer: 'encoder', key }));
  if (record?.state !== 'COMPLETED' || record.result?.kind !== 'blob')
    throw new Error(`no blob result: ${JSON.stringify(record)}`);
  const { pointer } = record.result;
  const read = createHash('sha256');
  let readBytes = 0;
  for await (const chunk of blobs.stream(pointer)) {
    read.update(chunk);
    readBytes += chunk.byteLength;
    meter.sample();
  }
  const rss = meter.stop();

  // Bit rot, a bad disk, someone editing the file: one byte flipped in the middle of the blob.
  // The fs store keeps `fs:<id>` at <directory>/<first two hex of id>/<id>.
  const id = pointer.uri.slice('fs:'.length);
  const file = await open(join(directory, id.slice(0, 2), id), 'r+');
  const at = Math.floor(pointer.size / 2);
  const one = Buffer.alloc(1);
  await file.read(one, 0, 1, at);
  await file.write(Buffer.of((one[0] ?? 0) ^ 0xff), 0, 1, at);
  await file.close();
  let corrupted = { error: 'none', message: 'read back without an error' };
  try {
    for await (const _ of blobs.stream(pointer));
  } catch (error) {
    corrupted = {
      error: error instanceof BlobIntegrityError ? 'BlobIntegrityError' : String(error),
      message: error instanceof Error ? error.message : String(error),
    };
  }

  const report: WorkerReport = {
    bytes,
    encodes,
    received: encoder.stats.received,
    acked: encoder.stats.acked,
    duplicates: encoder.stats.byOutcome.duplicate ?? 0,
    pointer,
    raw: record.result.raw === true,
    expectedSha256: expected.digest('hex'),
    readSha256: read.digest('hex'),
    readBytes,
    corrupted,
    rss,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
} finally {
  await encoder.stop();
  await publisher.close();
  const conn = await amqp.connect(amqpUrl);
  const ch = await conn.createChannel();
  const { topology } = encoder;
  for (const q of [topology.queue, topology.deadLetterQueue, ...topology.retryQueues.map(([, n]) => n)])
    await ch.deleteQueue(q);
  await conn.close();
  await store.clear(
    recordKeyFor({ consumer: 'encoder', key: stableKey('encode', { videoId: `video-${run}` }) }),
  );
  await redis.quit();
}
