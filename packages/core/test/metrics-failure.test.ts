/**
 * A metrics provider that throws (the OpenTelemetry API says its instruments must not; a
 * hand-written one can) does not fail a delivery. Every delivery records metrics, and its
 * handler's duration between the handler's end and its completion: a throw used to reject
 * `process` for every message, a throw there with the run's lease left heartbeating up to
 * `maxRunMs` and its result never stored.
 */
import { type Meter, type MeterProvider, metrics } from '@opentelemetry/api';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createProcessor } from '../src/processor.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { delivery } from './helpers.js';

const refuse = () => {
  throw new Error('exporter misconfigured');
};

/** A provider whose instruments are made, and throw at every measurement. */
const throwingInstruments = {
  getMeter: () =>
    ({
      createCounter: () => ({ add: refuse }),
      createHistogram: () => ({ record: refuse }),
      createObservableGauge: () => ({ addCallback: refuse, removeCallback: refuse }),
    }) as unknown as Meter,
} as MeterProvider;

/** A provider that cannot make a meter at all. */
const throwingMeter = { getMeter: refuse } as unknown as MeterProvider;

const warned: unknown[] = [];
beforeAll(() => {
  vi.spyOn(process, 'emitWarning').mockImplementation((warning) => {
    warned.push(warning);
  });
});
afterEach(() => metrics.disable());
afterAll(() => {
  // Reported once a process, not once a measurement: a broken exporter must not flood the log.
  const reported = warned.filter((text) => String(text).includes('metrics provider threw'));
  expect(reported).toHaveLength(1);
  vi.restoreAllMocks();
});

describe.each([
  ['whose instruments throw', throwingInstruments],
  ['that cannot make a meter', throwingMeter],
])('a metrics provider %s', (_name, provider) => {
  it('does not fail a delivery: the key completes and its copy is a duplicate', async () => {
    metrics.setGlobalMeterProvider(provider);
    const store = createMemoryStore();
    let runs = 0;
    const p = createProcessor({
      consumer: 'metered',
      store,
      leaseMs: 60_000,
      retentionCheck: 'off',
      handler: () => {
        runs++;
        return { ok: true };
      },
    });
    const message = delivery({ id: 1 }, { 'x-idempotency-key': 'k1' });
    expect(await p.process(message)).toMatchObject({ action: 'ack', outcome: 'acquired' });
    expect(await p.process(message)).toMatchObject({ action: 'ack', outcome: 'duplicate' });
    expect(runs).toBe(1);
  });
});
