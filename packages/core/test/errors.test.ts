import { describe, expect, it } from 'vitest';
import {
  AttemptsExhaustedError,
  describeThrown,
  HandlerFailedError,
  IdempotencyKeyReuseError,
  toErrorInfo,
} from '../src/errors.js';

describe('what a thrown value says in a dead letter', () => {
  it('an Error: its name and message', () => {
    expect(new HandlerFailedError(new TypeError('bad card')).message).toBe(
      'handler failed permanently: TypeError: bad card',
    );
  });

  it('a plain object: its message, or its JSON; never [object Object]', () => {
    expect(new HandlerFailedError({ retryable: false, message: 'plain object' }).message).toBe(
      'handler failed permanently: plain object',
    );
    expect(describeThrown({ name: 'Declined', message: 'card declined' })).toBe('Declined: card declined');
    expect(describeThrown({ code: 42 })).toBe('{"code":42}');
    expect(toErrorInfo({ reason: 'x' })).toEqual({
      name: 'NonError',
      code: 'ERROR',
      message: '{"reason":"x"}',
    });
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(describeThrown(circular)).toBe('[object Object]');
  });

  it("a key reuse names a compaction marker's fingerprint whole, a full one by its start", () => {
    // Before: "stored fingerprint compacted:31…", two of the marker's eight hex digits.
    const error = new IdempotencyKeyReuseError({
      key: 'k',
      storedFingerprint: 'compacted:31ee07aa',
      receivedFingerprint: '0123456789abcdef0123456789abcdef',
    });
    expect(error.message).toContain('(stored fingerprint compacted:31ee07aa, received 0123456789ab…)');
  });

  it('a string or nothing: as it is', () => {
    expect(new HandlerFailedError('boom').message).toBe('handler failed permanently: boom');
    expect(describeThrown(undefined)).toBe('undefined');
    expect(new AttemptsExhaustedError({ attempts: 3, cause: { message: 'timeout' } }).message).toBe(
      'gave up after 3 attempts: timeout',
    );
  });
});
