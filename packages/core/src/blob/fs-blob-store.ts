/**
 * A {@link BlobStore} on a local (or mounted) filesystem directory, one file per blob.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobIntegrityError } from '../errors.js';
import { type OptionNames, refuseUnknownOptions } from '../option-names.js';
import { abandonedAfterMsOf, sweepFromPuts } from './abandoned.js';
import type { BlobPointer, BlobPutOptions, BlobSource, BlobStore, ListedBlob } from './types.js';

export interface FsBlobStoreOptions {
  /** Root directory of the store; created on first `put`. Every worker sharing blobs uses the same one. */
  readonly directory: string;
  /**
   * A temporary file untouched this long belongs to a put whose process died (SIGKILL, power
   * loss): puts remove such files, looking at most once per this period. Keep it above the
   * longest pause between two chunks of a streamed result (a put whose file was removed fails
   * and its run is retried). @defaultValue 3_600_000 (1 h)
   */
  readonly abandonedAfterMs?: number;
}

export interface FsBlobStore extends BlobStore {
  /** Removes the temporary files of dead puts now (see `abandonedAfterMs`); resolves to how many. */
  removeAbandoned(): Promise<number>;
  list(): AsyncIterable<ListedBlob>;
}

const URI_PATTERN = /^fs:([0-9a-f]{32})$/;
const ID_PATTERN = /^[0-9a-f]{32}$/;
const FOLDER_PATTERN = /^[0-9a-f]{2}$/;
/** Beside a blob `<id>`, the file holding its put's `owner`. */
const OWNER_SUFFIX = '.owner';
const SHA256_PATTERN = /^[0-9a-f]{64}$/;
const TEMP_PREFIX = '.tmp-';

/**
 * Creates a blob store that keeps each blob in `<directory>/<ab>/<id>`, where `<id>` is 128 random
 * bits in hex and `<ab>` its first two characters (so no directory grows past a few thousand
 * entries). Pointers are `fs:<id>`. A put given an `owner` writes it to `<ab>/<id>.owner` first,
 * so a blob that `list` finds always has its owner.
 *
 * `put` streams into a temporary file in `directory`, hashing and counting as it writes, fsyncs
 * it, renames it into place and fsyncs the directories: once `put` resolves, the blob survives a
 * power loss and no reader ever sees a partial file under its final name. Reads verify size and
 * sha256 against the pointer. Only pointers of the exact form `fs:<32 hex>` are accepted, so a
 * pointer read from a record can never name a path outside the store.
 */
export function createFsBlobStore(options: FsBlobStoreOptions): FsBlobStore {
  refuseUnknownOptions(options, {
    directory: true,
    abandonedAfterMs: true,
  } satisfies OptionNames<FsBlobStoreOptions>);
  const root = options.directory;
  const abandonedAfterMs = abandonedAfterMsOf(options.abandonedAfterMs);

  const removeAbandoned = async (): Promise<number> => {
    let names: string[];
    try {
      names = await readdir(root);
    } catch (error) {
      if (codeOf(error) === 'ENOENT') return 0;
      throw error;
    }
    const cutoff = Date.now() - abandonedAfterMs;
    let removed = 0;
    for (const name of names) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      const path = join(root, name);
      try {
        if ((await stat(path)).mtimeMs >= cutoff) continue;
        await unlink(path);
        removed++;
      } catch (error) {
        // Renamed or removed meanwhile by its own put, or by another process's sweep.
        if (codeOf(error) !== 'ENOENT') throw error;
      }
    }
    return removed;
  };
  const sweep = sweepFromPuts(abandonedAfterMs, removeAbandoned);

  const put = async (source: BlobSource, putOptions?: BlobPutOptions): Promise<BlobPointer> => {
    await mkdir(root, { recursive: true });
    sweep();
    const id = randomBytes(16).toString('hex');
    const folder = join(root, id.slice(0, 2));
    const ownerFile = join(folder, id + OWNER_SUFFIX);
    const temp = join(root, `${TEMP_PREFIX}${randomBytes(16).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    let handle: FileHandle | undefined;
    let placed: string | undefined;
    try {
      handle = await open(temp, 'wx', 0o600);
      for await (const chunk of chunksOf(source)) {
        if (!(chunk instanceof Uint8Array)) throw new TypeError('blob source must yield Uint8Array chunks');
        hash.update(chunk);
        size += chunk.byteLength;
        await writeFully(handle, chunk);
      }
      await handle.sync();
      await handle.close();
      handle = undefined;

      await mkdir(folder, { recursive: true });
      // Made durable by the folder's sync below; a put that dies before the rename leaves it
      // without its blob, for list() to remove.
      if (putOptions?.owner !== undefined) await writeDurably(ownerFile, putOptions.owner);
      placed = join(folder, id);
      await rename(temp, placed);
      await syncDirectory(folder);
      // The rename removed the temporary file's entry from the root (and a new fan-out folder added one).
      await syncDirectory(root);
    } catch (error) {
      await handle?.close().catch(() => undefined);
      await unlink(temp).catch(() => undefined);
      // Renamed but not made durable: the caller gets no pointer, so nothing would ever name it.
      if (placed !== undefined) await unlink(placed).catch(() => undefined);
      await unlink(ownerFile).catch(() => undefined);
      throw error;
    }
    return { uri: `fs:${id}`, size, sha256: hash.digest('hex') };
  };

  const stream = (pointer: BlobPointer): AsyncIterable<Uint8Array> => {
    // Validate now rather than on first iteration, so a bad pointer fails where it is passed.
    const path = pathOf(root, pointer);
    checkPointer(pointer);
    return verified(path, pointer);
  };

  return {
    put,
    stream,
    removeAbandoned,

    async get(pointer: BlobPointer): Promise<Uint8Array> {
      const chunks: Uint8Array[] = [];
      let size = 0;
      for await (const chunk of stream(pointer)) {
        chunks.push(chunk);
        size += chunk.byteLength;
      }
      // Allocated only now: a corrupt pointer's `size` never decides how much memory is taken.
      const out = new Uint8Array(size);
      let offset = 0;
      for (const chunk of chunks) {
        out.set(chunk, offset);
        offset += chunk.byteLength;
      }
      return out;
    },

    async delete(pointer: Pick<BlobPointer, 'uri'>): Promise<boolean> {
      const path = pathOf(root, pointer);
      const found = await unlinkIfThere(path);
      await unlinkIfThere(path + OWNER_SUFFIX);
      return found;
    },

    list: () => listBlobs(root, abandonedAfterMs),
  };
}

/** Every placed blob, folder by folder; owner files left by puts that died are removed. */
async function* listBlobs(root: string, abandonedAfterMs: number): AsyncGenerator<ListedBlob> {
  let folders: string[];
  try {
    folders = await readdir(root);
  } catch (error) {
    if (codeOf(error) === 'ENOENT') return;
    throw error;
  }
  for (const folder of folders) {
    if (!FOLDER_PATTERN.test(folder)) continue;
    const names = new Set(await readdir(join(root, folder)).catch(() => [] as string[]));
    for (const name of names) {
      const path = join(root, folder, name);
      if (name.endsWith(OWNER_SUFFIX)) {
        const blob = name.slice(0, -OWNER_SUFFIX.length);
        if (names.has(blob)) continue;
        // Its put died between writing it and placing the blob (or a delete between the two).
        const since = await stat(path).then(
          (s) => s.mtimeMs,
          () => undefined,
        );
        if (since !== undefined && since < Date.now() - abandonedAfterMs) await unlinkIfThere(path);
        continue;
      }
      if (!ID_PATTERN.test(name)) continue;
      const storedAt = await stat(path).then(
        (s) => s.mtimeMs,
        () => undefined,
      );
      if (storedAt === undefined) continue; // deleted meanwhile
      const owner = names.has(name + OWNER_SUFFIX)
        ? await readFile(path + OWNER_SUFFIX, 'utf8').catch(() => undefined)
        : undefined;
      yield { uri: `fs:${name}`, owner, storedAt };
    }
  }
}

async function writeDurably(path: string, text: string): Promise<void> {
  const handle = await open(path, 'w', 0o600);
  try {
    await writeFully(handle, Buffer.from(text, 'utf8'));
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether there was a file to delete. */
async function unlinkIfThere(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (error) {
    if (codeOf(error) !== 'ENOENT') throw error;
    return false;
  }
}

async function* verified(path: string, pointer: BlobPointer): AsyncGenerator<Uint8Array> {
  const hash = createHash('sha256');
  let size = 0;
  let file: AsyncIterable<Buffer>;
  try {
    file = await openForReading(path);
  } catch (error) {
    if (codeOf(error) === 'ENOENT') throw new BlobIntegrityError(`blob ${pointer.uri} does not exist`);
    throw error;
  }
  for await (const chunk of file) {
    size += chunk.byteLength;
    if (size > pointer.size) {
      throw new BlobIntegrityError(`blob ${pointer.uri} is longer than the ${pointer.size} bytes recorded`);
    }
    hash.update(chunk);
    yield chunk;
  }
  if (size !== pointer.size) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has ${size} bytes, ${pointer.size} recorded`);
  }
  const digest = hash.digest('hex');
  if (digest !== pointer.sha256) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has sha256 ${digest}, ${pointer.sha256} recorded`);
  }
}

/** Opens the file before the first chunk is read, so a missing file surfaces as ENOENT here. */
async function openForReading(path: string): Promise<AsyncIterable<Buffer>> {
  const stream = createReadStream(path);
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', reject);
  });
  return stream;
}

function pathOf(root: string, pointer: Pick<BlobPointer, 'uri'>): string {
  const uri: unknown = pointer?.uri;
  const match = typeof uri === 'string' ? URI_PATTERN.exec(uri) : null;
  const id = match?.[1];
  if (id === undefined) {
    throw new BlobIntegrityError(
      `not a filesystem blob pointer: ${JSON.stringify(uri)?.slice(0, 100)} (expected fs:<32 hex digits>)`,
    );
  }
  return join(root, id.slice(0, 2), id);
}

function checkPointer(pointer: BlobPointer): void {
  if (!Number.isSafeInteger(pointer.size) || pointer.size < 0) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has an invalid recorded size: ${String(pointer.size)}`);
  }
  if (typeof pointer.sha256 !== 'string' || !SHA256_PATTERN.test(pointer.sha256)) {
    throw new BlobIntegrityError(`blob ${pointer.uri} has an invalid recorded sha256`);
  }
}

function chunksOf(source: BlobSource): AsyncIterable<Uint8Array> | Iterable<Uint8Array> {
  return source instanceof Uint8Array ? [source] : source;
}

async function writeFully(handle: FileHandle, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.byteLength - offset);
    offset += bytesWritten;
  }
}

async function syncDirectory(path: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(path, 'r');
    await handle.sync();
  } catch (error) {
    // Some platforms (Windows) cannot open or fsync a directory; the rename is all they offer.
    const code = codeOf(error);
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL' && code !== 'EBADF') throw error;
  } finally {
    await handle?.close();
  }
}

function codeOf(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
}
