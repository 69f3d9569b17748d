/**
 * Streamed handler results: stored in the blob store as they arrive, kept by pointer, answered by
 * pointer to duplicates; a failing stream is a handler failure, never a half-stored result.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import { type ResultStream, resultStream } from '../src/blob/result-stream.js';
import { BlobIntegrityError, ErrorCode, PermanentError } from '../src/errors.js';
import { createIdempotentExecutor } from '../src/executor.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery } from './helpers.js';

const directories: string[] = [];
afterAll(async () => {
  await Promise.all(directories.map((d) => rm(d, { recursive: true, force: true })));
});
async function blobStore() {
  const directory = await mkdtemp(join(tmpdir(), 'eo-result-stream-'));
  directories.push(directory);
  return { directory, blobs: createFsBlobStore({ directory }) };
}
async function blobFiles(directory: string): Promise<number> {
  let count = 0;
  for (const entry of await readdir(directory)) {
    if (/^[0-9a-f]{2}$/.test(entry)) count += (await readdir(join(directory, entry))).length;
  }
  return count;
}
const key = (k: string) => ({ [Headers.IdempotencyKey]: k });
const fast = { leaseMs: 300, retentionCheck: 'off' as const, retry: { maxAttempts: 2, initialDelayMs: 10 } };
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

describe('streamed handler results', () => {
  it('resultStream(source) is stored as raw bytes by pointer; a duplicate is answered with the pointer', async () => {
    // Prepare
    const { blobs } = await blobStore();
    const parts = [Buffer.from('hello, '), Buffer.from('large '), Buffer.from('world')];
    let runs = 0;
    const q = createProcessor({
      consumer: 'reports2',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: () => {
        runs++;
        return resultStream(Readable.from(parts));
      },
    });
    // Act
    const first = await q.process(delivery({ r: 1 }, key('r1')));
    const again = await q.process(delivery({ r: 1 }, key('r1')));
    // Assess
    if (first.action !== 'ack' || first.result?.kind !== 'blob') throw new Error('expected a blob result');
    const whole = Buffer.concat(parts);
    // Small, yet a blob: a stream is never inlined, and its bytes are not JSON-encoded.
    expect(first.result.pointer).toMatchObject({ size: whole.byteLength, sha256: sha256(whole) });
    expect(Buffer.from(await blobs.get(first.result.pointer)).toString()).toBe('hello, large world');
    expect(again).toEqual({ action: 'ack', outcome: 'duplicate', result: first.result });
    expect(runs).toBe(1);
  });

  it('a handler returning a Readable or an async generator (no marker) is stored the same way', async () => {
    const { blobs } = await blobStore();
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: () => Readable.from([Buffer.alloc(70_000, 1), Buffer.alloc(30_000, 2)]),
    });
    const d = await p.process(delivery({}, key('plain')));
    expect(d).toMatchObject({ action: 'ack', result: { kind: 'blob', pointer: { size: 100_000 } } });
    const g = createProcessor({
      consumer: 'reports-gen',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: () =>
        (async function* () {
          yield new Uint8Array([1, 2, 3]);
        })(),
    });
    expect(await g.process(delivery({}, key('gen')))).toMatchObject({ result: { pointer: { size: 3 } } });
  });

  it('a stream that fails mid-way is a handler failure: retried, then dead-lettered; no blob is left', async () => {
    const { directory, blobs } = await blobStore();
    let runs = 0;
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: () => {
        runs++;
        return resultStream(
          (async function* () {
            yield new Uint8Array(50_000);
            throw new Error('renderer crashed');
          })(),
        );
      },
    });
    const first = await p.process(delivery({}, key('broken')));
    expect(first).toMatchObject({ action: 'retry', error: { message: 'renderer crashed' } });
    const second = await p.process(delivery({}, key('broken')));
    expect(second).toMatchObject({
      action: 'dead-letter',
      reason: { error: { code: ErrorCode.AttemptsExhausted } },
    });
    expect(runs).toBe(2);
    expect(await blobFiles(directory)).toBe(0);
  });

  it('a stream of strings (a Readable with setEncoding) fails permanently with a TypeError', async () => {
    const { blobs } = await blobStore();
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: () => {
        const r = Readable.from([Buffer.from('abc')], { objectMode: false });
        r.setEncoding('utf8');
        return resultStream(r);
      },
    });
    const d = await p.process(delivery({}, key('text')));
    // A TypeError is an unknown error (retryable) for the pipeline; it fails on every attempt.
    expect(d).toMatchObject({ action: 'retry', error: { name: 'TypeError' } });
  });

  it('a source that stalls is given up at maxRunMs: the run fails (retried), the source is closed, no blob is left', async () => {
    // Before: process() awaited the upload for ever (the lease ran out, the delivery stayed held).
    const { directory, blobs } = await blobStore();
    let sent = false;
    const source = new Readable({
      read() {
        if (!sent) this.push(Buffer.from('first chunk'));
        sent = true; // then nothing more, ever: a download whose remote end stopped sending
      },
    });
    const p = createProcessor({
      consumer: 'exports',
      store: createMemoryStore(),
      blobs,
      ...fast,
      maxRunMs: 200,
      handler: () => resultStream(source),
    });
    const d = await p.process(delivery({}, key('stalled')));
    expect(d).toMatchObject({ action: 'retry', error: { name: 'RunTimeoutError' } });
    expect(source.destroyed).toBe(true);
    expect(await blobFiles(directory)).toBe(0);
  });

  it('a blob store whose delete hangs does not hold a failed run: its orphan is waited for storeTimeoutMs at most', async () => {
    // Before: the run's disposition waited for the delete for ever.
    const { blobs } = await blobStore();
    const hanging = Object.assign(Object.create(blobs), { delete: () => new Promise<void>(() => {}) });
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs: hanging,
      ...fast,
      storeTimeoutMs: 100,
      handler: async (_: unknown, ctx) => {
        await ctx.storeBlob(Readable.from([Buffer.from('orphan')]));
        throw new PermanentError('declined after storing a blob');
      },
    });
    expect(await p.process(delivery({}, key('hanging-delete')))).toMatchObject({ action: 'dead-letter' });
  }, 10_000);

  it('without a blob store a streamed result is dead-lettered with a ConfigError, its source closed', async () => {
    const source = Readable.from([Buffer.from('x')]);
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      ...fast,
      handler: () => resultStream(source),
    });
    const d = await p.process(delivery({}, key('no-blobs')));
    expect(d).toMatchObject({ action: 'dead-letter', reason: { error: { code: ErrorCode.Config } } });
    expect(source.destroyed).toBe(true);
  });

  it('ctx.storeBlob takes a Node Readable and returns a pointer for a JSON result', async () => {
    const { blobs } = await blobStore();
    const p = createProcessor({
      consumer: 'reports',
      store: createMemoryStore(),
      blobs,
      ...fast,
      handler: async (_: unknown, ctx) => ({
        report: await ctx.storeBlob(Readable.from([Buffer.alloc(1000, 7), Buffer.alloc(24, 8)])),
      }),
    });
    const d = await p.process(delivery({}, key('store-blob')));
    if (d.action !== 'ack' || d.result?.kind !== 'inline') throw new Error('expected an inline result');
    const { report } = JSON.parse(Buffer.from(d.result.data).toString());
    expect(report).toMatchObject({ size: 1024 });
    expect((await blobs.get(report)).byteLength).toBe(1024);
  });

  it('resultStream refuses what is not a stream', () => {
    expect(() => resultStream(new Uint8Array(1) as never)).toThrow(TypeError);
  });
});

describe('the idempotent executor with a streamed result', () => {
  /** 4 MiB in 64 KiB chunks, generated: the handler never holds it whole. */
  async function* generated(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < 64; i++) yield Buffer.alloc(64 * 1024, i);
  }
  const expected = Buffer.concat(Array.from({ length: 64 }, (_, i) => Buffer.alloc(64 * 1024, i)));
  const readAll = async (stream: AsyncIterable<Uint8Array>) => {
    const chunks: Uint8Array[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    return Buffer.concat(chunks);
  };

  it('returns a Readable of the stored bytes with its pointer, on the first call and on a replay', async () => {
    // Prepare
    const { blobs } = await blobStore();
    const ex = createIdempotentExecutor<{ video: string }, ResultStream>({
      consumer: 'encoder-api',
      store: createMemoryStore(),
      blobs,
      retentionCheck: 'off',
    });
    let runs = 0;
    const encode = () => {
      runs++;
      return resultStream(generated());
    };
    // Act
    const first = await ex.execute({ key: 'v1', payload: { video: 'a' } }, encode);
    const firstBytes = await readAll(first.result as Readable);
    const replay = await ex.execute({ key: 'v1', payload: { video: 'a' } }, encode);
    const replayBytes = await readAll(replay.result as Readable);
    // Assess
    expect(first.status).toBe('completed');
    expect(replay.status).toBe('duplicate');
    expect(first.result).toBeInstanceOf(Readable);
    expect(first.pointer).toEqual({
      uri: expect.any(String),
      size: expected.byteLength,
      sha256: sha256(expected),
    });
    expect(replay.pointer).toEqual(first.pointer);
    expect(sha256(firstBytes)).toBe(sha256(expected));
    expect(sha256(replayBytes)).toBe(sha256(expected));
    expect(runs).toBe(1);
  });

  it('a JSON result over inlineResultBytes still comes back decoded, with its pointer', async () => {
    const { blobs } = await blobStore();
    const ex = createIdempotentExecutor<unknown, { rows: string[] }>({
      consumer: 'report-api',
      store: createMemoryStore(),
      blobs,
      inlineResultBytes: 16,
      retentionCheck: 'off',
    });
    const report = { rows: ['a'.repeat(100), 'b'.repeat(100)] };
    await ex.execute({ key: 'r1', payload: {} }, () => report);
    const replay = await ex.execute({ key: 'r1', payload: {} }, () => ({ rows: [] }));
    expect(replay).toMatchObject({
      status: 'duplicate',
      result: report,
      pointer: { size: JSON.stringify(report).length },
    });
  });

  it('a replay of a truncated blob fails with BlobIntegrityError at the end of the stream', async () => {
    // Prepare
    const { blobs, directory } = await blobStore();
    const ex = createIdempotentExecutor<unknown, ResultStream>({
      consumer: 'encoder-api',
      store: createMemoryStore(),
      blobs,
      retentionCheck: 'off',
    });
    const first = await ex.execute({ key: 'v2', payload: {} }, () => resultStream(generated()));
    await readAll(first.result as Readable);
    const [file] = await blobPaths(directory);
    await truncate(file as string, 1024);
    // Act
    const replay = await ex.execute({ key: 'v2', payload: {} }, () => resultStream(generated()));
    // Assess
    await expect(readAll(replay.result as Readable)).rejects.toBeInstanceOf(BlobIntegrityError);
  });
});

async function blobPaths(directory: string): Promise<string[]> {
  const paths: string[] = [];
  for (const entry of await readdir(directory)) {
    if (!/^[0-9a-f]{2}$/.test(entry)) continue;
    for (const file of await readdir(join(directory, entry))) paths.push(join(directory, entry, file));
  }
  return paths;
}
