/**
 * Two workers, one key: a copy reaches worker B while worker A, which completed the key, is still
 * publishing its outgoing messages (a client's retry sent twice at once). B waits once for A
 * instead of publishing beside it, so the messages go out once; if A never marks them published
 * (it died), B publishes them after that wait.
 */
import { describe, expect, it } from 'vitest';
import { createProcessor } from '../src/processor.js';
import type { OutgoingPublisher } from '../src/spi.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { OutgoingMessage, ProcessedStore } from '../src/store/types.js';
import { deferred, delivery } from './helpers.js';

/** A worker on `store` whose handler publishes one message per order through `publisher`. */
function worker(store: ProcessedStore, publisher: OutgoingPublisher) {
  return createProcessor<{ order: string }>({
    consumer: 'billing',
    store,
    publisher,
    retentionCheck: 'off',
    handler: ({ order }, ctx) => {
      ctx.publish('charged', { order });
    },
  });
}

const copy = () => delivery({ order: 'o-1' }, { 'x-idempotency-key': 'o-1' });

describe('a copy that finds its key completed by another worker still publishing', () => {
  it('waits once for that worker: the message goes out once', async () => {
    const store = createMemoryStore();
    const sent: OutgoingMessage[] = [];
    const aMayConfirm = deferred();
    const aPublishing = deferred();
    const a = worker(store, {
      async publish(messages) {
        aPublishing.resolve();
        await aMayConfirm.promise;
        sent.push(...messages);
      },
    });
    const b = worker(store, {
      async publish(messages) {
        sent.push(...messages);
      },
    });
    const first = a.process(copy());
    await aPublishing.promise;
    // Before, B published the message beside A here: two copies downstream.
    expect(await b.process(copy())).toMatchObject({ action: 'defer', outcome: 'busy', delayMs: 1_000 });
    aMayConfirm.resolve();
    expect(await first).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await b.process(copy())).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(sent).toHaveLength(1);
  });

  it('publishes after the wait when that worker never marked them published', async () => {
    const store = createMemoryStore();
    const sent: OutgoingMessage[] = [];
    const aPublishing = deferred();
    // A dies while publishing: its publish never returns.
    const a = worker(store, {
      publish: () => {
        aPublishing.resolve();
        return new Promise(() => {});
      },
    });
    const b = worker(store, {
      async publish(messages) {
        sent.push(...messages);
      },
    });
    void a.process(copy());
    await aPublishing.promise;
    expect(await b.process(copy())).toMatchObject({ action: 'defer', outcome: 'busy' });
    expect(await b.process(copy())).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(sent).toHaveLength(1);
    // Marked published by B: a later copy needs no publish and no wait.
    expect(await b.process(copy())).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(sent).toHaveLength(1);
  });
});
