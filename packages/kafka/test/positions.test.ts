import { describe, expect, it } from 'vitest';
import { markedPartitions, partitionsMark } from '../src/positions.js';

describe('the partition mark of a commit', () => {
  it('reads back the count it was made with', () => {
    expect(markedPartitions(partitionsMark(1))).toBe(1);
    expect(markedPartitions(partitionsMark(480))).toBe(480);
  });

  it("reads no count from a commit without metadata or with another's", () => {
    for (const metadata of [
      undefined,
      null,
      '',
      'partitions=4',
      'exactly-once:partitions=',
      'exactly-once:partitions=0',
      'exactly-once:partitions=04',
      'exactly-once:partitions=4x',
      'exactly-once:partitions=-4',
      'exactly-once:partitions=1e3',
      'exactly-once:partitions=9999999999',
    ]) {
      expect(markedPartitions(metadata), String(metadata)).toBeUndefined();
    }
  });
});
