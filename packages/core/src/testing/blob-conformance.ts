/** The blob-store conformance suite: verified round trips and corruption detection on the real store. */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlobStore } from '../blob/types.js';
import { ErrorCode } from '../errors.js';
import { allBytes, bytes, iterate, plain, sha256 } from './conformance-helpers.js';

export interface BlobStoreUnderTest {
  blobs: BlobStore;
  teardown?: () => Promise<void>;
}

/**
 * The blob-store conformance suite: verified round trips (whole and streamed, multi-MB), size and
 * hash mismatches detected as {@link BlobIntegrityError}, idempotent deletes. Run it against the
 * real backend (a directory, GridFS, S3...).
 *
 * @example
 * ```ts
 * describeBlobStoreConformance('gridfs', async () => ({ blobs: createGridFsBlobStore({ db }) }));
 * ```
 */
export function describeBlobStoreConformance(
  name: string,
  setup: () => Promise<BlobStoreUnderTest> | BlobStoreUnderTest,
): void {
  describe(`BlobStore conformance: ${name}`, () => {
    let under: BlobStoreUnderTest | undefined;
    const current = (): BlobStore => {
      if (!under) throw new Error('blob store setup did not run');
      return under.blobs;
    };
    beforeAll(async () => {
      under = await setup();
    });
    afterAll(async () => {
      await under?.teardown?.();
    });

    it('bytes put are read back verified, whole and streamed', async () => {
      const blobs = current();
      const data = allBytes();
      const pointer = await blobs.put(data);
      expect(pointer).toMatchObject({ size: 256, sha256: sha256(data) });
      expect(plain(await blobs.get(pointer))).toEqual(plain(data));
      const empty = await blobs.put(new Uint8Array(0));
      expect((await blobs.get(empty)).byteLength).toBe(0);
    });

    it('a multi-MB chunked source is stored and read back intact', async () => {
      const blobs = current();
      const chunks = Array.from({ length: 48 }, () => new Uint8Array(randomBytes(64 * 1024)));
      const expected = createHash('sha256');
      for (const chunk of chunks) expected.update(chunk);
      const pointer = await blobs.put(iterate(chunks));
      expect(pointer).toMatchObject({ size: 48 * 64 * 1024, sha256: expected.digest('hex') });
      const read = createHash('sha256');
      let size = 0;
      for await (const chunk of blobs.stream(pointer)) {
        read.update(chunk);
        size += chunk.byteLength;
      }
      expect([size, read.digest('hex')]).toEqual([pointer.size, pointer.sha256]);
    });

    it('a pointer with a wrong sha256 or size fails with BlobIntegrityError', async () => {
      const blobs = current();
      const pointer = await blobs.put(bytes([1, 2, 3, 4]));
      const wrongHash = { ...pointer, sha256: sha256(bytes([4, 3, 2, 1])) };
      for (const bad of [wrongHash, { ...pointer, size: 5 }, { ...pointer, size: 3 }]) {
        await expect(blobs.get(bad)).rejects.toMatchObject({ code: ErrorCode.BlobIntegrity });
      }
      const drain = async () => {
        for await (const chunk of blobs.stream(wrongHash)) expect(chunk.byteLength).toBeGreaterThan(0);
      };
      await expect(drain()).rejects.toMatchObject({ code: ErrorCode.BlobIntegrity });
    });

    it('a deleted blob cannot be read; deleting it again is not an error, and says none was there', async () => {
      const blobs = current();
      const pointer = await blobs.put(bytes([9]));
      const first = await blobs.delete(pointer);
      await expect(blobs.get(pointer)).rejects.toThrow();
      const again = await blobs.delete(pointer);
      // A store that cannot tell answers nothing both times; one that answers, true then false.
      if (first !== undefined) expect([first, again]).toEqual([true, false]);
      else expect(again).toBeUndefined();
    });

    it("list (when the store has it) reports each blob with its put's owner, and not once deleted", async () => {
      const blobs = current();
      if (!blobs.list) return; // optional in the contract: such a store has no orphan collection
      const startedAt = Date.now();
      const owned = await blobs.put(bytes([1]), { owner: 'ns:consumer:key with spaces and é' });
      const unowned = await blobs.put(bytes([2]));
      const listed = async () => {
        const found = new Map<string, { owner: string | undefined; storedAt: number }>();
        for await (const blob of blobs.list?.() ?? []) found.set(blob.uri, blob);
        return found;
      };
      const found = await listed();
      expect(found.get(owned.uri)?.owner).toBe('ns:consumer:key with spaces and é');
      expect(found.get(unowned.uri)?.owner).toBeUndefined();
      // Clocks of a blob store may be a server's or a file system's: within a minute of this one.
      expect(Math.abs((found.get(owned.uri)?.storedAt ?? 0) - startedAt)).toBeLessThan(60_000);
      await blobs.delete({ uri: owned.uri });
      await blobs.delete(unowned);
      const after = await listed();
      expect(after.has(owned.uri) || after.has(unowned.uri)).toBe(false);
    });
  });
}
