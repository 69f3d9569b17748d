import { describe, expect, it } from 'vitest';
import { INLINE_RESULT, packText, unpackText } from '../src/codec.js';
import { ArgumentWriter } from '../src/packing.js';

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

describe('batch arguments', () => {
  it('writes strings after their length, numbers big-endian, growing past the first guess', () => {
    const long = 'ключ-🔑'.repeat(2_000);
    const fp = 'cd'.repeat(32);
    const out = new ArgumentWriter(8)
      .string(Buffer.from([0, 1, 2]))
      .string(long)
      .uint(2 ** 40 + 7, 6)
      .packedText(fp)
      .string('')
      .tagged(INLINE_RESULT, Buffer.from('{"ok":true}'))
      .uint(255, 1)
      .finish();
    const read: (Buffer | number)[] = [];
    let at = 0;
    const next = () => {
      const length = out.readUInt32BE(at);
      const value = out.subarray(at + 4, at + 4 + length);
      at += 4 + length;
      return value;
    };
    read.push(next(), next(), out.readUIntBE(at, 6));
    at += 6;
    read.push(next(), next(), next(), out.readUInt8(at));
    expect(at + 1).toBe(out.length);
    expect(read).toEqual([
      Buffer.from([0, 1, 2]),
      Buffer.from(long, 'utf8'),
      2 ** 40 + 7,
      packText(fp),
      Buffer.alloc(0),
      Buffer.from('i{"ok":true}'),
      255,
    ]);
  });
});
