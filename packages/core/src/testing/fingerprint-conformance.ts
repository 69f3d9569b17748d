/**
 * Conformance of {@link ProcessedStore.claimFingerprint} (the payload guard's store operation):
 * run it against each store that implements it, on its real server.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProcessedStore } from '../store/types.js';
import type { StoreUnderTest } from './conformance.js';

export interface FingerprintClaimConformanceOptions {
  /** Concurrent claimers in the race test. @defaultValue 16 */
  readonly concurrency?: number;
  /**
   * Whether the store implements the optional `releaseFingerprint` (then its cases run; a store
   * that says so and lacks it fails them). @defaultValue true
   */
  readonly release?: boolean;
}

/**
 * The claimFingerprint suite: first writer wins, the same key is never told about itself, scopes
 * and fingerprints are independent, a lapsed claim is replaced, racing claimers agree on one
 * winner, keys come back byte for byte, and `releaseFingerprint` deletes the holder's claim only.
 */
export function describeFingerprintClaimConformance(
  name: string,
  setup: () => Promise<StoreUnderTest> | StoreUnderTest,
  options: FingerprintClaimConformanceOptions = {},
): void {
  const concurrency = options.concurrency ?? 16;
  const withRelease = options.release ?? true;
  describe(`claimFingerprint conformance: ${name}`, () => {
    let sut: StoreUnderTest | undefined;
    beforeAll(async () => {
      sut = await setup();
    });
    afterAll(async () => {
      if (sut?.teardown) await sut.teardown();
      else await sut?.store.close?.();
    });
    const claim = (scope: string, fingerprint: string, key: string, windowMs = 600_000) => {
      const store = sut?.store as ProcessedStore;
      if (typeof store?.claimFingerprint !== 'function') throw new Error('store has no claimFingerprint');
      return store.claimFingerprint(scope, fingerprint, key, windowMs);
    };
    const release = (scope: string, fingerprint: string, key: string) => {
      const store = sut?.store as ProcessedStore;
      if (typeof store?.releaseFingerprint !== 'function') throw new Error('store has no releaseFingerprint');
      return store.releaseFingerprint(scope, fingerprint, key);
    };
    const fp = () => randomBytes(32).toString('hex');
    const scope = `ns:${randomUUID().slice(0, 8)}`;

    it('the first key wins; the same key again is not flagged; another key learns the first', async () => {
      const f = fp();
      expect(await claim(scope, f, 'order-1')).toBeUndefined();
      expect(await claim(scope, f, 'order-1')).toBeUndefined();
      expect(await claim(scope, f, 'order-1-retry')).toEqual({ firstKey: 'order-1' });
      // A later key does not take the claim over: the first is still the one answered.
      expect(await claim(scope, f, 'order-1-third')).toEqual({ firstKey: 'order-1' });
      expect(await claim(scope, f, 'order-1')).toBeUndefined();
    });

    it('scopes and fingerprints are independent', async () => {
      const f = fp();
      expect(await claim(scope, f, 'a')).toBeUndefined();
      expect(await claim(`${scope}-other`, f, 'b')).toBeUndefined();
      expect(await claim(scope, fp(), 'c')).toBeUndefined();
      // A scope that is a prefix of another, and a fingerprint that continues it, stay apart.
      expect(await claim(`${scope}:x`, f, 'd')).toBeUndefined();
      expect(await claim(scope, `x:${f}`, 'e')).toBeUndefined();
      expect(await claim(scope, f, 'z')).toEqual({ firstKey: 'a' });
    });

    it('a lapsed claim is replaced by the next key', async () => {
      const f = fp();
      expect(await claim(scope, f, 'first', 200)).toBeUndefined();
      expect(await claim(scope, f, 'second', 200)).toEqual({ firstKey: 'first' });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await claim(scope, f, 'second', 60_000)).toBeUndefined();
      expect(await claim(scope, f, 'first', 60_000)).toEqual({ firstKey: 'second' });
    });

    it('racing keys agree on one winner', async () => {
      const f = fp();
      const keys = Array.from({ length: concurrency }, (_, i) => `racer-${i}`);
      const answers = await Promise.all(keys.map((k) => claim(scope, f, k)));
      const winners = keys.filter((_, i) => answers[i] === undefined);
      expect(winners).toHaveLength(1);
      for (const answer of answers) if (answer) expect(answer).toEqual({ firstKey: winners[0] });
    });

    if (withRelease) {
      it("releaseFingerprint deletes the holder's claim only", async () => {
        const f = fp();
        expect(await claim(scope, f, 'refused-copy')).toBeUndefined();
        // Another key, another scope or another fingerprint releases nothing.
        await release(scope, f, 'someone-else');
        await release(`${scope}-other`, f, 'refused-copy');
        await release(scope, fp(), 'refused-copy');
        expect(await claim(scope, f, 'corrected')).toEqual({ firstKey: 'refused-copy' });
        // The holder's release frees it for the next key, which then holds it.
        await release(scope, f, 'refused-copy');
        expect(await claim(scope, f, 'corrected')).toBeUndefined();
        expect(await claim(scope, f, 'refused-copy')).toEqual({ firstKey: 'corrected' });
        // Releasing what is not there, twice, is harmless.
        await release(scope, fp(), 'nobody');
        await release(scope, f, 'refused-copy');
        expect(await claim(scope, f, 'third')).toEqual({ firstKey: 'corrected' });
      });

      it('releaseFingerprint takes keys verbatim: a key one byte apart is another key', async () => {
        // Odd bytes in the holder's key: its own release still finds the claim.
        const f = fp();
        expect(await claim(scope, f, 'k\u0000{tag}ключ')).toBeUndefined();
        await release(scope, f, 'k\u0000{tag}ключ');
        expect(await claim(scope, f, 'next')).toBeUndefined();
        // A lapsed claim released by its holder, or not, is replaced by the next key.
        const h = fp();
        expect(await claim(scope, h, 'short', 200)).toBeUndefined();
        await new Promise((resolve) => setTimeout(resolve, 400));
        await release(scope, h, 'short');
        expect(await claim(scope, h, 'after', 60_000)).toBeUndefined();
        // A key that differs in one byte is another key.
        const g = fp();
        expect(await claim(scope, g, 'key-a')).toBeUndefined();
        await release(scope, g, 'key-a\u0000');
        await release(scope, g, 'key-A');
        expect(await claim(scope, g, 'key-b')).toEqual({ firstKey: 'key-a' });
      });
    }

    it('keeps any key and fingerprint verbatim', async () => {
      const odd = ['k\u0000ey', '{tag}*$.', 'ключ-🔑', 'x'.repeat(2000)];
      for (const key of odd) {
        const f = `${key}|${fp()}`;
        expect(await claim(`${scope}{}`, f, key)).toBeUndefined();
        expect(await claim(`${scope}{}`, f, 'other')).toEqual({ firstKey: key });
      }
    });
  });
}
