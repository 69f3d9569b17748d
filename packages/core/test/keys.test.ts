/**
 * Canonical JSON, the fingerprint's input: key order never matters, and the order is the sort's.
 * And sha256, which stores name records by: the same bytes as node:crypto's digest.
 */
import crypto from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson, sha256 } from '../src/keys.js';

/** The definition: every object's keys through `Array.prototype.sort` (UTF-16 code units). */
function reference(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort())
      Object.defineProperty(out, k, { value: (v as never)[k], enumerable: true });
    return out;
  });
}

const shuffled = (value: object, seed: number): object => {
  const entries = Object.entries(value);
  for (let i = entries.length - 1; i > 0; i--) {
    const j = (seed * (i + 7)) % (i + 1);
    [entries[i], entries[j]] = [entries[j] as [string, unknown], entries[i] as [string, unknown]];
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of entries) Object.defineProperty(out, k, { value: v, enumerable: true });
  return out;
};

// Keys that sort in surprising ways: integer-like ones (listed first by Object.keys), case,
// surrogate pairs against characters above them, the empty key.
const key = fc.oneof(
  fc.string({ maxLength: 6 }),
  fc.constantFrom('10', '9', '0', '01', 'A', 'a', '', '\u{1F600}', '\uFFFF', 'é', '__proto__'),
);
const json = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.integer(),
    fc.string(),
    fc.boolean(),
    fc.constant(null),
    tie('object'),
    tie('array'),
  ),
  object: fc.dictionary(key, tie('value'), { maxKeys: 40 }),
  array: fc.array(tie('value'), { maxLength: 4 }),
})).object;

describe('canonicalJson', () => {
  it('sorts every object key as Array.prototype.sort does, small and large objects alike', () => {
    fc.assert(
      fc.property(json, (value) => {
        expect(canonicalJson(value)).toBe(reference(value));
      }),
      { numRuns: 500 },
    );
  });

  it('gives the same text whatever the key order', () => {
    fc.assert(
      fc.property(json, fc.nat(1_000), (value, seed) => {
        expect(canonicalJson(shuffled(value, seed))).toBe(canonicalJson(value));
      }),
      { numRuns: 300 },
    );
  });
});

describe('sha256', () => {
  const digest = (data: string | Uint8Array) => crypto.createHash('sha256').update(data).digest();

  it('is the digest of strings (UTF-8, lone surrogates included) and of bytes', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.uint8Array({ maxLength: 300 })), (data) => {
        expect(sha256(data).equals(digest(data))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('keeps every byte value of the digest (high bytes included)', () => {
    const seen = new Set<number>();
    for (let i = 0; seen.size < 256 && i < 10_000; i++) {
      const out = sha256(`key-${i}`);
      expect(out.length).toBe(32);
      expect(out.equals(digest(`key-${i}`))).toBe(true);
      for (const b of out) seen.add(b);
    }
    expect(seen.size).toBe(256);
  });
});
