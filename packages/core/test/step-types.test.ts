/**
 * Type-level checks of `ctx.step` (compiled by the typecheck; the runtime assertion is trivial):
 * the step's type comes from its function, never widened by `reconcile`'s `{ done: false }`.
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import type { HandlerContext } from '../src/context.js';

interface Charge {
  id: string;
  cents: number;
}
declare function find(key: string): Promise<Charge | undefined>;

describe('ctx.step types', () => {
  it('a step with reconcile has the type of its function', () => {
    const typed = async (ctx: HandlerContext) =>
      ctx.step('charge', async (): Promise<Charge> => ({ id: 'c', cents: 1 }), {
        reconcile: async ({ key }) => {
          const found = await find(key);
          return found ? { done: true, value: found } : { done: false };
        },
      });
    expectTypeOf(typed).returns.resolves.toEqualTypeOf<Charge>();
    expect(typeof typed).toBe('function');
  });
});
