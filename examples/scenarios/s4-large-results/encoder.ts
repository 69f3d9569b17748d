/**
 * S4, 1 GB results: a video-encoding consumer (RabbitMQ) whose result is a stream. The pipeline
 * writes it chunk by chunk into a blob store and the record keeps only its pointer
 * `{ uri, size, sha256 }`; a duplicate job is answered with that pointer without encoding again.
 */
import { createHash } from 'node:crypto';
import { type BlobStore, type ProcessedStore, resultStream } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';

/** EncodeVideo: what the upload service publishes. */
export interface EncodeJob {
  readonly videoId: string;
  /** Size of the encoded output (a real encoder does not know it up front; the fake one does). */
  readonly outputBytes: number;
}

const CHUNK = 1024 * 1024;

/**
 * A stand-in for an encoder's output (ffmpeg's stdout, say): `bytes` bytes, 1 MiB at a time, each
 * chunk a fresh buffer, as a real producer makes them. `onChunk` sees every chunk (to hash it).
 */
export async function* fakeEncodedVideo(
  job: EncodeJob,
  onChunk: (chunk: Uint8Array) => void = () => {},
): AsyncGenerator<Uint8Array> {
  const pattern = createHash('sha256').update(job.videoId).digest();
  for (let offset = 0, i = 0; offset < job.outputBytes; offset += CHUNK, i++) {
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, job.outputBytes - offset)).fill(pattern[i % 32] ?? 0);
    if (chunk.length >= 4) chunk.writeUInt32BE(i, 0);
    onChunk(chunk);
    yield chunk;
  }
}

export interface EncoderOptions {
  readonly amqpUrl: string;
  readonly queue: string;
  readonly store: ProcessedStore;
  readonly blobs: BlobStore;
  /** Called when the handler starts: the ledger of encodes, kept outside the SDK. */
  readonly onEncode: (job: EncodeJob) => void;
  /** Sees every chunk the encoder produces (the scenario hashes them). */
  readonly onChunk?: (chunk: Uint8Array) => void;
}

/** The encoding worker: one job at a time, the result streamed into `blobs`. */
export function createEncoder(options: EncoderOptions): RabbitConsumer {
  return createConsumer<EncodeJob>({
    connection: options.amqpUrl,
    queue: options.queue,
    consumer: 'encoder',
    store: options.store,
    blobs: options.blobs, // the result goes here; the record keeps { uri, size, sha256 }
    prefetch: 1,
    // The lease is heartbeated while the result uploads; a long encode needs no longer lease.
    leaseMs: 30_000,
    retryDelaysMs: [1_000, 5_000],
    handler: async (job) => {
      options.onEncode(job);
      return resultStream(fakeEncodedVideo(job, options.onChunk));
    },
  });
}
