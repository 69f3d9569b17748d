/**
 * S6, a new key per retry (minute boundary): `npm run scenario -- s6-unstable-keys`.
 * The same retried payment four ways: the buggy clock key with plain deduplication, the stable
 * key, and the buggy key caught by the payload guard (flag, then dead-letter).
 */
import type { PayloadGuardOptions } from '@exactly-once/core';
import { Redis } from 'ioredis';
import type { KeyScheme } from './client.js';
import { type CaseResult, runCase } from './scenario.js';

const amqpUrl = process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const redis = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 2 });
const request = { userId: 'user-123', amountCents: 10_000, currency: 'USD', checkoutId: 'chk_8f2a' };
const window = 10 * 60_000;
let flagged = 0;
const logger = {
  debug() {},
  info() {},
  error() {},
  warn(message: string) {
    if (message.startsWith('same payload')) flagged++;
  },
};

const show = (title: string, r: CaseResult) => {
  const keys = r.keys.flat();
  console.log(title);
  console.log(`  keys sent: ${keys.map((k) => k.slice(0, 14)).join(', ')} (${new Set(keys).size} distinct)`);
  console.log(`  charges on the card: ${r.charges.length}`);
  if (r.deadLetters.length > 0)
    console.log(`  dead-lettered: ${r.deadLetters.map((d) => d.code).join(', ')}`);
};

const run = (scheme: KeyScheme, payloadGuard?: PayloadGuardOptions) =>
  runCase({ amqpUrl, redis, scheme, requests: [request], logger, ...(payloadGuard ? { payloadGuard } : {}) });

try {
  console.log('A payment sent at 02:00:59.5, its answer lost, retried at 02:01:00.5:');
  show('1. key = hash(user, amount, minute), plain deduplication', await run('minute-bucket'));
  show("2. key = stableKey('charge', { userId, checkoutId, amountCents })", await run('stable'));
  flagged = 0;
  show(
    "3. buggy key + payloadGuard { action: 'flag' }",
    await run('minute-bucket', { windowMs: window, action: 'flag' }),
  );
  console.log(`  flagged (warning, exactly_once.payload_reuse): ${flagged}`);
  show(
    "4. buggy key + payloadGuard { action: 'dead-letter' }",
    await run('minute-bucket', { windowMs: window, action: 'dead-letter' }),
  );
  const genuine = await runCase({
    amqpUrl,
    redis,
    scheme: 'minute-bucket',
    requests: [
      { userId: 'user-123', amountCents: 500, currency: 'USD' },
      { userId: 'user-123', amountCents: 500, currency: 'USD' },
    ],
    loseFirstAttempt: false,
    stepMs: 60_000,
    logger,
    payloadGuard: { windowMs: window, action: 'dead-letter' },
  });
  show('5. false positive: two genuine identical orders a minute apart, guard on dead-letter', genuine);
} finally {
  await redis.quit();
}
