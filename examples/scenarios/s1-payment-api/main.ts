/**
 * S1, payment API retried after a lost response: `npm run scenario -- s1-payment-api`.
 * Starts the API (Redis store) behind a proxy that loses responses, pays through it, and prints
 * what the card processor's own ledger says.
 */
import { randomUUID } from 'node:crypto';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { startPaymentApi } from './api.js';
import { createCardProcessor } from './card-processor.js';
import { payWithRetry, postPayment } from './client.js';
import { startLossyProxy } from './lossy-proxy.js';

const redis = new Redis(process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 2 });
const keyPrefix = `scenario-s1-${randomUUID().slice(0, 8)}`;
const store = createRedisStore({ client: redis, keyPrefix });
await store.checkServer();
const processor = createCardProcessor();
const api = await startPaymentApi({ store, processor });
const proxy = await startLossyProxy(api.url);
const body = (i: number) => ({ customerId: `cus_${i}`, amountCents: 10_000, currency: 'USD' });

try {
  // 1. One payment whose first response is lost on the way back.
  proxy.dropNextResponses(1);
  const key = randomUUID();
  const first = await payWithRetry(proxy.url, key, body(0));
  console.log('1. lost response, then a retry with the same Idempotency-Key');
  console.log(`   attempts: ${first.attempts.join(' -> ')}`);
  console.log(
    `   answer: ${first.answer.status} ${JSON.stringify(first.answer.body)} replayed=${first.answer.headers['idempotent-replayed'] ?? 'false'}`,
  );
  console.log(
    `   charges at the processor for this key: ${processor.ledger.filter((c) => c.customerId === 'cus_0').length}`,
  );

  // 2. 100 payments, every first response lost.
  const n = 100;
  proxy.dropNextResponses(n);
  const before = processor.ledger.length;
  const outcomes = await Promise.all(
    Array.from({ length: n }, (_, i) => payWithRetry(proxy.url, randomUUID(), body(i + 1))),
  );
  const requests = outcomes.reduce((sum, o) => sum + o.attempts.length, 0);
  const replayed = outcomes.filter((o) => o.answer.headers['idempotent-replayed'] === 'true').length;
  console.log(`2. ${n} payments, each first response lost`);
  console.log(
    `   requests sent: ${requests}, responses lost: ${proxy.dropped - 1}, replayed answers: ${replayed}`,
  );
  console.log(`   charges at the processor: ${processor.ledger.length - before} (expected ${n})`);

  // 3. A duplicate while the first request is still running.
  const release = processor.hold();
  const slowKey = randomUUID();
  const slow = postPayment(api.url, slowKey, body(500));
  while (!processor.ledger.some((c) => c.customerId === 'cus_500'))
    await new Promise((r) => setTimeout(r, 10));
  const dup = await postPayment(api.url, slowKey, body(500));
  release();
  const done = await slow;
  const after = await postPayment(api.url, slowKey, body(500));
  console.log('3. concurrent duplicate');
  console.log(`   duplicate while running: ${dup.status} (retry-after ${dup.headers['retry-after']} s)`);
  console.log(
    `   first: ${done.status}, retry after it finished: ${after.status} replayed=${after.headers['idempotent-replayed']}`,
  );

  // 4. The same key with another body.
  const other = await postPayment(api.url, slowKey, { ...body(500), amountCents: 99_900 });
  console.log(`4. same key, other amount: ${other.status} ${JSON.stringify(other.body)}`);
  console.log(`total charges at the processor: ${processor.ledger.length} for ${n + 2} payments`);
} finally {
  await proxy.close();
  await api.close();
  for await (const keys of redis.scanStream({ match: `${keyPrefix}:*`, count: 1000 }) as AsyncIterable<
    string[]
  >) {
    if (keys.length > 0) await redis.unlink(...keys);
  }
  await redis.quit();
}
