import { describe, expect, it } from 'vitest';
import { AttemptsExhaustedError, describeThrown, HandlerFailedError, toErrorInfo } from '../src/errors.js';

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

  it('a string or nothing: as it is', () => {
    expect(new HandlerFailedError('boom').message).toBe('handler failed permanently: boom');
    expect(describeThrown(undefined)).toBe('undefined');
    expect(new AttemptsExhaustedError({ attempts: 3, cause: { message: 'timeout' } }).message).toBe(
      'gave up after 3 attempts: timeout',
    );
  });
});
