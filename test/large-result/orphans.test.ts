/**
 * A blob whose run was SIGKILLed before `complete` (a real process, killed for real) is named by
 * no record: the stores' blob collection never finds it. collectOrphanBlobs deletes it once the
 * key completed without it, and keeps the result blob of the run that completed it.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type BlobPointer,
  collectOrphanBlobs,
  createFsBlobStore,
  createProcessor,
  Headers,
} from '@exactly-once/core';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { workerArgs } from '../support/bundle.js';
import { uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';

const client = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379');
const cleanup: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const step of cleanup.reverse()) await step();
  client.disconnect();
});

/** Runs the worker until it kills itself; answers the pointer it printed before dying. */
function dyingRun(env: Record<string, string>): Promise<{ pointer: BlobPointer; signal: string | null }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      workerArgs('test/large-result/orphan-worker.ts'),
      { env: { ...process.env, ...env } },
      (error, stdout) => {
        const line = stdout.trim().split('\n').at(-1);
        if (!line) return reject(error ?? new Error('the worker printed nothing'));
        resolve({
          pointer: JSON.parse(line) as BlobPointer,
          signal: (error as { signal?: string } | null)?.signal ?? null,
        });
      },
    );
  });
}

describe('orphan blobs of killed runs', () => {
  it('a blob stored by a run SIGKILLed before complete is deleted once the key completed; the result blob stays', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-orphans-'));
    cleanup.push(() => rm(directory, { recursive: true, force: true }));
    const prefix = uniqueName('orphans');
    cleanup.push(() => dropRedisPrefix(client, `${prefix}:`));
    const key = 'invoice-1';
    const blobs = createFsBlobStore({ directory });
    const store = createRedisStore({ client, keyPrefix: prefix });

    const dead = await dyingRun({ EO_BLOB_DIR: directory, EO_PREFIX: prefix, EO_KEY: key });
    expect(dead.signal).toBe('SIGKILL');
    expect((await blobs.get(dead.pointer)).byteLength).toBeGreaterThan(0); // stored, named by nothing

    let runs = 0;
    const p = createProcessor({
      consumer: 'orphans',
      store,
      blobs,
      leaseMs: 1_000,
      inlineResultBytes: 16,
      retentionCheck: 'off',
      handler: () => {
        runs++;
        return { invoice: 1, pdf: 'p'.repeat(64) }; // over inlineResultBytes: a result blob
      },
    });
    const message = {
      body: new TextEncoder().encode('{"invoice":1}'),
      headers: { [Headers.IdempotencyKey]: key },
      destination: 'invoices',
      system: 'test',
    };
    // Busy while the dead run's lease lasts, then taken over and completed.
    let done = await p.process(message);
    while (done.action === 'defer') {
      await new Promise((r) => setTimeout(r, 100));
      done = await p.process(message);
    }
    expect(done).toMatchObject({ action: 'ack', outcome: 'takeover' });
    expect(runs).toBe(1);

    const listed = async () => {
      const uris: string[] = [];
      for await (const blob of blobs.list()) uris.push(blob.uri);
      return uris;
    };
    expect(await listed()).toHaveLength(2);
    expect(await collectOrphanBlobs({ store, blobs, olderThanMs: 0 })).toEqual({
      examined: 2,
      deleted: 1,
      abandonedUploads: 0,
    });
    const left = await listed();
    expect(left).toHaveLength(1);
    expect(left).not.toContain(dead.pointer.uri);
    // The duplicate is still answered with the result blob, which reads back verified.
    const again = await p.process(message);
    expect(again).toMatchObject({ action: 'ack', outcome: 'duplicate', result: { kind: 'blob' } });
    const pointer = (again as { result: { pointer: BlobPointer } }).result.pointer;
    expect(left).toEqual([pointer.uri]);
    expect(JSON.parse(new TextDecoder().decode(await blobs.get(pointer)))).toEqual({
      invoice: 1,
      pdf: 'p'.repeat(64),
    });
  }, 60_000);
});
