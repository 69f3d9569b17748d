/**
 * Runs the S4 worker (worker.ts) in a child process, so that the RSS it reports is the encoding
 * run's alone, and formats its report.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { WorkerReport } from './worker.js';

export type { WorkerReport } from './worker.js';

const MiB = 1024 ** 2;
const worker = fileURLToPath(new URL('./worker.ts', import.meta.url));

/** Encodes one `bytes`-sized video in a fresh worker process and returns its report. */
export async function runInChild(options: { readonly bytes: number }): Promise<WorkerReport> {
  const directory = await mkdtemp(join(tmpdir(), 's4-blobs-'));
  try {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '--conditions=@exactly-once/source', worker],
      {
        env: {
          ...process.env,
          EO_S4_BYTES: String(options.bytes),
          EO_S4_BLOB_DIR: directory,
          EO_S4_RUN: randomBytes(6).toString('hex'),
        },
        maxBuffer: 1 << 20,
      },
    );
    return JSON.parse(stdout.trim().split('\n').at(-1) as string) as WorkerReport;
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

export function formatReport(r: WorkerReport): string {
  const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
  return [
    `result                       ${mib(r.bytes)} streamed into the fs blob store`,
    `deliveries of the job        ${r.received} (acked ${r.acked}, answered as duplicate ${r.duplicates})`,
    `encodes (handler runs)       ${r.encodes}`,
    `record's result              pointer ${r.pointer.uri}, ${r.pointer.size} bytes, sha256 ${r.pointer.sha256.slice(0, 16)}…${r.raw ? ' (raw stream bytes)' : ''}`,
    `read back by pointer         ${r.readBytes} bytes, sha256 ${r.readSha256 === r.expectedSha256 ? 'equals' : 'DIFFERS FROM'} the encoder's`,
    `one byte flipped, read again ${r.corrupted.error}: ${r.corrupted.message}`,
    `worker RSS                   baseline ${mib(r.rss.baseline)}, peak ${mib(r.rss.peak)}, growth ${mib(r.rss.growth)}`,
  ].join('\n');
}
