/**
 * Idempotency keys and request ids every consumer refuses (empty, a lone surrogate, U+FFFD for
 * bytes that were not UTF-8), which the RabbitMQ publisher and the Kafka producer must refuse at
 * `send`.
 */
import { ErrorCode, InvalidKeyError } from '@exactly-once/core';
import { expect } from 'vitest';

const UNUSABLE_KEYS = ['', 'a\uFFFDb', 'lone \uD800'];

/** Asserts that `send` rejects each unusable value with a non-retryable InvalidKeyError. */
export async function expectUnusableKeysRefused(send: (value: string) => Promise<unknown>): Promise<void> {
  for (const value of UNUSABLE_KEYS) {
    const refused = await send(value).catch((e: unknown) => e);
    expect(refused, JSON.stringify(value)).toBeInstanceOf(InvalidKeyError);
    expect(refused).toMatchObject({ code: ErrorCode.InvalidKey, retryable: false });
  }
}
