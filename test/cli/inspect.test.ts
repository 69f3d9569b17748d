/**
 * `exactly-once inspect` against the real stores: a COMPLETED record (inline result, blob result,
 * outgoing messages published or not), an IN_PROGRESS one (lease, steps done and in doubt) and a
 * FAILED one, as JSON and as text; unknown keys, bad URLs and usage errors by exit code.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createFsBlobStore,
  createMemoryStore,
  createProcessor,
  Headers,
  PermanentError,
  recordKeyFor,
  toErrorInfo,
} from '@exactly-once/core';
import { redisKeyFor } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { dropRedisPrefix } from '../support/redis.js';
import { cli, cliJson, cliText } from './helpers.js';
import { type TestStore, testStores } from './stores.js';

const utf8 = (s: string) => new TextEncoder().encode(s);
/** The characters of `text` a terminal would obey rather than show. */
const obeyed = (text: string) => [...text].filter((c) => ['\u001b', '\u0007', '\u202e'].includes(c));
const NUL_KEY = 'nul-\u0000-key';
const HOSTILE = 'esc-\u001b[2J\u001b]0;PWNED\u0007\u202etxt\nforged line';

/** What `ctx.keyFor(name)` gives a handler of `consumer` running the message with `key`. */
async function handlerKeyFor(consumer: string, key: string, name: string): Promise<string> {
  let seen = '';
  const processor = createProcessor({
    consumer,
    store: createMemoryStore(),
    retentionCheck: 'off',
    handler: (_payload, ctx) => {
      seen = ctx.keyFor(name);
    },
  });
  await processor.process({
    body: utf8('{}'),
    headers: { [Headers.IdempotencyKey]: key },
    destination: 'orders',
    system: 'test',
  });
  return seen;
}

describe.each(testStores)('inspect: %s', (_name, open) => {
  let t: TestStore;
  let blobDir: string;
  const consumer = uniqueName('billing');
  const key = (k: string) => recordKeyFor({ consumer, key: k });
  const report = { report: 'daily', rows: Array.from({ length: 50 }, (_, i) => ({ i, total: i * 100 })) };
  const streamed = new Uint8Array(Array.from({ length: 70_000 }, (_, i) => i % 251));

  beforeAll(async () => {
    t = await open();
    const { store } = t;
    blobDir = await mkdtemp(join(tmpdir(), 'eo-cli-blobs-'));
    const blobs = createFsBlobStore({ directory: blobDir });
    // COMPLETED with results in the blob store: a large JSON result, and a stream's bytes.
    for (const [name, result] of [
      ['big', { kind: 'blob', pointer: await blobs.put(utf8(JSON.stringify(report))) }],
      ['stream', { kind: 'blob', pointer: await blobs.put(streamed), raw: true }],
    ] as const) {
      const begun = await store.begin({ key: key(name), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
      if (begun.status !== 'acquired') throw new Error(begun.status);
      await store.complete({
        key: key(name),
        fence: begun.fence,
        result,
        outgoing: [],
        retentionMs: 600_000,
      });
    }
    // COMPLETED: inline result, two outgoing messages, one confirmed.
    const done = await store.begin({ key: key('done'), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
    if (done.status !== 'acquired') throw new Error(done.status);
    await store.complete({
      key: key('done'),
      fence: done.fence,
      result: { kind: 'inline', data: utf8('{"chargeId":"ch_1"}') },
      outgoing: [
        { id: 'm-1', destination: 'payment-captured', body: utf8('{"a":1}'), headers: {} },
        { id: 'm-2', destination: 'events', routingKey: 'order.paid', body: utf8('{"b":22}'), headers: {} },
      ],
      retentionMs: 600_000,
    });
    await store.markPublished(key('done'), done.fence, ['m-1']);
    // COMPLETED with a blob pointer.
    const blob = await store.begin({ key: key('blob'), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
    if (blob.status !== 'acquired') throw new Error(blob.status);
    await store.complete({
      key: key('blob'),
      fence: blob.fence,
      result: { kind: 'blob', pointer: { uri: 'fs:abc', size: 3_145_728, sha256: 'a'.repeat(64) } },
      outgoing: [],
      retentionMs: 600_000,
    });
    // IN_PROGRESS with a step done and one in doubt.
    const running = await store.begin({
      key: key('running'),
      fingerprint: 'fp',
      owner: 'worker-7',
      leaseMs: 120_000,
    });
    if (running.status !== 'acquired') throw new Error(running.status);
    await store.saveStep(key('running'), running.fence, 'reserve', utf8('{"ok":true}'));
    await store.markStepStarted?.(key('running'), running.fence, 'charge');
    // FAILED.
    const failed = await store.begin({ key: key('failed'), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
    if (failed.status !== 'acquired') throw new Error(failed.status);
    await store.fail(key('failed'), failed.fence, toErrorInfo(new PermanentError('card declined')), 600_000);
    // FAILED, with a key and an error text a hostile producer chose.
    const hostile = await store.begin({ key: key(HOSTILE), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
    if (hostile.status !== 'acquired') throw new Error(hostile.status);
    const error = toErrorInfo(new PermanentError('declined \u001b[31mRED\u001b[0m'));
    await store.fail(key(HOSTILE), hostile.fence, error, 600_000);
    // COMPLETED under a key no shell argument can carry.
    const nul = await store.begin({ key: key(NUL_KEY), fingerprint: 'fp', owner: 'w1', leaseMs: 60_000 });
    if (nul.status !== 'acquired') throw new Error(nul.status);
    await store.complete({ key: key(NUL_KEY), fence: nul.fence, outgoing: [], retentionMs: 600_000 });
  });
  afterAll(async () => {
    await t?.close();
    if (blobDir) await rm(blobDir, { recursive: true, force: true });
  });

  it('a COMPLETED record: result size, outgoing messages and whether each is published', async () => {
    const view = await cliJson(['inspect', consumer, 'done', ...t.flags]);
    expect(view).toMatchObject({
      storeKey: key('done'),
      state: 'COMPLETED',
      attempt: 1,
      fingerprint: 'fp',
      result: { kind: 'inline', bytes: 19 },
      outgoing: [
        { id: 'm-1', destination: 'payment-captured', bytes: 7, published: true },
        { id: 'm-2', destination: 'events', routingKey: 'order.paid', bytes: 8, published: false },
      ],
    });
    expect(view.fence).toEqual(expect.any(Number));
    expect(view.expiresAt as number).toBeGreaterThan(Date.now());
    const text = await cliText(['inspect', consumer, 'done', ...t.flags]);
    expect(text).toMatch(/state\s+COMPLETED/);
    expect(text).toMatch(/result\s+inline, 19 B/);
    expect(text).toMatch(/outgoing\s+2 message\(s\), 1 not confirmed yet/);
    expect(text).toMatch(/published\s+m-1 -> payment-captured, 7 B/);
    expect(text).toMatch(/UNPUBLISHED\s+m-2 -> events \(order\.paid\), 8 B/);
  });

  it('--result: an inline result as the handler returned it; a blob result is named, not read', async () => {
    // An outside test: reading a stored result back needed code of one's own.
    expect(await cliJson(['inspect', consumer, 'done', '--result', ...t.flags])).toMatchObject({
      resultValue: { chargeId: 'ch_1' },
    });
    expect(await cliText(['inspect', consumer, 'done', '--result', ...t.flags])).toContain(
      'result value\n  {\n    "chargeId": "ch_1"\n  }',
    );
    expect(await cliJson(['inspect', consumer, 'blob', '--result', ...t.flags])).toMatchObject({
      resultValue: null,
    });
    expect(await cliText(['inspect', consumer, 'blob', '--result', ...t.flags])).toMatch(
      /result value\s+stored by reference: give its blob store \(--blob-dir or --gridfs-bucket\) to read it/,
    );
  });

  it('--result with the blob store: a JSON result stored by reference, read and checked', async () => {
    // An outside test: a large result could be named but not read back.
    const blobFlags = ['--blob-dir', blobDir];
    expect(await cliJson(['inspect', consumer, 'big', '--result', ...blobFlags, ...t.flags])).toMatchObject({
      result: { kind: 'blob' },
      resultValue: report,
    });
    expect(await cliText(['inspect', consumer, 'big', '--result', ...blobFlags, ...t.flags])).toContain(
      'result value\n  {\n    "report": "daily",',
    );
    // A stream's bytes are not JSON: named, and written out with --result-to.
    const stream = await cliJson(['inspect', consumer, 'stream', '--result', ...blobFlags, ...t.flags]);
    expect(stream).toMatchObject({
      result: { kind: 'blob', bytes: streamed.byteLength, raw: true },
      resultValue: null,
    });
    expect(await cliText(['inspect', consumer, 'stream', '--result', ...blobFlags, ...t.flags])).toMatch(
      /result\s+blob \(a stream\), 68\.4 KiB[\s\S]*result value\s+a stream's bytes: write them out with --result-to <file>/,
    );
    // A pointer whose blob is gone: exit 1, naming it.
    const gone = await cli(['inspect', consumer, 'blob', '--result', ...blobFlags, ...t.flags]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/the result's blob fs:abc could not be read from the blob store/);
  });

  it('--result-to writes the stored bytes to a file: inline, a blob streamed and checked, or nothing', async () => {
    const out = join(blobDir, 'out');
    const blobFlags = ['--blob-dir', blobDir];
    const inline = await cliJson(['inspect', consumer, 'done', '--result-to', `${out}-inline`, ...t.flags]);
    expect(inline.resultFile).toEqual({ path: `${out}-inline`, bytes: 19 });
    expect(await readFile(`${out}-inline`, 'utf8')).toBe('{"chargeId":"ch_1"}');
    const text = await cliText([
      'inspect',
      consumer,
      'stream',
      '--result-to',
      `${out}-stream`,
      ...blobFlags,
      ...t.flags,
    ]);
    expect(text).toContain(`result written to ${out}-stream, 68.4 KiB`);
    expect(new Uint8Array(await readFile(`${out}-stream`))).toEqual(streamed);
    // A blob result without its blob store is a usage error; a missing blob leaves no file.
    const noStore = await cli(['inspect', consumer, 'stream', '--result-to', `${out}-none`, ...t.flags]);
    expect(noStore.code).toBe(2);
    expect(noStore.stderr).toMatch(/stored by reference: give its blob store/);
    const gone = await cli([
      'inspect',
      consumer,
      'blob',
      '--result-to',
      `${out}-gone`,
      ...blobFlags,
      ...t.flags,
    ]);
    expect(gone.code).toBe(1);
    expect(existsSync(`${out}-gone`)).toBe(false);
    const failed = await cli(['inspect', consumer, 'failed', '--result-to', `${out}-failed`, ...t.flags]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/no stored result to write: the record is FAILED/);
  });

  it('a COMPLETED record with a blob result: the pointer and its size', async () => {
    const view = await cliJson(['inspect', consumer, 'blob', ...t.flags]);
    expect(view.result).toEqual({ kind: 'blob', bytes: 3_145_728, uri: 'fs:abc', sha256: 'a'.repeat(64) });
    expect(await cliText(['inspect', consumer, 'blob', ...t.flags])).toMatch(
      /result\s+blob, 3\.00 MiB \(fs:abc/,
    );
  });

  it('an IN_PROGRESS record: lease holder and expiry, steps done and in doubt', async () => {
    const view = await cliJson(['inspect', consumer, 'running', ...t.flags]);
    expect(view).toMatchObject({
      state: 'IN_PROGRESS',
      attempt: 1,
      lease: { owner: 'worker-7', live: true },
    });
    const lease = view.lease as { until: number };
    expect(lease.until).toBeGreaterThan(Date.now() + 60_000);
    const steps = view.steps as { name: string; state: string; bytes: number }[];
    expect(steps.map((s) => [s.name, s.state]).sort()).toEqual([
      ['charge', 'started'],
      ['reserve', 'done'],
    ]);
    expect(steps.find((s) => s.name === 'reserve')?.bytes).toBe(11);
    const text = await cliText(['inspect', consumer, 'running', ...t.flags]);
    expect(text).toMatch(/lease\s+worker-7, until \S+ \(in \d+ s\)/);
    expect(text).toMatch(/STARTED\s+charge .*in doubt/);
    expect(text).toMatch(/done\s+reserve .*, 11 B/);
    // Each step with the key its handler gave the provider: what to ask the provider about.
    const charge = await handlerKeyFor(consumer, 'running', 'charge');
    expect(charge).toMatch(/^eo2-/);
    expect(steps.find((s) => s.name === 'charge')).toMatchObject({ keyFor: charge });
    expect(text).toContain(`; keyFor ${charge}`);
  });

  it('a FAILED record: the error', async () => {
    const view = await cliJson(['inspect', consumer, 'failed', ...t.flags]);
    expect(view).toMatchObject({
      state: 'FAILED',
      error: { name: 'PermanentError', code: 'PERMANENT', message: 'card declined' },
    });
    expect(await cliText(['inspect', consumer, 'failed', ...t.flags])).toMatch(
      /error\s+PermanentError \(PERMANENT\): card declined/,
    );
    // A FAILED record keeps no steps: --key-for names them, for the provider lookup.
    const charge = await handlerKeyFor(consumer, 'failed', 'charge');
    const refund = await handlerKeyFor(consumer, 'failed', 'refund, partial');
    const asked = ['inspect', consumer, 'failed', '--key-for', 'charge', '--key-for', 'refund, partial'];
    expect(await cliJson([...asked, ...t.flags])).toMatchObject({
      keysFor: { charge, 'refund, partial': refund },
    });
    const text = await cliText([...asked, ...t.flags]);
    expect(text).toContain(`keyFor("charge")  ${charge}`);
    expect(text).toContain(`keyFor("refund, partial")  ${refund}`);
  });

  it('prints the control characters and bidi overrides of a key or an error escaped, never to the terminal', async () => {
    // Found by a review: ESC and OSC sequences in a producer's key cleared the operator's
    // screen and retitled the window.
    const text = await cliText(['inspect', consumer, HOSTILE, ...t.flags]);
    expect(obeyed(text)).toEqual([]);
    expect(text).toContain('esc-\\x1b[2J\\x1b]0;PWNED\\x07\\u202etxt\\x0aforged line');
    expect(text).toMatch(/error\s+PermanentError \(PERMANENT\): declined \\x1b\[31mRED\\x1b\[0m/);
    // --json stays exact: JSON strings carry them escaped already.
    expect(await cliJson(['inspect', consumer, HOSTILE, ...t.flags])).toMatchObject({
      storeKey: key(HOSTILE),
    });
    const missing = await cli(['inspect', consumer, `${HOSTILE}-absent`, ...t.flags]);
    expect(missing.code).toBe(1);
    expect(obeyed(missing.stderr)).toEqual([]);
  });

  it('--json-key reads the key as a JSON string: a key holding NUL, as --json prints it', async () => {
    const view = await cliJson(['inspect', consumer, JSON.stringify(NUL_KEY), '--json-key', ...t.flags]);
    expect(view).toMatchObject({ storeKey: key(NUL_KEY), state: 'COMPLETED' });
    const notJson = await cli(['inspect', consumer, 'nul-key', '--json-key', ...t.flags]);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toMatch(/with --json-key, <key> must be a JSON string/);
  });

  it('--history: every attempt as it was left where the store keeps them (MongoDB), else says it is not kept', async () => {
    const view = await cliJson(['inspect', consumer, 'done', '--history', ...t.flags]);
    const text = await cliText(['inspect', consumer, 'done', '--history', ...t.flags]);
    if (!t.store.history) {
      expect(view.history).toBeNull();
      expect(text).toMatch(/history\s+not kept by this store/);
      return;
    }
    // The lease element its worker held, then the completion.
    expect(view.history).toMatchObject([
      { state: 'IN_PROGRESS', attempt: 1, lease: { owner: 'w1' }, startedAt: expect.any(Number) },
      { state: 'COMPLETED', attempt: 1, completedAt: expect.any(Number) },
    ]);
    expect(text).toMatch(/history\s+2 state\(s\), oldest first/);
    expect(text).toMatch(/ {2}1 {2}IN_PROGRESS +attempt 1 {2}fence \d+ {2}owner w1 {2}started /);
    expect(text).toMatch(/ {2}2 {2}COMPLETED +attempt 1 {2}fence \d+ {2}completed /);
    // Each step with the time its journal entry was written: an outside test could not tell a
    // late write of a stalled worker from one made during its attempt.
    const running = await cliText(['inspect', consumer, 'running', '--history', ...t.flags]);
    expect(running).toMatch(/steps reserve \(done \d{4}-\d\d-\d\dT[\d:.]+Z\), charge \(started \d{4}-/);
  });

  it('a lease given back unrun that keeps its key a takeover reads as released, not as a date in 1970', async () => {
    // An outside run: `--history` printed such leases `lease until 1970-01-01T00:00:00.001Z`.
    const { store } = t;
    const stored = key('given-back');
    const first = await store.begin({ key: stored, fingerprint: 'fp', owner: 'w1', leaseMs: 1 });
    if (first.status !== 'acquired') throw new Error(first.status);
    await new Promise((r) => setTimeout(r, 20));
    const taken = await store.begin({ key: stored, fingerprint: 'fp', owner: 'w2', leaseMs: 60_000 });
    if (taken.status !== 'acquired' || taken.kind !== 'takeover') throw new Error(JSON.stringify(taken));
    await store.release(stored, taken.fence, toErrorInfo(new Error('not run')), {
      notRun: true,
      takenOver: true,
    });
    const text = await cliText(['inspect', consumer, 'given-back', '--history', ...t.flags]);
    expect(text).toMatch(/lease +w2, released, still a takeover/);
    if (t.store.history)
      expect(text).toMatch(
        /IN_PROGRESS +attempt \d+ +fence \d+ +owner w2 +started \S+ +lease released \(taken over\)/,
      );
    expect(text).not.toMatch(/1970-01-01/);
  });

  it('an unknown key exits 1 with a clear message', async () => {
    const r = await cli(['inspect', consumer, 'never-seen', ...t.flags]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no record for key "never-seen" of consumer "[^"]+"/);
    // A wrong store, prefix or consumer name reads the same: the message says so.
    expect(r.stderr).toMatch(/or not kept here: check the store/);
    // A tiered store's hot Redis forgets a key its cold store keeps (an outside test read this as
    // the key being gone).
    expect(r.stderr).toMatch(/with a tiered store, ask the cold one, --mongo/);
    expect(r.stdout).toBe('');
  });

  it('--key-for of a key with no record still prints its keys (a charge repeated after retention)', async () => {
    // An outside test: the key an operator asks the provider about was refused as "no record".
    const charge = await handlerKeyFor(consumer, 'never-seen', 'charge');
    const asked = ['inspect', consumer, 'never-seen', '--key-for', 'charge', ...t.flags];
    expect(await cliJson(asked)).toEqual({ storeKey: key('never-seen'), state: null, keysFor: { charge } });
    const text = await cliText(asked);
    expect(text).toMatch(/state\s+no record \(never processed, expired or cleared\)/);
    expect(text).toContain(`keyFor("charge")  ${charge}`);
  });
});

describe('inspect: errors', () => {
  it('a bad or unreachable URL exits 1; usage errors exit 2', async () => {
    const bad = await cli(['inspect', 'billing', 'k', '--redis', 'not a url']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--redis: "not a url" is not a URL/);
    const wrongScheme = await cli(['inspect', 'billing', 'k', '--mongo', env.redisUrl]);
    expect(wrongScheme.code).toBe(1);
    expect(wrongScheme.stderr).toMatch(/--mongo: .* must start with mongodb:\/\//);
    const down = await cli(['inspect', 'billing', 'k', '--redis', 'redis://127.0.0.1:1']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot connect to Redis at redis:\/\/127\.0\.0\.1:1.*ECONNREFUSED/);
    const noStore = await cli(['inspect', 'billing', 'k']);
    expect(noStore.code).toBe(2);
    expect(noStore.stderr).toMatch(/give a store/);
    const badConsumer = await cli(['inspect', 'no spaces!', 'k', '--redis', env.redisUrl]);
    expect(badConsumer.code).toBe(2);
    expect(badConsumer.stderr).toMatch(/consumer must match/);
    // Before: exit 1, as if the run had failed.
    const emptyKey = await cli(['inspect', 'billing', '', '--redis', env.redisUrl]);
    expect(emptyKey.code).toBe(2);
    expect(emptyKey.stderr).toMatch(/<key>: .*empty/);
    const missingArg = await cli(['inspect', 'billing']);
    expect(missingArg.code).toBe(2);
    expect(missingArg.stderr).toMatch(/missing required argument 'key'/);
  });

  it('a prefix or namespace the store refuses, or a Mongo URL without its database, exits 2 at once', async () => {
    // Before: a bad prefix printed its error and then hung (the connected client kept the process
    // up), a bad namespace crashed as an unexpected error, and a URL without a database read `test`.
    for (const prefix of ['a{b}', '']) {
      const r = await cli(['inspect', 'billing', 'k', '--redis', env.redisUrl, '--redis-prefix', prefix], {
        timeoutMs: 20_000,
      });
      expect(r.code, `--redis-prefix ${JSON.stringify(prefix)}`).toBe(2);
      expect(r.stderr).toMatch(/--redis-prefix must be non-empty/);
    }
    const namespace = await cli(['inspect', 'billing', 'k', '--redis', env.redisUrl, '--namespace', 'a b']);
    expect(namespace.code).toBe(2);
    expect(namespace.stderr).toMatch(/--namespace must be/);
    const noDb = await cli(['inspect', 'billing', 'k', '--mongo', 'mongodb://127.0.0.1:27017']);
    expect(noDb.code).toBe(2);
    expect(noDb.stderr).toMatch(/name the database/);
  });
});

describe('inspect of a damaged record (Redis)', () => {
  it('says the value is damaged, as JSON too, and exits 1', async () => {
    // Before: `--json` printed nothing on stdout for a damaged key, only the store's error text.
    const client = new Redis(env.redisUrl, { maxRetriesPerRequest: 2 });
    const keyPrefix = uniqueName('eot-cli-inspect-damaged');
    const consumer = uniqueName('c');
    const storeKey = recordKeyFor({ consumer, key: 'k' });
    try {
      await client.rpush(redisKeyFor(keyPrefix, storeKey), 'not', 'a record');
      const flags = ['inspect', consumer, 'k', '--redis', env.redisUrl, '--redis-prefix', keyPrefix];
      const json = await cli([...flags, '--json']);
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toMatchObject({ storeKey, state: null, damaged: expect.any(String) });
      expect(json.stderr).toMatch(/damaged value under key "k".*CORRUPT_RECORD.*Damaged records/);
      const text = await cli(flags);
      expect(text.code).toBe(1);
      expect(text.stdout).toBe('');
      expect(text.stderr).toMatch(/damaged value under key "k"/);
    } finally {
      await dropRedisPrefix(client, `${keyPrefix}:`);
      await client.quit();
    }
  });
});
