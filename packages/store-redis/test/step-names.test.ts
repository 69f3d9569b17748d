/**
 * A step name that is not well-formed UTF-16 (a lone surrogate: a title cut by `slice` inside an
 * emoji) reaches the store as U+FFFD (Redis here; MongoDB too, BSON being UTF-8): the retry looked
 * the step up by its real name, missed it, and ran its effect again. The pipeline now refuses such
 * a name before anything runs.
 */
import { createProcessor, type HandlerContext } from '@exactly-once/core';
import { afterAll, expect, it } from 'vitest';
import { createRedisStore } from '../src/index.js';
import { dropPrefix, standalone, testPrefix } from './helpers.js';

const client = standalone();
const keyPrefix = testPrefix('step-names');
afterAll(async () => {
  await dropPrefix(client, keyPrefix);
  await client.quit();
});

class Flaky extends Error {}

it('a step named with a lone surrogate never runs its effect twice', async () => {
  const store = createRedisStore({ client, keyPrefix, inProgressTtlMs: 600_000 });
  const title = 'Welcome 😀 aboard';
  const name = `email:${title.slice(0, 9)}`; // cuts the emoji in half
  expect(name.isWellFormed()).toBe(false);
  let sent = 0;
  let failOnce = true;
  const p = createProcessor({
    consumer: 'mailer',
    store,
    leaseMs: 2_000,
    retentionCheck: 'off',
    retry: { maxAttempts: 5, initialDelayMs: 5 },
    handler: async (_: unknown, ctx: HandlerContext) => {
      await ctx.step(name, () => {
        sent++;
        return { sent: true };
      });
      if (failOnce) {
        failOnce = false;
        throw new Flaky('a later call failed');
      }
      return 'done';
    },
  });
  const delivery = {
    body: new TextEncoder().encode('{}'),
    headers: { 'x-idempotency-key': 'k1' },
    destination: 'q',
    system: 'test',
  };
  // Attempt 1 runs the step, then fails (retryable); attempt 2 must replay the step (or the name
  // must be refused up front): the email is never sent twice.
  await p.process(delivery);
  await p.process(delivery);
  expect(sent).toBeLessThanOrEqual(1);
});
