/**
 * AWS Powertools idempotency as a competitor: `makeIdempotent` over its cache persistence layer
 * (`@redis/client`, same Redis server, the bench's DB), wrapping the same trivial handler the
 * raw consumers run. It runs outside Lambda: the wrapped function is handler-shaped
 * (`(event, context)`) and gets a fake context whose `getRemainingTimeInMillis` bounds the
 * in-progress lock, as a Lambda's would; without one, Powertools warns on every call and never
 * lets an in-progress record expire.
 *
 * For parity with the SDK, the key is the message's idempotency key (`eventKeyJmesPath: 'key'`),
 * the payload is validated against the stored hash (the SDK's fingerprint check), and records are
 * kept for the SDK's default retention of 7 days.
 */
import { IdempotencyConfig, makeIdempotent } from '@aws-lambda-powertools/idempotency';
import { CachePersistenceLayer } from '@aws-lambda-powertools/idempotency/cache';
import { createClient } from '@redis/client';
import type { Redis } from 'ioredis';
import { env, uniqueName } from './env.js';
import { deleteByPrefix } from './stores.js';
import type { Order } from './workload.js';

export interface PowertoolsEvent {
  readonly key: string;
  readonly payload: Order;
}

export interface Powertools {
  /** The idempotent handler; resolves with the handler's (or the stored) result. */
  handle(event: PowertoolsEvent): Promise<unknown>;
  /** Redis commands the persistence layer sent, by command. */
  readonly calls: { get: number; set: number; del: number };
  /** Prefix of every key it writes. */
  readonly prefix: string;
  total(): number;
  cleanup(): Promise<void>;
}

/** What a Lambda context would offer; Powertools reads only `getRemainingTimeInMillis`. */
const fakeContext = {
  functionName: 'exactly-once-bench',
  functionVersion: '$LATEST',
  invokedFunctionArn: 'arn:aws:lambda:local:0:function:exactly-once-bench',
  memoryLimitInMB: '1024',
  awsRequestId: 'bench',
  logGroupName: 'bench',
  logStreamName: 'bench',
  callbackWaitsForEmptyEventLoop: false,
  getRemainingTimeInMillis: () => 30_000,
  done() {},
  fail() {},
  succeed() {},
};

const newClient = () => createClient({ url: env.redisUrl, database: env.redisDb });
type RedisClient = ReturnType<typeof newClient>;

/** One `@redis/client` connection per run, shared by every Powertools variant. */
export class PowertoolsKit {
  private client: RedisClient | undefined;

  private async connect(): Promise<RedisClient> {
    if (this.client) return this.client;
    const client = newClient();
    client.on('error', () => {}); // reported through the failing command instead
    await client.connect();
    this.client = client;
    return client;
  }

  async make<R>(handler: (payload: Order) => Promise<R>, cleaner: Redis): Promise<Powertools> {
    const client = await this.connect();
    const calls = { get: 0, set: 0, del: 0 };
    // The persistence layer needs only get/set/del; counting them here is exact per client.
    const counting = {
      get(name: string) {
        calls.get++;
        return client.get(name);
      },
      set(name: string | Uint8Array, value: unknown, options?: unknown) {
        calls.set++;
        return client.set(name as string, value as string, options as Parameters<RedisClient['set']>[2]);
      },
      del(keys: string[]) {
        calls.del++;
        return client.del(keys);
      },
    };
    const persistenceStore = new CachePersistenceLayer({ client: counting });
    const keyPrefix = uniqueName('pt');
    const config = new IdempotencyConfig({
      eventKeyJmesPath: 'key',
      payloadValidationJmesPath: 'payload',
      expiresAfterSeconds: 7 * 86_400,
    });
    const idempotent = makeIdempotent(
      async (event: PowertoolsEvent, _context: typeof fakeContext) => handler(event.payload),
      { persistenceStore, config, keyPrefix },
    );
    return {
      handle: (event) => idempotent(event, fakeContext),
      calls,
      prefix: `${keyPrefix}#`,
      total: () => calls.get + calls.set + calls.del,
      // Records are `<keyPrefix>#<hash>` (plus `:lock` for orphan takeovers).
      cleanup: async () => {
        await deleteByPrefix(cleaner, `${keyPrefix}#`);
      },
    };
  }

  async close(): Promise<void> {
    await this.client?.close();
  }
}
