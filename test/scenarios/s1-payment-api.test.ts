/**
 * S1, payment API retried after a lost response: the API (createIdempotentExecutor, Redis store)
 * behind a proxy that loses responses. Charges are counted in the fake processor's own ledger,
 * which does not deduplicate.
 */
import { randomUUID } from 'node:crypto';
import { recordKeyFor } from '@exactly-once/core';
import { createRedisStore, type RedisProcessedStore } from '@exactly-once/store-redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PaymentApi, startPaymentApi } from '../../examples/scenarios/s1-payment-api/api.js';
import {
  type CardProcessor,
  createCardProcessor,
} from '../../examples/scenarios/s1-payment-api/card-processor.js';
import { payWithRetry, postPayment } from '../../examples/scenarios/s1-payment-api/client.js';
import { type LossyProxy, startLossyProxy } from '../../examples/scenarios/s1-payment-api/lossy-proxy.js';
import { uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { dropPrefix, newRedis } from './support-payments-redis.js';

const redis = newRedis();
const keyPrefix = uniqueName('s1');
let processor: CardProcessor;
let api: PaymentApi;
let proxy: LossyProxy;
let store: RedisProcessedStore;

beforeAll(async () => {
  store = createRedisStore({ client: redis, keyPrefix });
  await store.checkServer();
  processor = createCardProcessor();
  api = await startPaymentApi({ store, processor });
  proxy = await startLossyProxy(api.url);
});
afterAll(async () => {
  await proxy?.close();
  await api?.close();
  await dropPrefix(redis, keyPrefix);
  await redis.quit();
});

const body = (customerId: string, amountCents = 10_000) => ({ customerId, amountCents, currency: 'USD' });
const chargesOf = (customerId: string) => processor.ledger.filter((c) => c.customerId === customerId);

describe('S1 payment API retried after a lost response', () => {
  it('charges once when the response is lost and the client retries with the same key', async () => {
    proxy.dropNextResponses(1);
    const key = randomUUID();
    const { answer, attempts } = await payWithRetry(proxy.url, key, body('cus_lost'));
    expect(attempts).toEqual(['lost', 201]);
    expect(proxy.dropped).toBe(1);
    const charges = chargesOf('cus_lost');
    expect(charges).toHaveLength(1);
    // The retry got the first run's answer: the transaction the processor really made.
    expect(answer.headers['idempotent-replayed']).toBe('true');
    expect(answer.body).toMatchObject({ transactionId: charges[0]?.transactionId, status: 'succeeded' });
    // And so does any later caller with that key.
    const again = await postPayment(api.url, key, body('cus_lost'));
    expect(again.status).toBe(201);
    expect(again.body).toEqual(answer.body);
    expect(chargesOf('cus_lost')).toHaveLength(1);
  });

  it('charges 100 payments 100 times when each first response is lost', async () => {
    const n = 100;
    const before = processor.ledger.length;
    const droppedBefore = proxy.dropped;
    proxy.dropNextResponses(n);
    const outcomes = await Promise.all(
      Array.from({ length: n }, (_, i) => payWithRetry(proxy.url, randomUUID(), body(`cus_batch_${i}`))),
    );
    expect(proxy.dropped - droppedBefore).toBe(n);
    expect(outcomes.every((o) => o.answer.status === 201)).toBe(true);
    expect(outcomes.filter((o) => o.answer.headers['idempotent-replayed'] === 'true')).toHaveLength(n);
    const made = processor.ledger.slice(before);
    expect(made).toHaveLength(n);
    expect(new Set(made.map((c) => c.customerId)).size).toBe(n);
    // Every answer names the one transaction the processor made for that customer.
    for (const [i, o] of outcomes.entries()) {
      expect((o.answer.body as { transactionId: string }).transactionId).toBe(
        chargesOf(`cus_batch_${i}`)[0]?.transactionId,
      );
    }
  });

  it('answers 409 to a duplicate while the first request runs, then the first answer', async () => {
    const key = randomUUID();
    const release = processor.hold();
    const first = postPayment(api.url, key, body('cus_busy'));
    await waitUntil(() => chargesOf('cus_busy').length === 1, { message: 'the first charge' });
    const duplicate = await postPayment(api.url, key, body('cus_busy'));
    expect(duplicate.status).toBe(409);
    expect(Number(duplicate.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    release();
    const done = await first;
    expect(done.status).toBe(201);
    expect(done.headers['idempotent-replayed']).toBeUndefined();
    const retried = await postPayment(api.url, key, body('cus_busy'));
    expect(retried.status).toBe(201);
    expect(retried.headers['idempotent-replayed']).toBe('true');
    expect(retried.body).toEqual(done.body);
    expect(chargesOf('cus_busy')).toHaveLength(1);
  });

  it('takes the key header as UTF-8 and refuses one that is not (400, nothing charged)', async () => {
    // node hands header bytes over as latin1 text: this is how UTF-8 bytes reach the server.
    const key = `ключ-${randomUUID()}`;
    const onTheWire = Buffer.from(key, 'utf8').toString('latin1');
    expect((await postPayment(api.url, onTheWire, body('cus_utf8'))).status).toBe(201);
    expect((await store.get(recordKeyFor({ consumer: 'payments-api', key })))?.state).toBe('COMPLETED');
    const again = await postPayment(api.url, onTheWire, body('cus_utf8'));
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(chargesOf('cus_utf8')).toHaveLength(1);

    // Byte 0xFF is no UTF-8: refused, where taken as latin1 it was a key like any other.
    const refused = await postPayment(api.url, `card-${randomUUID()}-\u00ff`, body('cus_not_utf8'));
    expect(refused.status).toBe(400);
    expect(chargesOf('cus_not_utf8')).toHaveLength(0);
  });

  it('refuses the same key with another body (422) and charges nothing', async () => {
    const key = randomUUID();
    expect((await postPayment(api.url, key, body('cus_reuse'))).status).toBe(201);
    const other = await postPayment(api.url, key, body('cus_reuse', 99_900));
    expect(other.status).toBe(422);
    expect(chargesOf('cus_reuse')).toHaveLength(1);
    expect(chargesOf('cus_reuse')[0]?.amountCents).toBe(10_000);
  });
});
