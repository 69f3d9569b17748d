/**
 * `dlq replay <queue> <id> <id>` on RabbitMQ with one id that names no letter (a typo, or a letter
 * another operator replayed meanwhile): the README says exit 1 "when any letter was not replayed
 * ... or when no letter matched what was asked". Before, the id that matched nothing was left out
 * of the answer, and the command exited 0.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawChannel } from '../rabbitmq/helpers.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { cli } from './helpers.js';

const dlq = uniqueName('cli-ids-dlq');
const target = uniqueName('cli-ids-target');
let raw: Awaited<ReturnType<typeof rawChannel>>;

beforeAll(async () => {
  raw = await rawChannel();
  await raw.ch.assertQueue(dlq, { durable: true });
  await raw.ch.assertQueue(target, { durable: true });
  await raw.publish(
    dlq,
    { id: 'a' },
    {
      'x-idempotency-key': 'key-a',
      'x-eo-error-class': 'PermanentError',
      'x-eo-error-code': 'PERMANENT',
      'x-eo-consumer': 'billing',
      'x-eo-original-destination': target,
    },
    'key-a',
  );
  await waitUntil(async () => (await raw.count(dlq)) === 1, { message: 'one letter' });
});

afterAll(async () => {
  await raw?.deleteQueues([dlq, target]);
  await raw?.close();
});

describe('dlq replay of ids on RabbitMQ', () => {
  it('an id asked for that names no letter is reported and fails the command', async () => {
    // Act
    const run = await cli(['dlq', 'replay', dlq, 'key-a', 'key-typo', '--amqp', env.amqpUrl, '--json']);

    // Assert: key-a went; key-typo was asked and matched nothing
    const { results } = JSON.parse(run.stdout) as { results: { id: string; replayed: boolean }[] };
    expect(results.find((r) => r.id === 'key-a')?.replayed).toBe(true);
    expect(await raw.count(target)).toBe(1);
    expect({ code: run.code, mentionsTypo: `${run.stdout}${run.stderr}`.includes('key-typo') }).toEqual({
      code: 1,
      mentionsTypo: true,
    });
  });
});
