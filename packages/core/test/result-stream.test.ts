/**
 * Streamed handler results: stored in the blob store as they arrive, kept by pointer, answered by
 * pointer to duplicates; a failing stream is a handler failure, never a half-stored result.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import { resultStream } from '../src/blob/result-stream.js';
import { ErrorCode } from '../src/errors.js';
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
