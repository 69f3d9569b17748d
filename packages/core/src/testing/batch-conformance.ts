/**
 * The batch half of the conformance kit: `beginMany`, `completeMany` and `markPublishedMany`
 * must answer exactly what the single operations would, one after another, in one call. A store
 * without them is checked through the same default core uses (the single operations).
 */
import { randomUUID } from 'node:crypto';
import { expect, it } from 'vitest';
import type { ErrorInfo } from '../errors.js';
import type {
  BeginRequest,
  BeginResult,
  CompleteRequest,
  FencedResult,
  MarkPublishedRequest,
  ProcessedStore,
} from '../store/types.js';

// Without batch forms: the single operations one after another, which is what a batch must equal.
async function inOrder<Q, A>(requests: Q[], one: (request: Q) => Promise<A>): Promise<A[]> {
  const answers: A[] = [];
  for (const request of requests) answers.push(await one(request));
  return answers;
}
const beginMany = (store: ProcessedStore, requests: BeginRequest[]): Promise<BeginResult[]> =>
  store.beginMany ? store.beginMany(requests) : inOrder(requests, (r) => store.begin(r));
const completeMany = (store: ProcessedStore, requests: CompleteRequest[]): Promise<FencedResult[]> =>
  store.completeMany ? store.completeMany(requests) : inOrder(requests, (r) => store.complete(r));
const markPublishedMany = async (store: ProcessedStore, requests: MarkPublishedRequest[]) => {
  if (store.markPublishedMany) await store.markPublishedMany(requests);
  else await Promise.all(requests.map((r) => store.markPublished(r.key, r.fence, r.ids)));
};

/** Declares the batch tests inside a conformance suite; `store` is read lazily. */
export function batchConformanceTests(store: () => ProcessedStore, leaseMs: number): void {
  const fatal: ErrorInfo = { name: 'PermanentError', code: 'PERMANENT', message: 'bad order' };
  const retentionMs = 600_000;
  const prefix = () => `eo-conformance-batch:${randomUUID()}:`;
  const request = (key: string, extra: Partial<BeginRequest> = {}): BeginRequest => ({
    key,
    fingerprint: 'fp-1',
    owner: 'worker-a',
    leaseMs,
    ...extra,
  });
  const message = (id: string) => ({ id, destination: 'out', body: Uint8Array.of(1), headers: {} });

  it('beginMany answers every status in one call, in request order, as sequential begins would', async () => {
    const p = prefix();
    const [done, failed, busy, other] = [`${p}done`, `${p}failed`, `${p}busy`, `${p}other`];
    // The busy key's lease outlasts the set-up's writes on a slow server (300 ms did not, on
    // FerretDB under load: it was taken over instead of busy).
    const busyLeaseMs = 60_000;
    const setup = await beginMany(store(), [
      request(done),
      request(failed),
      request(busy, { leaseMs: busyLeaseMs }),
      request(other),
    ]);
    const fence = (i: number) => (setup[i] as Extract<BeginResult, { status: 'acquired' }>).fence;
    expect(setup.map((r) => r.status)).toEqual(['acquired', 'acquired', 'acquired', 'acquired']);
    expect(await store().complete({ key: done, fence: fence(0), outgoing: [], retentionMs })).toBe('ok');
    expect(await store().fail(failed, fence(1), fatal, retentionMs)).toBe('ok');
    expect(await store().complete({ key: other, fence: fence(3), outgoing: [], retentionMs })).toBe('ok');

    const answers = await beginMany(store(), [
      request(`${p}new`),
      request(done),
      request(failed),
      request(busy, { owner: 'worker-b' }),
      request(other, { fingerprint: 'fp-2' }),
      request(`${p}twice`),
      request(`${p}twice`, { owner: 'worker-b' }),
    ]);
    expect(answers.map((r) => r.status)).toEqual([
      'acquired',
      'duplicate',
      'failed',
      'busy',
      'mismatch',
      'acquired',
      'busy',
    ]);
    expect(answers[0]).toMatchObject({ kind: 'new', attempt: 1, steps: {} });
    expect(answers[1]).toMatchObject({ record: { state: 'COMPLETED', fence: fence(0) } });
    expect(answers[2]).toMatchObject({ record: { state: 'FAILED', error: fatal } });
    const wait = (answers[3] as Extract<BeginResult, { status: 'busy' }>).retryAfterMs;
    expect(wait > 0 && wait <= busyLeaseMs).toBe(true);
    expect(answers[4]).toMatchObject({ record: { state: 'COMPLETED', fingerprint: 'fp-1' } });
  });

  it('completeMany completes each held key and answers lost for the stale ones', async () => {
    const p = prefix();
    const keys = [`${p}a`, `${p}b`, `${p}c`];
    const begun = (await beginMany(
      store(),
      keys.map((k) => request(k)),
    )) as Extract<BeginResult, { status: 'acquired' }>[];
    const answers = await completeMany(store(), [
      { key: keys[0] as string, fence: begun[0]?.fence as number, outgoing: [message('m0')], retentionMs },
      { key: keys[1] as string, fence: (begun[1]?.fence as number) - 1, outgoing: [], retentionMs },
      {
        key: keys[2] as string,
        fence: begun[2]?.fence as number,
        outgoing: [],
        retentionMs,
        result: { kind: 'inline', data: Uint8Array.of(7) },
      },
      { key: `${p}absent`, fence: 1, outgoing: [], retentionMs },
    ]);
    expect(answers).toEqual(['ok', 'lost', 'ok', 'lost']);
    // Asked again (the first answer lost): the completed keys answer ok, nothing is rewritten.
    const completedC = await store().get(keys[2] as string);
    expect(
      await completeMany(store(), [
        { key: keys[2] as string, fence: begun[2]?.fence as number, outgoing: [], retentionMs },
        { key: keys[1] as string, fence: (begun[1]?.fence as number) - 1, outgoing: [], retentionMs },
      ]),
    ).toEqual(['ok', 'lost']);
    expect(await store().get(keys[2] as string)).toEqual(completedC);
    expect(await store().get(keys[1] as string)).toMatchObject({ state: 'IN_PROGRESS' });
    expect(await store().get(keys[2] as string)).toMatchObject({
      state: 'COMPLETED',
      result: { kind: 'inline', data: Uint8Array.of(7) },
    });

    await markPublishedMany(store(), [
      { key: keys[0] as string, fence: begun[0]?.fence as number, ids: ['m0'] },
      { key: keys[2] as string, fence: begun[2]?.fence as number, ids: ['none'] },
      { key: `${p}absent`, fence: 1, ids: ['m0'] },
    ]);
    expect(await store().get(keys[0] as string)).toMatchObject({ outgoing: [{ id: 'm0', published: true }] });
  });

  it('a batch of 300 new keys is acquired, completed and marked published in one call each; a second batch of the same keys is all duplicates', async () => {
    const p = prefix();
    // A store without batch forms is checked through its single operations, one after another:
    // 100 of them prove what 300 would (on a tiered store over FerretDB, 300 took over a minute
    // on a loaded machine).
    const count = store().beginMany ? 300 : 100;
    const keys = Array.from({ length: count }, (_, i) => `${p}${i}`);
    const first = (await beginMany(
      store(),
      keys.map((k) => request(k)),
    )) as Extract<BeginResult, { status: 'acquired' }>[];
    expect(first.every((r) => r.status === 'acquired' && r.kind === 'new')).toBe(true);
    const fence = (i: number) => first[i]?.fence as number;
    const done = await completeMany(
      store(),
      keys.map((key, i) => ({ key, fence: fence(i), outgoing: [message(`m${i}`)], retentionMs })),
    );
    expect(done.every((r) => r === 'ok')).toBe(true);
    await markPublishedMany(
      store(),
      keys.map((key, i) => ({ key, fence: fence(i), ids: [`m${i}`] })),
    );
    for (const i of [0, 99, 100, 299].filter((at) => at < count)) {
      expect(await store().get(keys[i] as string)).toMatchObject({
        outgoing: [{ id: `m${i}`, published: true }],
      });
    }
    const again = await beginMany(
      store(),
      keys.map((k) => request(k)),
    );
    expect(again.every((r) => r.status === 'duplicate')).toBe(true);
  });
}
