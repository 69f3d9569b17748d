import { describe, expect, it } from 'vitest';
import { Headers, readIdentityHeader } from '../src/headers.js';
import { sha256Hex } from '../src/keys.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery, recordingPublisher } from './helpers.js';

const enc = new TextEncoder();

describe('identity headers are read strictly, never guessed', () => {
  it.each([
    ['an AMQP array of two keys', { [Headers.IdempotencyKey]: ['a', 'b'] }],
    ['an AMQP array of one key', { [Headers.IdempotencyKey]: ['a'] }],
    ['a repeated Kafka header', { [Headers.IdempotencyKey]: [enc.encode('a'), enc.encode('b')] }],
    ['the name twice in different case', { [Headers.IdempotencyKey]: 'a', 'X-Idempotency-Key': 'b' }],
    ['a number', { [Headers.IdempotencyKey]: 42 }],
    ['a boolean', { [Headers.IdempotencyKey]: true }],
    ['a table', { [Headers.IdempotencyKey]: { nested: 'a' } }],
    ['a repeated request id', { [Headers.IdempotencyKey]: 'k', [Headers.RequestId]: ['r1', 'r2'] }],
    ['a numeric request id', { [Headers.IdempotencyKey]: 'k', [Headers.RequestId]: 7 }],
    [
      'a key holding U+FFFD (bytes a lenient decoder could not read)',
      { [Headers.IdempotencyKey]: 'pay-\uFFFD1' },
    ],
    ['a request id holding U+FFFD', { [Headers.IdempotencyKey]: 'k', [Headers.RequestId]: 'r-\uFFFD' }],
    [
      'a request id that is not UTF-8',
      { [Headers.IdempotencyKey]: 'k', [Headers.RequestId]: Uint8Array.of(0xff) },
    ],
  ])('%s is dead-lettered as INVALID_KEY and the handler never runs', async (_, headers) => {
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => {
        runs++;
      },
    });
    const d = await p.process(delivery({ a: 1 }, headers as never));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (d.action === 'dead-letter') {
      expect(d.reason.error).toMatchObject({ name: 'InvalidKeyError', code: 'INVALID_KEY' });
    }
    expect(runs).toBe(0);
  });

  it('accepts one string or one UTF-8 byte value', () => {
    expect(readIdentityHeader({ 'x-idempotency-key': 'k1' }, Headers.IdempotencyKey)).toBe('k1');
    expect(readIdentityHeader({ 'X-Idempotency-Key': enc.encode('k2') }, Headers.IdempotencyKey)).toBe('k2');
    expect(readIdentityHeader({ other: 'x' }, Headers.IdempotencyKey)).toBeUndefined();
    expect(readIdentityHeader({ 'x-idempotency-key': null }, Headers.IdempotencyKey)).toBeUndefined();
  });

  it('keeps a leading U+FEFF of a byte value: two keys that differ by it stay two keys', async () => {
    // Before: the decoder dropped it, and `\ufeffpay-7` was answered as a duplicate of `pay-7`.
    const bom = Uint8Array.of(0xef, 0xbb, 0xbf, ...enc.encode('pay-7'));
    expect(readIdentityHeader({ [Headers.IdempotencyKey]: bom }, Headers.IdempotencyKey)).toBe('\ufeffpay-7');
    const keys: string[] = [];
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: (_, ctx) => {
        keys.push(ctx.key);
      },
    });
    const a = await p.process(delivery({ amount: 100 }, { [Headers.IdempotencyKey]: bom }));
    const b = await p.process(delivery({ amount: 100 }, { [Headers.IdempotencyKey]: enc.encode('pay-7') }));
    expect([a.outcome, b.outcome]).toEqual(['acquired', 'acquired']);
    expect(keys).toEqual(['\ufeffpay-7', 'pay-7']);
  });

  it.each([
    ['over 255 bytes', 'r'.repeat(300)],
    ['starting with sha256:', 'sha256:my-request-1'],
    ['a plain id', 'req-42'],
  ])('a request id %s is the same in every service it passes through', async (_, sent) => {
    // Before: a long id became sha256:<hex> at the first hop, and every later hop hashed that
    // again (it starts with sha256:): each service recorded and passed on another id.
    const seen: string[] = [];
    let headers: Record<string, string> = { [Headers.RequestId]: sent };
    for (const hop of ['a', 'b', 'c']) {
      const publisher = recordingPublisher();
      const p = createProcessor({
        consumer: hop,
        store: createMemoryStore(),
        publisher,
        retentionCheck: 'off',
        handler: (_payload, ctx) => {
          seen.push(ctx.requestId);
          ctx.publish('next', { from: hop });
        },
      });
      expect(
        await p.process(delivery({ hop }, { ...headers, [Headers.IdempotencyKey]: `k-${hop}` })),
      ).toMatchObject({
        action: 'ack',
      });
      headers = { [Headers.RequestId]: String(publisher.sent[0]?.headers?.[Headers.RequestId]) };
    }
    expect(new Set(seen).size).toBe(1);
    expect(headers[Headers.RequestId]).toBe(seen[0]);
    expect(seen[0]).toBe(sent.length > 255 ? `sha256:${sha256Hex(sent)}` : sent);
  });

  it('a payload member named __proto__ is part of the fingerprint', async () => {
    // Before: the canonical form took it for the prototype and left it out: a payload without it
    // was answered as a duplicate instead of IDEMPOTENCY_KEY_REUSE.
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      handler: () => 1,
    });
    const key = { [Headers.IdempotencyKey]: 'pay-8' };
    await p.process(delivery('{"__proto__":{"amount":100},"customer":"c2"}', key));
    expect(await p.process(delivery('{"customer":"c2"}', key))).toMatchObject({
      action: 'dead-letter',
      outcome: 'mismatch',
    });
  });
});

describe('a producer that sets only x-request-id', () => {
  const processor = (missingKey?: 'reject') => {
    const runs: { key: string; requestId: string }[] = [];
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      // The core README's recipe (Keys): the request id as the key, read as strictly as a key.
      missingKey: missingKey ?? ((_payload, d) => readIdentityHeader(d.headers, Headers.RequestId)),
      handler: (_payload, ctx) => {
        runs.push({ key: ctx.key, requestId: ctx.requestId });
      },
    });
    return { p, runs };
  };

  it('is KEY_MISSING by default: a request id never stands in for a key on its own', async () => {
    const { p, runs } = processor('reject');
    const d = await p.process(delivery({ a: 1 }, { [Headers.RequestId]: 'req-1' }));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (d.action === 'dead-letter') expect(d.reason.error).toMatchObject({ code: 'KEY_MISSING' });
    expect(runs).toEqual([]);
  });

  it('is deduplicated by its request id with the missingKey recipe', async () => {
    const { p, runs } = processor();
    const copy = () => delivery({ a: 1 }, { [Headers.RequestId]: 'req-1' });
    expect(await p.process(copy())).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(copy())).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toEqual([{ key: 'req-1', requestId: 'req-1' }]);
  });

  it('with the recipe, a repeated request id is INVALID_KEY and no request id KEY_MISSING', async () => {
    const { p, runs } = processor();
    const repeated = await p.process(delivery({ a: 1 }, { [Headers.RequestId]: ['r1', 'r2'] } as never));
    if (repeated.action !== 'dead-letter') throw new Error(`not dead-lettered: ${repeated.action}`);
    expect(repeated.reason.error).toMatchObject({ code: 'INVALID_KEY' });
    const none = await p.process(delivery({ a: 1 }, {}));
    if (none.action !== 'dead-letter') throw new Error(`not dead-lettered: ${none.action}`);
    expect(none.reason.error).toMatchObject({ code: 'KEY_MISSING' });
    expect(runs).toEqual([]);
  });
});
