import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeBlobStoreConformance } from '@exactly-once/core/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { createFsBlobStore } from '../src/blob/fs-blob-store.js';
import type { BlobPointer } from '../src/blob/types.js';
import { BlobIntegrityError, ConfigError } from '../src/errors.js';

const directories: string[] = [];

async function freshDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'eo-blobs-'));
  directories.push(directory);
  return directory;
}

afterAll(async () => {
  await Promise.all(directories.map((d) => rm(d, { recursive: true, force: true })));
});

function fileOf(directory: string, pointer: BlobPointer): string {
  const id = pointer.uri.slice('fs:'.length);
  return join(directory, id.slice(0, 2), id);
}

async function* chunked(count: number, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < count; i++) yield new Uint8Array(size).fill(i % 256);
}

describeBlobStoreConformance('fs', async () => ({
  blobs: createFsBlobStore({ directory: await freshDirectory() }),
}));

describe('fs blob store', () => {
  it('round-trips bytes under fs:<32 hex>, in a two-character fan-out folder', async () => {
    const directory = await freshDirectory();
    const blobs = createFsBlobStore({ directory });
    const data = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
    const pointer = await blobs.put(data);
    expect(pointer.uri).toMatch(/^fs:[0-9a-f]{32}$/);
    expect(pointer).toMatchObject({ size: 1000, sha256: createHash('sha256').update(data).digest('hex') });
    expect(new Uint8Array(await readFile(fileOf(directory, pointer)))).toEqual(data);
    expect(Array.from(await blobs.get(pointer))).toEqual(Array.from(data));
  });

  it('streams a multi-MB source in and out', async () => {
    const directory = await freshDirectory();
    const blobs = createFsBlobStore({ directory });
    const expected = createHash('sha256');
    for await (const chunk of chunked(24, 256 * 1024)) expected.update(chunk);
    const pointer = await blobs.put(chunked(24, 256 * 1024));
    expect(pointer).toMatchObject({ size: 24 * 256 * 1024, sha256: expected.digest('hex') });
    const read = createHash('sha256');
    let chunks = 0;
    for await (const chunk of blobs.stream(pointer)) {
      read.update(chunk);
      chunks++;
    }
    expect(chunks).toBeGreaterThan(1);
    expect(read.digest('hex')).toBe(pointer.sha256);
  });

  it('detects a flipped byte, a truncated file and appended bytes', async () => {
    const directory = await freshDirectory();
    const blobs = createFsBlobStore({ directory });
    const make = async () => {
      const pointer = await blobs.put(new Uint8Array(4096).fill(7));
      return { pointer, path: fileOf(directory, pointer) };
    };
    const flipped = await make();
    const bytes = await readFile(flipped.path);
    bytes[100] = 8;
    await writeFile(flipped.path, bytes);
    const truncated = await make();
    await truncate(truncated.path, 4000);
    const appended = await make();
    await writeFile(appended.path, new Uint8Array(4097).fill(7));
    for (const { pointer } of [flipped, truncated, appended]) {
      await expect(blobs.get(pointer)).rejects.toBeInstanceOf(BlobIntegrityError);
    }
  });

  it('rejects pointers that are not fs:<32 lower-case hex> before touching the filesystem', async () => {
    const blobs = createFsBlobStore({ directory: await freshDirectory() });
    const hex = 'a'.repeat(32);
    const sha256 = '0'.repeat(64);
    for (const uri of [
      'fs:../../etc/passwd',
      'fs:/etc/passwd',
      `fs:${hex}/../x`,
      `fs:${hex}\n`,
      `fs:${'A'.repeat(32)}`,
      `fs:${hex.slice(1)}`,
      `gridfs:${hex}`,
      '',
    ]) {
      const pointer = { uri, size: 1, sha256 };
      expect(() => blobs.stream(pointer)).toThrow(BlobIntegrityError);
      await expect(blobs.get(pointer)).rejects.toBeInstanceOf(BlobIntegrityError);
      await expect(blobs.delete(pointer)).rejects.toBeInstanceOf(BlobIntegrityError);
    }
    expect(() => blobs.stream({ uri: `fs:${hex}`, size: -1, sha256 })).toThrow(BlobIntegrityError);
    expect(() => blobs.stream({ uri: `fs:${hex}`, size: 1, sha256: 'nope' })).toThrow(BlobIntegrityError);
  });

  it('reports a missing blob as BlobIntegrityError; deleting it is not an error', async () => {
    const blobs = createFsBlobStore({ directory: await freshDirectory() });
    const pointer = await blobs.put(new Uint8Array([1, 2, 3]));
    await blobs.delete(pointer);
    await expect(blobs.get(pointer)).rejects.toBeInstanceOf(BlobIntegrityError);
    await blobs.delete(pointer);
  });

  it('leaves no temporary file behind, whether a put succeeds or its source fails', async () => {
    const directory = await freshDirectory();
    const blobs = createFsBlobStore({ directory });
    await Promise.all(Array.from({ length: 8 }, (_, i) => blobs.put(new Uint8Array([i]))));
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(1024);
      throw new Error('source broke');
    }
    await expect(blobs.put(failing())).rejects.toThrow('source broke');
    async function* wrongType(): AsyncGenerator<Uint8Array> {
      yield 'text' as unknown as Uint8Array;
    }
    await expect(blobs.put(wrongType())).rejects.toBeInstanceOf(TypeError);
    const entries = await readdir(directory);
    expect(entries.filter((e) => !/^[0-9a-f]{2}$/.test(e))).toEqual([]);
    let files = 0;
    for (const folder of entries) files += (await readdir(join(directory, folder))).length;
    expect(files).toBe(8);
  });

  it('removes the temporary file of a put whose process was killed, once it is abandonedAfterMs old', async () => {
    // Prepare: a worker streams a result into the store and is SIGKILLed halfway.
    const directory = await freshDirectory();
    const worker = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--conditions=@exactly-once/source',
        '--input-type=module',
        '-e',
        KILLED_PUT,
        directory,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      worker.stdout.on('data', (data: Buffer) => data.includes('halfway') && resolve());
      worker.once('exit', (code) => reject(new Error(`worker exited (${code}) before writing`)));
    });
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));
    const temporaries = async () => (await readdir(directory)).filter((e) => e.startsWith('.tmp-'));
    expect(await temporaries()).toHaveLength(1);
    // Act: a fresh file stays; once untouched for abandonedAfterMs, the next process's put removes it.
    const blobs = createFsBlobStore({ directory, abandonedAfterMs: 60_000 });
    expect(await blobs.removeAbandoned()).toBe(0);
    const [left] = await temporaries();
    const anHourAgo = new Date(Date.now() - 3_600_000);
    await utimes(join(directory, left as string), anHourAgo, anHourAgo);
    const restarted = createFsBlobStore({ directory, abandonedAfterMs: 60_000 });
    await restarted.put(new Uint8Array([1]));
    // Assess: the sweep runs beside the put.
    await expect.poll(temporaries).toEqual([]);
    expect(await restarted.removeAbandoned()).toBe(0);
  });

  it('refuses an abandonedAfterMs that is not a positive number', () => {
    for (const abandonedAfterMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => createFsBlobStore({ directory: 'unused', abandonedAfterMs })).toThrow(ConfigError);
    }
  });

  it('creates its directory on first put', async () => {
    const directory = join(await freshDirectory(), 'nested', 'blobs');
    const blobs = createFsBlobStore({ directory });
    const pointer = await blobs.put(new Uint8Array(0));
    expect(pointer.size).toBe(0);
    expect((await blobs.get(pointer)).byteLength).toBe(0);
  });
});

/** A worker that streams a result into the store and reports once the first chunk is written. */
const KILLED_PUT = `
import { createFsBlobStore } from '@exactly-once/core';
async function* source() {
  yield new Uint8Array(64 * 1024);
  // Asked for the next chunk: the first one is written.
  process.stdout.write('halfway\\n');
  await new Promise(() => setInterval(() => {}, 1000));
}
await createFsBlobStore({ directory: process.argv[1] }).put(source());
`;
