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
import type { IdempotencyRecord } from '@aws-lambda-powertools/idempotency/persistence';
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

/**
 * The cache layer as fixed upstream (github.com/aws-powertools/powertools-lambda-typescript,
 * issue 5705: merged, not yet released in 2.35.0): its completion rewrote the record without the payload's validation
 * hash, so every redelivery of a completed record (a Kafka refetch of records already handled) failed
 * validation, and the raw consumer's loop fetched it again for ever. The fix keeps the hash in the
 * same one `SET`: no command is added, so the comparison stays as it was.
 */
class CompletingWithHash extends CachePersistenceLayer {
  constructor(
    private readonly store: { set(name: string, value: string, options: { EX: number }): unknown },
  ) {
    super({ client: store as ConstructorParameters<typeof CachePersistenceLayer>[0]['client'] });
  }

  protected override async _updateRecord(record: IdempotencyRecord): Promise<void> {
    const item = {
      status: record.getStatus(),
      expiration: record.expiryTimestamp,
      data: record.responseData,
      ...(record.payloadHash === undefined ? {} : { validation: record.payloadHash }),
    };
    const ttl =
      record.expiryTimestamp === undefined
        ? this.expiresAfterSeconds
        : record.expiryTimestamp - Math.floor(Date.now() / 1000);
    await this.store.set(record.idempotencyKey, JSON.stringify(item), { EX: ttl });
  }
}

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
    const persistenceStore = new CompletingWithHash(counting);
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
