/**
 * The filesystem blob store when the directory fsync after the rename fails (EIO): `put` rejects
 * and leaves no blob behind, since the caller never gets a pointer that could name it.
 */
import type * as fsp from 'node:fs/promises';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';

const faults = { failDirectorySync: false };

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof fsp>();
  return {
    ...real,
    // Opening a directory read-only is how the store fsyncs it.
    open: async (...args: Parameters<typeof real.open>) => {
      const handle = await real.open(...args);
      if (faults.failDirectorySync && args[1] === 'r' && (await handle.stat()).isDirectory()) {
        return Object.assign(Object.create(handle), {
          sync: async () => {
            throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
          },
          close: () => handle.close(),
        });
      }
      return handle;
    },
  };
});

const { createFsBlobStore } = await import('../src/blob/fs-blob-store.js');

const directories: string[] = [];
afterAll(async () => {
  await Promise.all(directories.map((d) => rm(d, { recursive: true, force: true })));
});

async function files(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(root, { withFileTypes: true })) {
    if (entry.isDirectory())
      out.push(...(await readdir(join(root, entry.name))).map((f) => `${entry.name}/${f}`));
    else out.push(entry.name);
  }
  return out;
}

describe('fs blob store: a failed directory fsync', () => {
  it('rejects the put and leaves no file behind', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'eo-fs-faults-'));
    directories.push(directory);
    const blobs = createFsBlobStore({ directory });
    faults.failDirectorySync = true;
    try {
      await expect(blobs.put(Buffer.from('a result'))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      faults.failDirectorySync = false;
    }
    expect(await files(directory)).toEqual([]);
    // And the store still works.
    const pointer = await blobs.put(Buffer.from('again'));
    expect(Buffer.from(await blobs.get(pointer)).toString()).toBe('again');
  });
});
