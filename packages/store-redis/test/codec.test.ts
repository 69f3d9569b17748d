import { describe, expect, it } from 'vitest';
import { packText, unpackText } from '../src/codec.js';

describe('text packing', () => {
  it('round-trips any string; hex fingerprints and trace refs take half the bytes', () => {
    const sha = 'ab'.repeat(32);
    const trace = `${'0af7651916cd43dd8448eb211c80319c'}-${'b7ad6b7169203331'}`;
    for (const text of [sha, trace, '', 'fp-1', 'AB', 'abc', '\u0000', 'ключ-🔑', '0a-0b', `${sha}\n`]) {
      expect(unpackText(packText(text))).toBe(text);
    }
    expect(packText(sha).length).toBe(33);
    expect(packText(trace).length).toBe(25);
  });
});
