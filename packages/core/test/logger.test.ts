import { afterEach, describe, expect, it } from 'vitest';
import { defaultLogger, keyRedactingLogger, silentLogger } from '../src/logger.js';

const warnings: Error[] = [];
const onWarning = (w: Error) => warnings.push(w);

afterEach(() => {
  process.off('warning', onWarning);
  warnings.length = 0;
});

/** The process warnings emitted while `fn` ran (they are delivered on the next tick). */
async function emitted(fn: () => void): Promise<(Error & { detail?: string })[]> {
  process.on('warning', onWarning);
  fn();
  await new Promise((r) => setImmediate(r));
  return [...warnings];
}

describe('the default logger', () => {
  it('turns warnings and errors into process warnings that keep their metadata', async () => {
    // Before: the metadata (which queue, which error) was dropped; only the message was left.
    const got = await emitted(() => {
      defaultLogger.warn('delivery not settled; the broker will redeliver it', {
        queue: 'payments',
        error: { name: 'IllegalOperationError', message: 'Channel closed' },
      });
      defaultLogger.error('maintenance pass failed', { sizes: 10n });
      defaultLogger.info('dropped');
    });
    expect(got.map((w) => [w.name, w.message])).toEqual([
      ['ExactlyOnceWarning', 'delivery not settled; the broker will redeliver it'],
      ['ExactlyOnceError', 'maintenance pass failed'],
    ]);
    expect(JSON.parse(got[0]?.detail ?? '')).toEqual({
      queue: 'payments',
      error: { name: 'IllegalOperationError', message: 'Channel closed' },
    });
    expect(got[1]?.detail).toBe('{"sizes":"10"}');
  });

  it('is exported as defaultLogger, and under its first name, silentLogger, which it is not', () => {
    // An outside test took `silentLogger` (the documented default) for a logger that drops
    // everything.
    expect(silentLogger).toBe(defaultLogger);
  });

  it('leaves key fields out of the detail when wrapped for redaction, as the pipeline wraps it', async () => {
    const got = await emitted(() =>
      keyRedactingLogger(silentLogger).warn('lease lost', { key: 'order-42', consumer: 'billing' }),
    );
    expect(got[0]?.detail).not.toContain('order-42');
    expect(JSON.parse(got[0]?.detail ?? '')).toMatchObject({ consumer: 'billing' });
  });

  it('still warns when the metadata cannot be written as JSON', async () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const got = await emitted(() => silentLogger.warn('odd', cyclic));
    expect(got.map((w) => [w.message, w.detail])).toEqual([['odd', undefined]]);
  });
});
