/**
 * `exactly-once blobs orphans` against the real stores and an fs blob store: the blob of a run that
 * died before complete goes once its key completed without it (not with --dry-run); the result
 * blob, a young blob and one whose key the store does not hold stay.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFsBlobStore, recordKeyFor } from '@exactly-once/core';
import { createGridFsBlobStore, createMongoStore } from '@exactly-once/store-mongo';
import { MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { cli, cliJson, cliText } from './helpers.js';
import { testStores } from './stores.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function listed(blobs: ReturnType<typeof createFsBlobStore>): Promise<string[]> {
  const uris: string[] = [];
  for await (const blob of blobs.list()) uris.push(blob.uri);
  return uris.sort();
}

describe.each(testStores)('blobs orphans: %s', (_name, open) => {
  it('deletes the blob of a dead run once its key completed; keeps the rest; --dry-run deletes nothing', async () => {
    const t = await open();
    try {
      const directory = await mkdtemp(join(tmpdir(), 'eo-cli-orphans-'));
      dirs.push(directory);
      const blobs = createFsBlobStore({ directory });
      const { store } = t;
      const key = recordKeyFor({ namespace: 'default', consumer: uniqueName('billing'), key: 'invoice-1' });
      const bytes = (text: string) => new TextEncoder().encode(text);
      // A dead run's blob, then the takeover that completed the key with its own result blob.
      const dead = await store.begin({ key, fingerprint: 'fp', owner: 'dead', leaseMs: 1 });
      if (dead.status !== 'acquired') throw new Error(dead.status);
      const orphan = await blobs.put(bytes('left by the dead run'), { owner: key });
      await new Promise((r) => setTimeout(r, 50));
      const taken = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 60_000 });
      if (taken.status !== 'acquired') throw new Error(taken.status);
      const named = await blobs.put(bytes('the result'), { owner: key });
      const result = { kind: 'blob', pointer: named } as const;
      expect(
        await store.complete({ key, fence: taken.fence, result, outgoing: [], retentionMs: 600_000 }),
      ).toBe('ok');
      const elsewhere = await blobs.put(bytes('a key this store does not hold'), { owner: `${key}-other` });
      const all = await listed(blobs);

      const args = ['blobs', 'orphans', ...t.flags, '--blob-dir', directory, '--older-than', '0ms'];
      expect(await cliJson([...args, '--dry-run'])).toEqual({ examined: 3, deleted: 1, dryRun: true });
      expect(await listed(blobs)).toEqual(all);
      // Too young for the default hour: not looked at.
      expect(await cliJson(['blobs', 'orphans', ...t.flags, '--blob-dir', directory])).toMatchObject({
        examined: 0,
        deleted: 0,
      });
      // With records gone counting as final, the blob of the key this store does not hold goes too,
      // and the line says why (before, it said the records were final and did not name them).
      const gone = await cliText([...args, '--when-record-gone', 'delete', '--dry-run']);
      expect(gone).toContain('2 would be deleted (dry run)');
      expect(gone).toContain('or is gone');
      // The age in the unit it was given (it read "stored over 0 min ago" for anything under 30 s).
      expect(gone).toContain('stored over 0 ms ago');
      expect(await cliJson(args)).toEqual({ examined: 3, deleted: 1, abandonedUploads: 0, dryRun: false });
      expect(await listed(blobs)).toEqual([named.uri, elsewhere.uri].sort());
      expect(all).toContain(orphan.uri);
    } finally {
      await t.close();
    }
  });
});

describe('blobs orphans: GridFS', () => {
  it('works on the GridFS bucket of the --mongo store', async () => {
    const client = new MongoClient(env.mongoUrl, { serverSelectionTimeoutMS: 5000 });
    await client.connect();
    const db = client.db(uniqueName('eo_cli_gridfs').slice(0, 40));
    const store = createMongoStore({ db });
    try {
      const blobs = createGridFsBlobStore({ db, bucketName: 'receipts' });
      const key = recordKeyFor({ namespace: 'default', consumer: 'billing', key: 'invoice-2' });
      const begun = await store.begin({ key, fingerprint: 'fp', owner: 'w', leaseMs: 60_000 });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      const orphan = await blobs.put(new TextEncoder().encode('of an attempt that did not complete'), {
        owner: key,
      });
      expect(await store.complete({ key, fence: begun.fence, outgoing: [], retentionMs: 600_000 })).toBe(
        'ok',
      );
      const args = ['--mongo', env.mongoUrl, '--mongo-db', db.databaseName, '--gridfs-bucket', 'receipts'];
      expect(await cliJson(['blobs', 'orphans', ...args, '--older-than', '0ms'])).toEqual({
        examined: 1,
        deleted: 1,
        abandonedUploads: 0,
        dryRun: false,
      });
      await expect(blobs.get(orphan)).rejects.toThrow();
    } finally {
      await store.close();
      await db.dropDatabase();
      await client.close();
    }
  });
});

describe('blobs orphans: usage', () => {
  it('needs exactly one blob store, and GridFS only with --mongo', async () => {
    for (const args of [
      ['blobs', 'orphans', '--redis', 'redis://127.0.0.1:6379'],
      [
        'blobs',
        'orphans',
        '--redis',
        'redis://127.0.0.1:6379',
        '--blob-dir',
        '/tmp/x',
        '--gridfs-bucket',
        'b',
      ],
      ['blobs', 'orphans', '--redis', 'redis://127.0.0.1:6379', '--gridfs-bucket', 'b'],
    ]) {
      const r = await cli(args);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/--blob-dir|--gridfs-bucket/);
    }
  });
});
