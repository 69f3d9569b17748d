import { describeStoreConformance } from '@exactly-once/core/testing';
import { describe, expect, it } from 'vitest';
import { StoreUnavailableError } from '../src/errors.js';
import { type StoreOperation, withFaults } from '../src/store/faulty-store.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import type { BeginRequest, BeginResult, ProcessedStore } from '../src/store/types.js';

describeStoreConformance('memory', () => ({ store: createMemoryStore() }));

const boom = { name: 'Error', code: 'ERROR', message: 'boom' };

function clocked(start = 1_000_000) {
  const clock = { now: start };
  const store = createMemoryStore({ now: () => clock.now });
  return { clock, store };
}

const request = (key: string, extra: Partial<BeginRequest> = {}): BeginRequest => ({
  key,
  fingerprint: 'fp',
  owner: 'w1',
  leaseMs: 1000,
  ...extra,
});

async function acquire(store: ProcessedStore, key: string, extra: Partial<BeginRequest> = {}) {
  const result = await store.begin(request(key, extra));
  if (result.status !== 'acquired') throw new Error(`expected acquired, got ${result.status}`);
  return result;
}

describe('memory store with an injected clock', () => {
  it('a lease is busy until its last millisecond and taken over exactly when it ends', async () => {
    const { clock, store } = clocked();
    const first = await acquire(store, 'k');
    expect(first.leaseUntil).toBe(clock.now + 1000);
    clock.now += 999;
    const busy = await store.begin(request('k', { owner: 'w2' }));
    expect(busy).toMatchObject({ status: 'busy', retryAfterMs: 1 });
    clock.now += 1;
    const second = await acquire(store, 'k', { owner: 'w2', traceId: 't2' });
    expect(second).toMatchObject({
      kind: 'takeover',
      fence: first.fence + 1,
      attempt: 2,
      leaseUntil: clock.now + 1000,
    });
    expect(await store.get('k')).toMatchObject({ owner: 'w2', traceId: 't2' });
  });

  it('a holder whose lease passed may still complete while nobody has taken over', async () => {
    const { clock, store } = clocked();
    const first = await acquire(store, 'k');
    clock.now += 5000;
    expect(await store.extend('k', first.fence, 1000)).toBe('ok');
    expect(await store.complete({ key: 'k', fence: first.fence, outgoing: [], retentionMs: 10 })).toBe('ok');
  });

  it('retention ends exactly at expiresAt, and the next begin continues the fence', async () => {
    const { clock, store } = clocked();
    const first = await acquire(store, 'k');
    await store.complete({ key: 'k', fence: first.fence, outgoing: [], retentionMs: 500 });
    clock.now += 499;
    expect((await store.begin(request('k'))).status).toBe('duplicate');
    clock.now += 1;
    expect(await store.get('k')).toBeUndefined();
    const renewed = await acquire(store, 'k', { fingerprint: 'other' });
    expect(renewed).toMatchObject({ kind: 'new', attempt: 1 });
    // A new record's fence starts at store time, above every fence the key had before.
    expect(renewed.fence).toBe(clock.now);
    expect(renewed.fence).toBeGreaterThan(first.fence);
    // The expired record stays so its fence survives; a stale holder stays fenced out.
    expect(store.size()).toBe(1);
    expect(await store.complete({ key: 'k', fence: first.fence, outgoing: [], retentionMs: 500 })).toBe(
      'lost',
    );
  });

  it('markPublished does nothing to an expired record', async () => {
    const { clock, store } = clocked();
    const first = await acquire(store, 'k');
    const outgoing = [{ id: 'm', destination: 'd', body: new Uint8Array([1]), headers: {} }];
    await store.complete({ key: 'k', fence: first.fence, outgoing, retentionMs: 10 });
    clock.now += 10;
    await store.markPublished('k', first.fence, ['m']);
    clock.now -= 10;
    expect(await store.get('k')).toMatchObject({ outgoing: [{ id: 'm', published: false }] });
  });

  it('lastError and steps carry over from a released attempt to a takeover', async () => {
    const { clock, store } = clocked();
    const first = await acquire(store, 'k');
    await store.saveStep('k', first.fence, 'a', new Uint8Array([1]));
    await store.release('k', first.fence, boom);
    const second = await acquire(store, 'k');
    expect(second).toMatchObject({ kind: 'retry', fence: first.fence + 1, attempt: 2 });
    clock.now += 1000;
    const third = await acquire(store, 'k');
    expect(third).toMatchObject({ kind: 'takeover', fence: first.fence + 2, attempt: 3 });
    expect(Array.from(third.steps.a?.result ?? [])).toEqual([1]);
    expect(await store.get('k')).toMatchObject({ lastError: boom });
  });

  it('a step named __proto__ is an ordinary step', async () => {
    const { store } = clocked();
    const first = await acquire(store, 'k');
    await store.saveStep('k', first.fence, '__proto__', new Uint8Array([5]));
    await store.release('k', first.fence, boom);
    const second = await acquire(store, 'k');
    expect(Object.keys(second.steps)).toEqual(['__proto__']);
    expect(Object.getPrototypeOf(second.steps)).toBe(Object.prototype);
  });

  it('results handed out are copies: mutating them leaves the store intact', async () => {
    const { store } = clocked();
    const first = await acquire(store, 'k');
    await store.saveStep('k', first.fence, 's', new Uint8Array([1]));
    const record = await store.get('k');
    if (record?.state !== 'IN_PROGRESS') throw new Error('expected IN_PROGRESS');
    (record.steps.s?.result as Uint8Array)[0] = 9;
    const again = await store.get('k');
    expect(again?.state === 'IN_PROGRESS' && Array.from(again.steps.s?.result ?? [])).toEqual([1]);
  });

  it('size counts keys', async () => {
    const { store } = clocked();
    expect(store.size()).toBe(0);
    await acquire(store, 'a');
    await acquire(store, 'b');
    await store.begin(request('a'));
    expect(store.size()).toBe(2);
  });
});

describe('withFaults', () => {
  it('fails chosen operations with StoreUnavailableError before they reach the store', async () => {
    const inner = createMemoryStore();
    const seen: [StoreOperation, string][] = [];
    let down = false;
    const store = withFaults(inner, {
      failWhen: (op, key) => {
        seen.push([op, key]);
        return down && op === 'begin';
      },
    });
    down = true;
    const error = await store.begin(request('k')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreUnavailableError);
    expect(error).toMatchObject({ operation: 'begin', retryable: true });
    expect(inner.size()).toBe(0);
    expect(await store.get('k')).toBeUndefined();
    down = false;
    expect((await store.begin(request('k'))).status).toBe('acquired');
    expect(seen).toEqual([
      ['begin', 'k'],
      ['get', 'k'],
      ['begin', 'k'],
    ]);
  });

  it('loseReplyWhen applies the operation, then throws as if the reply was lost', async () => {
    const inner = createMemoryStore();
    const store = withFaults(inner, { failWhen: () => false, loseReplyWhen: (op) => op === 'begin' });
    await expect(store.begin(request('k'))).rejects.toBeInstanceOf(StoreUnavailableError);
    const retried: BeginResult = await inner.begin(request('k'));
    expect(retried.status).toBe('busy');
  });

  it('passes every operation through when no fault is chosen', async () => {
    const inner = createMemoryStore();
    const store = withFaults(inner, { failWhen: () => false });
    const first = await acquire(store, 'k');
    expect(await store.extend('k', first.fence, 1000)).toBe('ok');
    expect(await store.saveStep('k', first.fence, 's', new Uint8Array([1]))).toBe('ok');
    expect(await store.release('k', first.fence, boom)).toBe('ok');
    const second = await acquire(store, 'k');
    const outgoing = [{ id: 'm', destination: 'd', body: new Uint8Array([1]), headers: {} }];
    expect(await store.complete({ key: 'k', fence: second.fence, outgoing, retentionMs: 60_000 })).toBe('ok');
    await store.markPublished('k', second.fence, ['m']);
    expect(await store.get('k')).toMatchObject({ state: 'COMPLETED', outgoing: [{ published: true }] });
    const third = await acquire(store, 'j');
    expect(await store.fail('j', third.fence, boom, 60_000)).toBe('ok');
    expect(store.close).toBeUndefined();
  });
});
