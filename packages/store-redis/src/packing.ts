/**
 * The packed arguments of the batch scripts (see beginMany-n.lua, completeMany-n.lua and
 * markPublishedMany-n.lua): numbers big-endian, strings length-prefixed (4 bytes). A batch's
 * argument is written into one buffer that grows as needed, rather than made of a few small
 * buffers per key and joined: on the hot path those allocations were a measurable part of the
 * client's CPU and garbage.
 */
import { packedTextBound, writePackedText } from './codec.js';

export class ArgumentWriter {
  private out: Buffer;
  private at = 0;

  constructor(expectedBytes: number) {
    this.out = Buffer.allocUnsafe(Math.max(64, expectedBytes));
  }

  private room(bytes: number): void {
    if (this.at + bytes <= this.out.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.out.length * 2, this.at + bytes));
    this.out.copy(grown, 0, 0, this.at);
    this.out = grown;
  }

  /** An unsigned integer of `width` bytes (at most 6). */
  uint(value: number, width: number): this {
    this.room(width);
    this.out.writeUIntBE(value, this.at, width);
    this.at += width;
    return this;
  }

  /** Bytes, or a string as UTF-8, after their length. */
  string(value: Uint8Array | string): this {
    if (typeof value === 'string') {
      this.room(4 + 3 * value.length);
      const length = this.out.write(value, this.at + 4, 'utf8');
      return this.prefixed(length);
    }
    this.room(4 + value.length);
    this.out.set(value, this.at + 4);
    return this.prefixed(value.length);
  }

  /** One byte, then bytes, as one string (an inline result: `i` and its data). */
  tagged(tag: number, body: Uint8Array): this {
    this.room(5 + body.length);
    this.out[this.at + 4] = tag;
    this.out.set(body, this.at + 5);
    return this.prefixed(1 + body.length);
  }

  /** Text in the record's packed form (codec.ts, packText), after its length. */
  packedText(text: string): this {
    this.room(4 + packedTextBound(text));
    return this.prefixed(writePackedText(this.out, this.at + 4, text));
  }

  private prefixed(length: number): this {
    this.out.writeUInt32BE(length, this.at);
    this.at += 4 + length;
    return this;
  }

  /** What was written (a view: the writer is not used again). */
  finish(): Buffer {
    return this.out.subarray(0, this.at);
  }
}
