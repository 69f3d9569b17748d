import { ConfigError } from '@exactly-once/core';
import { describe, expect, it } from 'vitest';
import { retryQueueFor, topologyFor } from '../src/topology.js';

describe('topology', () => {
  it('names the retry tiers and the dead-letter queue after the work queue', () => {
    const t = topologyFor({ queue: 'orders', retryDelaysMs: [5000, 1000, 5000] });
    expect(t.deadLetterQueue).toBe('orders.dlq');
    expect(t.retryQueues).toEqual([
      [1000, 'orders.retry.1000'],
      [5000, 'orders.retry.5000'],
    ]);
    expect(topologyFor({ queue: 'orders', deadLetter: { queue: 'dead' } }).deadLetterQueue).toBe('dead');
  });

  it('refuses a dead-letter queue that is consumed, and the old deadLetterQueue name', () => {
    expect(() => topologyFor({ queue: 'q', deadLetter: { queue: 'q' } })).toThrow(ConfigError);
    expect(() =>
      topologyFor({ queue: 'q', retryDelaysMs: [100], deadLetter: { queue: 'q.retry.100' } }),
    ).toThrow(/in a loop/);
    expect(() => topologyFor({ queue: 'q', deadLetterQueue: 'dead' } as never)).toThrow(
      /deadLetter: \{ queue/,
    );
  });

  it('sends a retry to the shortest tier at least as long as its backoff, or the longest', () => {
    const t = topologyFor({ queue: 'q', retryDelaysMs: [100, 1000, 10000] });
    expect(retryQueueFor(t, 1)).toBe('q.retry.100');
    expect(retryQueueFor(t, 100)).toBe('q.retry.100');
    expect(retryQueueFor(t, 101)).toBe('q.retry.1000');
    expect(retryQueueFor(t, 60_000)).toBe('q.retry.10000');
  });

  it('refuses delays the broker would refuse as a message TTL', () => {
    for (const retryDelaysMs of [[], [0], [1.5], [-1]]) {
      expect(() => topologyFor({ queue: 'q', retryDelaysMs })).toThrow(ConfigError);
    }
  });
});
