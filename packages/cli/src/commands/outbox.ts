/**
 * `outbox pending --mongo <url> --collection <name>`: how many documents of a collection hold
 * outbox events the relay has not marked published (`createMongoOutboxSource`'s `countPending()`),
 * for an operator watching a backlog grow while a broker is down, or drain after it.
 */
import { UsageError } from '../errors.js';
import { type Io, printJson, printLines } from '../output.js';
import { openStore, type StoreOptions, storeError } from '../stores.js';

export interface OutboxPendingOptions extends StoreOptions {
  readonly collection: string;
  readonly json?: boolean;
}

export async function outboxPending(io: Io, options: OutboxPendingOptions): Promise<void> {
  if (!options.mongo || options.redis || options.redisCluster) {
    throw new UsageError(
      'outbox pending reads a MongoDB collection: give --mongo <url> (and no Redis store)',
    );
  }
  const opened = await openStore(options);
  try {
    const count = opened.outboxPending;
    if (count === undefined) throw new UsageError('outbox pending needs the --mongo store');
    const { pending, collection } = await count(options.collection).catch((error: unknown) => {
      throw storeError(error);
    });
    if (options.json) {
      printJson(io, { collection, pending });
      return;
    }
    printLines(io, [
      `${pending} documents of ${collection} with outbox events the relay has not marked published (not published yet, or published and waiting for their mark)`,
    ]);
  } finally {
    await opened.close();
  }
}
