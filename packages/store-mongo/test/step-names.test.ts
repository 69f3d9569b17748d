/**
 * A step name that is not well-formed UTF-16 (a lone surrogate: a title cut by `slice` inside an
 * emoji) reaches the store as U+FFFD: the retry looked the step up by its real name, missed it,
 * and ran its effect again. The pipeline now refuses such a name before anything runs.
 */
import { createProcessor, type HandlerContext } from '@exactly-once/core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createMongoStore } from '../src/index.js';
import { openTestDatabase, type TestDatabase } from './helpers.js';

let t: TestDatabase;
beforeAll(async () => {
  t = await openTestDatabase('step_names');
});
afterAll(async () => {
  await t.drop();
});

class Flaky extends Error {}

it('a step named with a lone surrogate never runs its effect twice', async () => {
  const store = createMongoStore({ db: t.db });
  const name = `email:${'Welcome 😀 aboard'.slice(0, 9)}`; // cuts the emoji in half
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
