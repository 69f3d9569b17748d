/**
 * A message that kills its worker (SIGKILL) every time it runs. Its crashes must not take the
 * other messages of the prefetch window with it: after a crash the broker redelivers the whole
 * window, and if the window runs together again, every crash counts an attempt for every message
 * in it (found under a crash loop: all 20 messages of the window dead-lettered ATTEMPTS_EXHAUSTED
 * beside the one poison message, each innocent handler started 5 times).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_RETRY_DELAYS_MS } from '@exactly-once/rabbitmq';
import { afterAll, expect, it } from 'vitest';
import { uniqueName } from '../support/env.js';
import { ledgerLines, supervise } from '../support/supervisor.js';
import { waitUntil } from '../support/wait.js';
import { closeRedis, newRedis, queuesOf, rawChannel, storePrefix } from './helpers.js';

const redis = newRedis();
afterAll(() => closeRedis(redis));

it('a message that crashes its worker is dead-lettered alone; the window delivered with it runs once', async () => {
  const queue = uniqueName('poison-crash');
  const dir = await mkdtemp(join(tmpdir(), 'eo-poison-'));
  const ledger = join(dir, 'ledger');
  const innocents = Array.from({ length: 11 }, (_, i) => `m${i}`);
  const raw = await rawChannel();
  await raw.ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  const ids = [...innocents.slice(0, 3), 'poison', ...innocents.slice(3)];
  for (const id of ids) await raw.publish(queue, { id }, { 'x-idempotency-key': id });

  const config = { queue, ledger, storePrefix: storePrefix(queue), maxTakeoverAttempts: 3 };
  const workers = supervise('test/rabbitmq/poison-worker.ts', config);
  const effects = () => ledgerLines(ledger);
  try {
    const letters = await waitUntil(
      async () => {
        const dlq = await raw.check(`${queue}.dlq`);
        const ran = new Set(await effects());
        // Done when the poison's letter is there and every innocent ran, or more were dead-lettered.
        const letters = dlq?.messageCount ?? 0;
        return letters > 1 || (letters === 1 && innocents.every((id) => ran.has(id)))
          ? raw.drain(`${queue}.dlq`)
          : undefined;
      },
      { timeoutMs: 60_000, progress: () => workers.restarts },
    );
    expect(letters.map((m) => m.properties.headers?.['x-idempotency-key'])).toEqual(['poison']);
    expect(letters[0]?.properties.headers?.['x-eo-error-code']).toBe('ATTEMPTS_EXHAUSTED');
    // Each innocent handler ran to its effect once: none of them ran beside the poison again.
    const counts = new Map<string, number>();
    for (const id of await effects()) counts.set(id, (counts.get(id) ?? 0) + 1);
    expect(Object.fromEntries(counts)).toEqual(Object.fromEntries(innocents.map((id) => [id, 1])));
    expect(workers.restarts).toBeGreaterThanOrEqual(3);
  } finally {
    await workers.stop();
    await raw.deleteQueues(queuesOf(queue, [...DEFAULT_RETRY_DELAYS_MS]));
    await raw.close();
    await rm(dir, { recursive: true, force: true });
  }
}, 120_000);
