/**
 * A fake payment provider whose database is Redis, so that worker processes that are killed and
 * the test that counts share one ledger. It behaves like the worst case of S3:
 *
 * - it does **not** deduplicate by idempotency key (a processor without idempotency, or whose
 *   key window has passed): every `charge` call charges. The key is stored with the charge, and
 *   charges can be looked up by it;
 * - its answer to `charge` is sealed (encrypted with the provider's key): the caller cannot read
 *   the transaction id from it;
 * - `loseResponses(n)`: the next n charges are made and recorded, then the call fails with a
 *   timeout, as when the answer is lost on the network;
 * - `stall(customerId)`: that customer's charges hang (until `unstall`), to leave work pending.
 */
import { createCipheriv, randomBytes, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface ChargeRequest {
  idempotencyKey: string;
  customerId: string;
  amountCents: number;
}

/** What the lookup API answers: plain metadata, readable without the provider's key. */
export interface ProviderCharge {
  id: string;
  idempotencyKey: string;
  customerId: string;
  amountCents: number;
  status: 'succeeded';
  createdAt: number;
}

export class ProviderTimeoutError extends Error {
  override name = 'ProviderTimeoutError';
}

export interface Provider {
  /** Charges and answers `{ sealed }`, an encrypted receipt only the provider can read. */
  charge(request: ChargeRequest, signal?: AbortSignal): Promise<{ sealed: string }>;
  /** The charge made under this idempotency key, if any (the first one). */
  findByIdempotencyKey(key: string): Promise<ProviderCharge | undefined>;
  /** Every charge made, oldest first: the provider's statement, never deduplicated. */
  listCharges(): Promise<ProviderCharge[]>;
  loseResponses(n: number): Promise<void>;
  stall(customerId: string): Promise<void>;
  unstall(customerId: string): Promise<void>;
}

/** Takes one from a counter if it is above 0: 1 if it did. */
const TAKE_ONE = `if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) return 1 end return 0`;

/** `name` prefixes the provider's Redis keys. */
export function createProvider(redis: Redis, name: string): Provider {
  const k = {
    charges: `${name}:charges`,
    byKey: `${name}:by-key`,
    lose: `${name}:lose`,
    stalled: `${name}:stalled`,
  };
  const secret = randomBytes(32); // never leaves the provider
  const seal = (charge: ProviderCharge) => {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', secret, iv);
    const data = Buffer.concat([cipher.update(JSON.stringify(charge)), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), data]).toString('base64');
  };
  return {
    async charge(request, signal) {
      while (await redis.sismember(k.stalled, request.customerId)) {
        signal?.throwIfAborted();
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 5)); // the card network
      const charge: ProviderCharge = {
        id: `ch_${randomUUID().replace(/-/g, '').slice(0, 16)}`,
        ...request,
        status: 'succeeded',
        createdAt: Date.now(),
      };
      const json = JSON.stringify(charge);
      // One transaction: the charge and its lookup entry exist together.
      await redis.multi().rpush(k.charges, json).hsetnx(k.byKey, request.idempotencyKey, json).exec();
      if ((await redis.eval(TAKE_ONE, 1, k.lose)) === 1) {
        throw new ProviderTimeoutError('no answer from the provider');
      }
      return { sealed: seal(charge) };
    },
    async findByIdempotencyKey(key) {
      const json = await redis.hget(k.byKey, key);
      return json === null ? undefined : (JSON.parse(json) as ProviderCharge);
    },
    async listCharges() {
      return (await redis.lrange(k.charges, 0, -1)).map((j) => JSON.parse(j) as ProviderCharge);
    },
    async loseResponses(n) {
      await redis.set(k.lose, n);
    },
    async stall(customerId) {
      await redis.sadd(k.stalled, customerId);
    },
    async unstall(customerId) {
      await redis.srem(k.stalled, customerId);
    },
  };
}
