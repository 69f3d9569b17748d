/**
 * The outbox relay over an in-memory source and a scripted publisher: order, the in-flight bound,
 * the adaptive window, retries without loss, background marking and the lag alert.
 */
import { describe, expect, it } from 'vitest';
import { ClosedError, ConfigError } from '../src/errors.js';
import { createOutboxRelay, type OutboxEntry, type OutboxSource } from '../src/outbox/relay.js';
import type { OutgoingMessage } from '../src/store/types.js';

function memorySource(entries: number, perEntry = 2) {
  const pending = new Map<string, OutboxEntry>();
  const add = (n: number) => {
    const start = pending.size + marked.size;
    for (let i = start; i < start + n; i++) {
      const id = `e${String(i).padStart(6, '0')}`;
      const messages: OutgoingMessage[] = Array.from({ length: perEntry }, (_, j) => ({
        id: `${id}/${j}`,
        destination: 'events',
        routingKey: id,
        body: new Uint8Array([j]),
        headers: {},
      }));
      pending.set(id, { id, messages });
    }
  };
  const marked = new Set<string>();
  let markFailures = 0;
  const source: OutboxSource & { add(n: number): void; failMarks(n: number): void } = {
    async *scan() {
      for (const entry of [...pending.values()]) yield entry;
    },
    async markPublished(ids) {
      if (markFailures > 0) {
        markFailures--;
        throw new Error('store unavailable');
      }
      for (const id of ids) {
        if (pending.delete(id)) marked.add(id);
      }
    },
    countPending: async () => pending.size,
    add,
    failMarks: (n) => {
      markFailures = n;
    },
  };
  add(entries);
  return { source, pending, marked };
}

function recordingPublisher(script: { failFirst?: number; delayMs?: number } = {}) {
  const sent: OutgoingMessage[] = [];
  const calls: number[] = [];
  let failures = script.failFirst ?? 0;
  return {
    sent,
    calls,
    async publish(messages: readonly OutgoingMessage[]) {
      calls.push(messages.length);
      if (script.delayMs) await new Promise((r) => setTimeout(r, script.delayMs));
      if (failures > 0) {
        failures--;
        // A broker that took half of the request before failing: those are published twice.
        sent.push(...messages.slice(0, Math.floor(messages.length / 2)));
        throw new Error('broker unavailable');
      }
      sent.push(...messages);
    },
  };
}

const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const fast = { idleDelayMs: 5, retry: { initialDelayMs: 1, maxDelayMs: 5 }, logger: quiet };

/** Each entry's messages appear in order, and every message appears. */
function expectAllInOrder(sent: readonly OutgoingMessage[], entries: number, perEntry: number) {
  const seen = new Map<string, number[]>();
  for (const m of sent) {
    const [entry, position] = m.id.split('/') as [string, string];
    const list = seen.get(entry) ?? [];
    seen.set(entry, list);
    list.push(Number(position));
  }
  expect(seen.size).toBe(entries);
  for (const positions of seen.values()) {
    // Re-sent rounds repeat a prefix; what matters is that no position comes before its predecessor's first send.
    const firsts = [...new Set(positions)];
    expect(firsts).toEqual(Array.from({ length: perEntry }, (_, i) => i));
  }
}

describe('outbox relay', () => {
  it('publishes every entry once, in order, in rounds never above the window, then marks them', async () => {
    // Prepare
    const { source, pending, marked } = memorySource(1_000, 3);
    const publisher = recordingPublisher();
    const relay = createOutboxRelay({ source, publisher, window: { initial: 32, max: 300 }, ...fast });
    // Act
    relay.start();
    await relay.drained();
    await relay.stop();
    // Assess
    expect(publisher.sent).toHaveLength(3_000);
    expect(new Set(publisher.sent.map((m) => m.id)).size).toBe(3_000);
    expectAllInOrder(publisher.sent, 1_000, 3);
    expect(Math.max(...publisher.calls)).toBeLessThanOrEqual(300);
    expect(relay.stats().maxInFlight).toBeLessThanOrEqual(300);
    expect(pending.size).toBe(0);
    expect(marked.size).toBe(1_000);
    // The window grew from 32 while rounds confirmed quickly.
    expect(relay.stats().window).toBeGreaterThan(32);
  });

  it('drained() of a stopped relay rejects with ClosedError, whether asked before or after stop()', async () => {
    // Before: it never settled, and a shutdown hook awaiting it hung.
    const { source } = memorySource(10, 1);
    const failing = { publish: async () => Promise.reject(new Error('broker down')) };
    const relay = createOutboxRelay({ source, publisher: failing, ...fast });
    relay.start();
    const waiting = relay.drained();
    await relay.stop();
    await expect(waiting).rejects.toBeInstanceOf(ClosedError);
    await expect(relay.drained()).rejects.toBeInstanceOf(ClosedError);
  });

  it('a broker that fails rounds: backs off, halves the window, loses nothing and keeps each entry in order', async () => {
    const { source, pending } = memorySource(400, 2);
    const publisher = recordingPublisher({ failFirst: 5 });
    const relay = createOutboxRelay({
      source,
      publisher,
      window: { initial: 128, min: 4, max: 128 },
      ...fast,
    });
    relay.start();
    await relay.drained();
    await relay.stop();
    expectAllInOrder(publisher.sent, 400, 2);
    expect(relay.stats().failures).toBe(5);
    expect(pending.size).toBe(0);
    // After the first failed round, the oldest entry goes alone until a round is confirmed; the
    // window halved at each failure (128 -> 4) and grows again from there.
    expect(publisher.calls.slice(0, 6)).toEqual([128, 2, 2, 2, 2, 2]);
    expect(relay.stats().window).toBeGreaterThan(4);
  });

  it('an entry the broker refuses is retried alone: the entries behind it are not sent again with it', async () => {
    // Before: every retry sent the whole round again, and the broker took the later entries each
    // time (126 copies of 15 entries in 40 s behind one 2 MB entry, `published` 0).
    const { source, pending } = memorySource(50, 1);
    const sent: string[] = [];
    let refusals = 8;
    const publisher = {
      async publish(messages: readonly OutgoingMessage[]) {
        // Like Kafka: every other message of the request is appended, the first is refused.
        sent.push(...messages.slice(1).map((m) => m.id));
        if (messages[0]?.id === 'e000000/0' && refusals-- > 0) throw new Error('MESSAGE_TOO_LARGE');
        sent.push(messages[0]?.id as string);
      },
    };
    const warned: Record<string, unknown>[] = [];
    const logger = { ...quiet, warn: (_: string, meta?: Record<string, unknown>) => warned.push(meta ?? {}) };
    const relay = createOutboxRelay({ source, publisher, window: { initial: 16, min: 1 }, ...fast, logger });
    relay.start();
    await relay.drained();
    await relay.stop();
    expect(pending.size).toBe(0);
    const copies = (id: string) => sent.filter((s) => s === id).length;
    // The first round carried the next 15 past it once; the eight retries carried nothing else.
    expect(copies('e000005/0')).toBe(2);
    expect(copies('e000020/0')).toBe(1);
    expect(copies('e000000/0')).toBe(1);
    // Each failure names the entry it held up on.
    expect(warned.slice(1).every((w) => w.entry === 'e000000' && w.entries === 1)).toBe(true);
  });

  it('a slow broker shrinks the window to its minimum', async () => {
    const { source } = memorySource(60, 1);
    const publisher = recordingPublisher({ delayMs: 20 });
    const relay = createOutboxRelay({
      source,
      publisher,
      window: { initial: 16, min: 2, max: 16 },
      targetRoundMs: 1,
      ...fast,
    });
    relay.start();
    await relay.drained();
    await relay.stop();
    expect(relay.stats().window).toBe(2);
    expect(publisher.sent).toHaveLength(60);
  });

  it('marking failures do not stop publishing nor publish twice; entries are marked once the source is back', async () => {
    const { source, pending } = memorySource(300, 1);
    source.failMarks(4);
    const publisher = recordingPublisher();
    const relay = createOutboxRelay({ source, publisher, markBatch: 50, ...fast });
    relay.start();
    await relay.drained();
    await relay.stop();
    expect(publisher.sent).toHaveLength(300);
    expect(new Set(publisher.sent.map((m) => m.id)).size).toBe(300);
    expect(pending.size).toBe(0);
  });

  it('alerts once while the lag is above the threshold, and says when it recovered', async () => {
    const { source } = memorySource(0);
    const publisher = recordingPublisher({ failFirst: Number.POSITIVE_INFINITY });
    const alerts: number[] = [];
    const recoveries: number[] = [];
    const relay = createOutboxRelay({
      source,
      publisher,
      ...fast,
      lagAlert: {
        threshold: 100,
        everyMs: 5,
        onAlert: (lag) => alerts.push(lag),
        onRecover: (lag) => recoveries.push(lag),
      },
    });
    relay.start();
    source.add(500);
    while (alerts.length === 0) await new Promise((r) => setTimeout(r, 5));
    expect(alerts).toEqual([500]);
    expect(relay.stats().lag).toBe(500);
    await relay.stop();
    // A healthy broker drains it; the alert clears.
    const healthy = createOutboxRelay({
      source,
      publisher: recordingPublisher(),
      ...fast,
      lagAlert: {
        threshold: 100,
        everyMs: 5,
        onAlert: (lag) => alerts.push(lag),
        onRecover: (lag) => recoveries.push(lag),
      },
    });
    healthy.start();
    await healthy.drained();
    while (recoveries.length === 0) await new Promise((r) => setTimeout(r, 5));
    await healthy.stop();
    expect(alerts).toEqual([500, 500]);
    expect(recoveries[0]).toBeLessThanOrEqual(100);
  });

  it('stopped while paused on maxUnmarked, publishes nothing more', async () => {
    const { source } = memorySource(50, 1);
    const publisher = recordingPublisher();
    // Marking never succeeds, so the unmarked ids pile up past maxUnmarked and publishing pauses.
    source.failMarks(Number.POSITIVE_INFINITY);
    const relay = createOutboxRelay({
      source,
      publisher,
      maxUnmarked: 3,
      window: { initial: 1, min: 1, max: 1 },
      ...fast,
    });
    relay.start();
    while (relay.stats().unmarked <= 3) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 100));
    const beforeStop = publisher.sent.length;
    await relay.stop();
    expect(publisher.sent).toHaveLength(beforeStop);
  });

  it.each([
    ['markBatch: 0', { markBatch: 0 }],
    ['markBatch: NaN', { markBatch: Number.NaN }],
    ['maxUnmarked: -1', { maxUnmarked: -1 }],
    ['window.initial: NaN', { window: { initial: Number.NaN } }],
    ['idleDelayMs: Infinity', { idleDelayMs: Number.POSITIVE_INFINITY }],
    ['lagAlert.everyMs: 0', { lagAlert: { threshold: 1, everyMs: 0, onAlert: () => {} } }],
  ])('refuses %s with a ConfigError (it marked nothing in a tight loop, or never published)', (_, extra) => {
    const { source } = memorySource(1);
    expect(() => createOutboxRelay({ source, publisher: recordingPublisher(), ...fast, ...extra })).toThrow(
      ConfigError,
    );
  });
});
