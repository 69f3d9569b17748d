/**
 * S4, 1 GB results (examples/scenarios/s4-large-results): the encoding worker runs in a child
 * process (its RSS is the run's alone). Injected: the same job delivered twice, and one byte of
 * the stored blob flipped. Counted outside the SDK: the handler's own count of encodes and the
 * bytes read back. The test streams 256 MiB to stay short on a shared 2-core machine; main.ts
 * does 1 GiB, and test/large-result proves 1 GiB through the pipeline with the same bound.
 */
import { describe, expect, it } from 'vitest';
import { formatReport, runInChild } from '../../examples/scenarios/s4-large-results/scenario.js';

const MiB = 1024 ** 2;

describe('S4: a large encoding result is stored by reference', () => {
  it('encodes once, answers the duplicate with the pointer, reads back verified, keeps RSS growth under 128 MiB', async () => {
    const bytes = 256 * MiB;
    const report = await runInChild({ bytes });
    console.log(formatReport(report));

    expect(report.encodes).toBe(1);
    expect(report.received).toBe(2);
    expect(report.acked).toBe(2);
    expect(report.duplicates).toBe(1);
    expect(report.raw).toBe(true);
    expect(report.pointer.size).toBe(bytes);
    expect(report.pointer.sha256).toBe(report.expectedSha256);
    expect(report.readBytes).toBe(bytes);
    expect(report.readSha256).toBe(report.expectedSha256);
    expect(report.corrupted.error).toBe('BlobIntegrityError');
    expect(report.rss.growth).toBeLessThan(128 * MiB);
  }, 300_000);
});
