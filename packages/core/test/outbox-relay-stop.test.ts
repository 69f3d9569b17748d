/**
 * The relay's stop() racing a round in flight, and start() racing stop().
 */
import { describe, expect, it } from 'vitest';
import { ClosedError } from '../src/errors.js';
import { createOutboxRelay, type OutboxEntry, type OutboxSource } from '../src/outbox/relay.js';
import type { OutgoingMessage } from '../src/store/types.js';

const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function source(n: number) {
  const pending = new Map<string, OutboxEntry>();
  const marked: string[] = [];
  let next = 0;
  let open = 0;
  const add = (k: number) => {
    for (let i = 0; i < k; i++, next++) {
      const id = `e${next}`;
      const messages: OutgoingMessage[] = [
        { id: `${id}/0`, destination: 'events', body: new Uint8Array([1]), headers: {} },
      ];
      pending.set(id, { id, messages });
    }
  };
  add(n);
  const s: OutboxSource = {
    async *scan() {
      open++;
      try {
        for (const e of [...pending.values()]) yield e;
      } finally {
        open--;
      }
    },
    async markPublished(ids) {
      for (const id of ids) if (pending.delete(id)) marked.push(id);
    },
    countPending: async () => pending.size,
  };
  return { s, pending, marked, add, open: () => open };
}

function gatedPublisher() {
  const calls: { ids: string[]; at: number; settle: (ok: boolean) => void }[] = [];
  const confirmed = new Set<string>();
  return {
    calls,
    confirmed,
    publish(messages: readonly OutgoingMessage[]) {
      return new Promise<void>((resolve, reject) => {
        const ids = messages.map((m) => m.id.split('/')[0] as string);
        calls.push({
          ids,
          at: performance.now(),
          settle: (ok) => {
            if (ok) {
              for (const id of ids) confirmed.add(id);
              resolve();
            } else reject(new Error('nacked'));
          },
        });
      });
    },
  };
}

describe('outbox relay stop() during a round, start() during a stop', () => {
  for (const ok of [true, false]) {
    it(`a round ${ok ? 'confirmed' : 'refused'} after stop() was called: stop waits for it, nothing is published after stop returned, only confirmed entries are marked`, async () => {
      const src = source(10);
      const pub = gatedPublisher();
      const relay = createOutboxRelay({
        source: src.s,
        publisher: pub,
        window: { initial: 4, min: 1, max: 4 },
        logger: quiet,
      });
      relay.start();
      for (let i = 0; i < 100 && pub.calls.length === 0; i++) await sleep(5);
      expect(pub.calls).toHaveLength(1);
      let stoppedAt = 0;
      const stopping = relay.stop().then(() => {
        stoppedAt = performance.now();
      });
      await sleep(50);
      expect(stoppedAt).toBe(0); // waits for the round in flight
      pub.calls[0]?.settle(ok);
      await stopping;
      const callsAtStop = pub.calls.length;
      await sleep(500);
      expect(pub.calls.length).toBe(callsAtStop);
      expect(pub.calls.every((c) => c.at < stoppedAt)).toBe(true);
      for (const id of src.marked) expect(pub.confirmed.has(id)).toBe(true);
      expect(src.marked.length).toBe(ok ? 4 : 0);
      expect(src.open()).toBe(0); // the scan was closed
    });
  }

  it('start() called right after stop() (not awaited): the relay runs again', async () => {
    const src = source(0);
    const pub = gatedPublisher();
    const relay = createOutboxRelay({ source: src.s, publisher: pub, idleDelayMs: 10, logger: quiet });
    relay.start();
    await sleep(50);
    const stopping = relay.stop();
    relay.start();
    await stopping;
    src.add(1);
    for (let i = 0; i < 100 && pub.calls.length === 0; i++) await sleep(10);
    const published = pub.calls.length;
    pub.calls[0]?.settle(true);
    await relay.stop();
    expect(published).toBe(1);
  });

  it('a waiter on drained() when stop() cuts the first pass short is rejected, not resolved with entries pending', async () => {
    // Prepare: one pending entry whose page takes a while to read.
    const entry: OutboxEntry = {
      id: 'e0',
      messages: [{ id: 'e0/0', destination: 'events', body: new Uint8Array([1]), headers: {} }],
    };
    const published: string[] = [];
    let pending = 1;
    const source: OutboxSource = {
      async *scan() {
        await sleep(150);
        if (pending > 0) yield entry;
      },
      async markPublished() {
        pending = 0;
      },
      countPending: async () => pending,
    };
    const relay = createOutboxRelay({
      source,
      publisher: {
        async publish(messages: readonly OutgoingMessage[]) {
          published.push(...messages.map((m) => m.id));
        },
      },
      idleDelayMs: 10,
      logger: quiet,
    });
    relay.start();
    const drained = relay.drained().then(
      () => 'resolved' as const,
      (error: unknown) => (error instanceof ClosedError ? ('closed' as const) : ('other' as const)),
    );

    // Act: stopped while the first pass reads its page.
    await sleep(30);
    await relay.stop();

    // Assert
    expect(published).toEqual([]);
    expect(pending).toBe(1);
    expect(await drained).toBe('closed');
  });
});
