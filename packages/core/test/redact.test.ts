import { describe, expect, it } from 'vitest';
import { IdempotencyKeyReuseError } from '../src/errors.js';
import { createScrubber, REDACTED } from '../src/redact.js';

describe('scrubber', () => {
  it('replaces a key, its store key and the key as error messages shorten it', () => {
    const key = `order-${'7'.repeat(120)}`;
    const storeKey = `default:billing:${key}`;
    const scrubber = createScrubber();
    scrubber.add(key, storeKey);
    // The error quotes the key cut to 77 characters and `...`.
    const error = new IdempotencyKeyReuseError({ key, storedFingerprint: 'a', receivedFingerprint: 'b' });
    expect(error.message).toContain(`${key.slice(0, 77)}...`);
    const text = `${error.message}; record ${storeKey}`;
    const scrubbed = scrubber.scrub(text);
    expect(scrubbed).not.toContain('7777');
    expect(scrubbed).toContain(REDACTED);
  });

  it('replaces a short key only where quoted, and quoted payload fragments', () => {
    const scrubber = createScrubber(Buffer.from('{"card":"4111-1111"}'));
    scrubber.add('42');
    expect(scrubber.scrub('key "42" failed after 42 tries')).toBe(`key "${REDACTED}" failed after 42 tries`);
    expect(scrubber.scrub('Unexpected token in "4111-1111"')).toBe(`Unexpected token in "${REDACTED}"`);
  });
});
