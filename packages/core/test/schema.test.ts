/**
 * `schema`: a Standard Schema (here Zod 4 and Valibot 1, as users pass them) checks the decoded
 * payload; its output is the handler's payload, and its type the consumer's `T`.
 */
import * as v from 'valibot';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { ConfigError } from '../src/errors.js';
import { createIdempotentExecutor, type ExecuteRequest } from '../src/executor.js';
import { Headers } from '../src/headers.js';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery } from './helpers.js';

const Order = z.object({
  orderId: z.string().min(1),
  amount: z.number().int().positive(),
  currency: z.string().default('EUR'),
});
const keyed = (key: string) => ({ [Headers.IdempotencyKey]: key });

describe('schema', () => {
  it('hands the handler the schema output, typed by it', async () => {
    const seen: unknown[] = [];
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: Order,
      handler: (order) => {
        expectTypeOf(order).toEqualTypeOf<{ orderId: string; amount: number; currency: string }>();
        seen.push(order);
      },
    });
    const d = await p.process(delivery({ orderId: 'o-1', amount: 100 }, keyed('k1')));
    expect(d.outcome).toBe('acquired');
    expect(seen).toEqual([{ orderId: 'o-1', amount: 100, currency: 'EUR' }]);
  });

  it('dead-letters a payload it refuses as MALFORMED_MESSAGE, naming the issues, and never runs the handler', async () => {
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: Order,
      handler: () => {
        runs++;
      },
    });
    const d = await p.process(delivery({ orderId: '', amount: -5 }, keyed('k2')));
    expect(d).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (d.action !== 'dead-letter') throw new Error('unreachable');
    expect(d.reason.error).toMatchObject({ name: 'MalformedMessageError', code: 'MALFORMED_MESSAGE' });
    expect(d.reason.error.message).toMatch(/^message failed validation: orderId: .+; amount: .+/);
    expect(runs).toBe(0);
  });

  it('waits for a schema that answers asynchronously, both ways', async () => {
    const known = new Set(['o-1']);
    const Async = Order.refine(async (o) => known.has(o.orderId), {
      message: 'unknown order',
      path: ['orderId'],
    });
    const seen: string[] = [];
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: Async,
      handler: (order) => {
        seen.push(order.orderId);
      },
    });
    expect((await p.process(delivery({ orderId: 'o-1', amount: 1 }, keyed('a1')))).outcome).toBe('acquired');
    const refused = await p.process(delivery({ orderId: 'o-2', amount: 1 }, keyed('a2')));
    expect(refused).toMatchObject({ action: 'dead-letter', outcome: 'invalid' });
    if (refused.action === 'dead-letter')
      expect(refused.reason.error.message).toContain('orderId: unknown order');
    expect(seen).toEqual(['o-1']);
  });

  it('takes any Standard Schema: Valibot too', async () => {
    const seen: number[] = [];
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: v.object({ amount: v.pipe(v.number(), v.minValue(1)) }),
      handler: (payload) => {
        expectTypeOf(payload).toEqualTypeOf<{ amount: number }>();
        seen.push(payload.amount);
      },
    });
    expect((await p.process(delivery({ amount: 3 }, keyed('v1')))).outcome).toBe('acquired');
    expect(await p.process(delivery({ amount: 0 }, keyed('v2')))).toMatchObject({ outcome: 'invalid' });
    expect(seen).toEqual([3]);
  });

  it('fingerprints the schema output: fields it drops do not make another payload', async () => {
    let runs = 0;
    const p = createProcessor({
      consumer: 'c',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: Order,
      handler: () => {
        runs++;
      },
    });
    await p.process(delivery({ orderId: 'o-1', amount: 100, note: 'first' }, keyed('f1')));
    const copy = await p.process(delivery({ orderId: 'o-1', amount: 100, note: 'second' }, keyed('f1')));
    expect(copy.outcome).toBe('duplicate');
    const other = await p.process(delivery({ orderId: 'o-1', amount: 200 }, keyed('f1')));
    expect(other.outcome).toBe('mismatch');
    expect(runs).toBe(1);
  });

  it("an executor takes the schema's input (a defaulted field may be left out); its handler gets the output", async () => {
    const orders = createIdempotentExecutor({
      consumer: 'api',
      store: createMemoryStore(),
      retentionCheck: 'off',
      schema: Order,
    });
    // Before: execute wanted the output type, so a caller had to fill in what the schema defaults.
    const { result } = await orders.execute(
      { key: 'k-1', payload: { orderId: 'o-1', amount: 5 } },
      (order) => {
        expectTypeOf(order).toEqualTypeOf<{ orderId: string; amount: number; currency: string }>();
        return order.currency;
      },
    );
    expect(result).toBe('EUR');
    expectTypeOf(orders.execute)
      .parameter(0)
      .toEqualTypeOf<ExecuteRequest<{ orderId: string; amount: number; currency?: string | undefined }>>();
  });

  it('refuses something that is not a Standard Schema', () => {
    expect(() =>
      createProcessor({
        consumer: 'c',
        store: createMemoryStore(),
        schema: { parse: () => ({}) } as never,
        handler: () => {},
      }),
    ).toThrow(ConfigError);
  });
});
