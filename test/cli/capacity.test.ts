/**
 * `exactly-once capacity`: the storage sizing arithmetic, with the measured defaults and with
 * figures given on the command line, as JSON and as text; usage errors exit 2.
 */
import { describe, expect, it } from 'vitest';
import { cli, cliJson, cliText } from './helpers.js';

interface Estimate {
  compaction: boolean;
  recordWindowDays: number;
  maintenanceEveryMs: number;
  records: { count: number; bytesPerRecord: number; bytes: number };
  markers: { count: number; bytesPerMarker: number; bucketOverheadBytes: number; bytes: number };
  totalBytes: number;
  recordsOnlyBytes: number;
  warnings: string[];
}

describe('capacity', () => {
  it('ends quietly when the reader closes the pipe early, as `| head` does', async () => {
    // An outside test: `dlq list ... | head` died with an unhandled "write EPIPE" and its stack.
    const r = await cli(['capacity', '--keys-per-day', '1000000', '--retention', '30'], {
      closeStdout: true,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('records for the window and the maintenance interval, markers for the rest of the retention, with the measured figures', async () => {
    const e = await cliJson<Estimate>(['capacity', '--keys-per-day', '1000000', '--retention', '30']);
    expect(e.compaction).toBe(true);
    expect(e.recordWindowDays).toBe(1);
    // Whole for the day and until the hourly pass after it: 25 hours of keys.
    expect(e.maintenanceEveryMs).toBe(3_600_000);
    expect(e.records).toEqual({ count: 1_041_667, bytesPerRecord: 312, bytes: 1_041_667 * 312 });
    // 21 B a marker plus 134 B for each of the 13,152 buckets (one per cluster slot in use).
    expect(e.markers.count).toBe(28_958_333);
    expect(e.markers.bucketOverheadBytes).toBe(13_152 * 134);
    expect(e.markers.bytes).toBe(28_958_333 * 21 + 13_152 * 134);
    expect(e.totalBytes).toBe(e.records.bytes + e.markers.bytes);
    expect(e.recordsOnlyBytes).toBe(30_000_000 * 241);
    expect(e.warnings).toEqual([]);
    // At ~1M markers the model gives 22.8 B per marker (measured: 21.7 at 1M).
    const m = await cliJson<Estimate>([
      'capacity',
      '--keys-per-day',
      '1e6',
      '--retention',
      '2',
      '--record-window',
      '1',
    ]);
    expect(m.markers.bytesPerMarker).toBeCloseTo(22.84, 1);
    // A window that is not a whole number of keys: records and markers still add up to the
    // retention's keys (each was rounded up on its own: 1,083,334 + 28,916,667 = 30,000,001).
    const w = await cliJson<Estimate>([
      'capacity',
      '--keys-per-day',
      '1000000',
      '--retention',
      '30',
      '--record-window',
      '25h',
    ]);
    expect(w.records.count).toBe(1_083_334);
    expect(w.records.count + w.markers.count).toBe(30_000_000);

    const text = await cliText(['capacity', '--keys-per-day', '1,000,000', '--retention', '30d']);
    expect(text).toContain(
      'full records for 1 day (and up to 60 min more, until the maintenance pass that compacts them), compaction markers for the rest',
    );
    expect(text).toMatch(/records\s+1,041,667\s+312 B\s+310 MiB/);
    expect(text).toMatch(/markers\s+28,958,333\s+21\.1 B\s+582 MiB/);
    expect(text).toMatch(/total\s+30,000,000\s+892 MiB/);
    expect(text).toContain('without compaction (full records for 30 days): 6.73 GiB');
    expect(text).toContain('compactAfterMs: 86400000');
    expect(text).toContain('startMaintenance({ everyMs: 3600000 })');
  });

  it('a window shorter than an hour: a pass as often as the window, spans in seconds; a retention consumers refuse is said', async () => {
    // An outside run: a 5 s window counted records for 5 s though it printed hourly passes, read
    // "full records for 0 days", and a 1-day retention was printed as if consumers took it.
    const e = await cliJson<Estimate>([
      'capacity',
      '--keys-per-day',
      '1000000',
      '--retention',
      '1',
      '--record-window',
      '5s',
    ]);
    expect(e.maintenanceEveryMs).toBe(5_000);
    expect(e.records.count).toBe(Math.ceil((1_000_000 * 10) / 86_400));
    expect(e.warnings).toEqual([expect.stringMatching(/consumers refuse this retention at start/)]);
    const text = await cliText([
      'capacity',
      '--keys-per-day',
      '1000000',
      '--retention',
      '1',
      '--record-window',
      '5s',
    ]);
    expect(text).toContain('full records for 5 s (and up to 5 s more');
    expect(text).toContain('startMaintenance({ everyMs: 5000 })');
    expect(text).not.toMatch(/0 days|1 days/);
  });

  it('figures from the command line; a window covering the retention means records only', async () => {
    const e = await cliJson<Estimate>([
      'capacity',
      '--keys-per-day',
      '500000',
      '--retention',
      '14',
      '--record-window',
      '12h',
      '--record-bytes',
      '400',
      '--marker-bytes',
      '24',
    ]);
    expect(e.recordWindowDays).toBe(0.5);
    // Whole for 12 hours and until the hourly pass after them.
    expect(e.records).toEqual({ count: 270_834, bytesPerRecord: 400, bytes: 108_333_600 });
    expect(e.markers).toEqual({
      count: 6_729_166,
      bytesPerMarker: 24,
      bucketOverheadBytes: 0,
      bytes: 161_499_984,
    });
    expect(e.totalBytes).toBe(269_833_584);

    const all = await cliJson<Estimate>([
      'capacity',
      '--keys-per-day',
      '1000',
      '--retention',
      '7',
      '--record-window',
      '30',
    ]);
    expect(all.compaction).toBe(false);
    expect(all.records).toEqual({ count: 7000, bytesPerRecord: 241, bytes: 7000 * 241 });
    expect(all.markers.bytes).toBe(0);
    expect(
      await cliText(['capacity', '--keys-per-day', '1000', '--retention', '7', '--record-window', '30']),
    ).toContain('as full records (no compaction)');

    // 30M keys a day for 90 days: 3.5 MiB buckets, each rewritten whole by a compaction call.
    const big = await cliJson<Estimate>(['capacity', '--keys-per-day', '30e6', '--retention', '90']);
    expect(big.warnings[0]).toMatch(/of markers per bucket: each compaction call rewrites/);
    const usual = await cliJson<Estimate>(['capacity', '--keys-per-day', '1e6', '--retention', '30']);
    expect(usual.warnings).toEqual([]);
  });

  it('a tiered store: the hot Redis for its window, the cold MongoDB for the whole retention', async () => {
    const e = await cliJson<{
      tiered: boolean;
      hotDays: number;
      hot: { count: number; bytesPerRecord: number; bytes: number };
      cold: { count: number; documents: number; bytesPerRecord: number; bytes: number };
      redisOnlyBytes: number;
      warnings: string[];
    }>(['capacity', '--keys-per-day', '1000000', '--retention', '30', '--tiered-hot', '1']);
    expect(e.tiered).toBe(true);
    expect(e.hotDays).toBe(1);
    // Whole records in the hot Redis (no compaction index), three documents a record in MongoDB.
    expect(e.hot).toEqual({ count: 1_000_000, bytesPerRecord: 241, bytes: 241_000_000 });
    expect(e.cold).toEqual({
      count: 30_000_000,
      documents: 90_000_000,
      bytesPerRecord: 346,
      bytes: 30_000_000 * 346,
    });
    expect(e.redisOnlyBytes).toBe(30_000_000 * 241);
    expect(e.warnings).toEqual([]);

    const text = await cliText([
      'capacity',
      '--keys-per-day',
      '1e6',
      '--retention',
      '30d',
      '--tiered-hot',
      '24h',
      '--record-bytes',
      '300',
      '--cold-bytes',
      '700',
    ]);
    expect(text).toContain('the hot Redis keeps records 1 day, the cold MongoDB all 30 days');
    expect(text).toMatch(/hot \(Redis\)\s+1,000,000\s+300 B\s+286 MiB/);
    expect(text).toMatch(/cold \(MongoDB\)\s+30,000,000\s+700 B\s+19\.6 GiB\s+BSON in 90,000,000 documents/);
    expect(text).toContain('hotRetentionMs: 86400000, coldRetentionMs: 2592000000');
    expect(text).toContain('per key: as given');

    // A hot window as long as the retention leaves the cold tier nothing to answer.
    const covered = await cliJson<{ hotDays: number; warnings: string[] }>([
      'capacity',
      '--keys-per-day',
      '1000',
      '--retention',
      '7',
      '--tiered-hot',
      '30',
    ]);
    expect(covered.hotDays).toBe(7);
    expect(covered.warnings[0]).toMatch(/hot window covers the retention/);
  });

  it('usage errors exit 2', async () => {
    const tieredWindow = await cli([
      'capacity',
      '--keys-per-day',
      '10',
      '--retention',
      '7',
      '--tiered-hot',
      '1',
      '--record-window',
      '1',
    ]);
    expect(tieredWindow.code).toBe(2);
    expect(tieredWindow.stderr).toMatch(/--record-window and --marker-bytes do not apply/);
    const coldAlone = await cli([
      'capacity',
      '--keys-per-day',
      '10',
      '--retention',
      '7',
      '--cold-bytes',
      '500',
    ]);
    expect(coldAlone.code).toBe(2);
    expect(coldAlone.stderr).toMatch(/--cold-bytes needs --tiered-hot/);
    const missing = await cli(['capacity', '--keys-per-day', '10']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/required option '--retention <days>'/);
    const bad = await cli(['capacity', '--keys-per-day', 'lots', '--retention', '7']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--keys-per-day must be a number/);
    const zero = await cli(['capacity', '--keys-per-day', '10', '--retention', '0']);
    expect(zero.code).toBe(2);
    const unknown = await cli(['capacity', '--keys-per-day', '10', '--retention', '7', '--bogus']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option '--bogus'/);
    const help = await cli(['capacity', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('--keys-per-day <n>');
  });
});
