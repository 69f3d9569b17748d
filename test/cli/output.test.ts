/**
 * The CLI's text output: what a producer's bytes look like on the operator's terminal, and
 * tables whose columns line up as printed.
 */
import { describe, expect, it } from 'vitest';
import { letterKey, renderLetter } from '../../packages/cli/src/commands/dlq-common.js';
import { type Io, printLines, shown, table, terminalSafe } from '../../packages/cli/src/output.js';

describe('cli text output', () => {
  it('prints control characters escaped and a backslash doubled, so no two texts print alike', () => {
    // Found by a review: a key holding ESC and one holding the text "\x1b" printed the same.
    expect(terminalSafe('a\u001b[2Jb')).toBe('a\\x1b[2Jb');
    expect(terminalSafe('a\\x1b[2Jb')).toBe('a\\\\x1b[2Jb');
    expect(terminalSafe('tab\there\u202e\u0085')).toBe('tab\there\\u202e\\x85');
  });

  it('lines table columns up on the printed width of cells with escapes', () => {
    let out = '';
    const io: Io = { out: (text) => (out += text), err: () => {}, interactive: false };
    printLines(
      io,
      table([
        ['id', 'code'],
        ['m\u001b[2J', 'PERMANENT'],
        ['plain', 'KEY_MISSING'],
      ]),
    );
    const lines = out.trimEnd().split('\n');
    const column = lines.map((line) => line.search(/(code|PERMANENT|KEY_MISSING)$/));
    expect(new Set(column).size).toBe(1);
    expect(lines[1]).toBe('m\\x1b[2J  PERMANENT');
  });

  it('quotes a key that would print like another or like none', () => {
    // Before: an empty key, a key of one space and no key printed alike (blank, or `-`).
    expect(['', ' ', ' pay-1', 'pay-1 ', '-', '(none)', '(null)'].map(shown)).toEqual([
      '""',
      '" "',
      '" pay-1"',
      '"pay-1 "',
      '"-"',
      '"(none)"',
      '"(null)"',
    ]);
    expect(shown('pay-1')).toBe('pay-1');
    expect(shown('a b')).toBe('a b');
    expect(shown('(unusable)')).toBe('"(unusable)"');
  });

  it('shows a key header the SDK refused as unusable, with why, never as no key', () => {
    // Before: a key sent as an AMQP number printed `(none)`, the mark of a message without one.
    const refused = letterKey({ 'x-idempotency-key': 12345 });
    expect(refused.key).toBeUndefined();
    expect(refused.unusableKey).toMatch(/number/);
    expect(letterKey({})).toEqual({});
    expect(letterKey({ 'x-idempotency-key': 'k-1' })).toEqual({ key: 'k-1' });
    const letter = { id: 'm-1', ...refused, reason: {}, origin: {}, headers: {}, body: Buffer.alloc(0) };
    const keyRow = renderLetter('rabbitmq orders.dlq', letter).find((line) => line.startsWith('key '));
    expect(keyRow).toMatch(/^key +\(unusable: .*number.*\)$/);
  });
});
