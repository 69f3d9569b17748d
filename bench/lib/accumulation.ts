/**
 * Does the Mongo store slow down as records accumulate? The store package owns the measurement,
 * and this section runs it as it is, once per server:
 * `packages/store-mongo/bench/accumulation.ts --servers <server> --records <n1>,<n2> --ops <n> --json`
 * (fills a fresh database through the store to each size, then times new keys and duplicates).
 */
import { env } from './env.js';
import type { Progress } from './progress.js';
import { runBench } from './storage.js';

/** The package bench's server names; `sdk-mongo` runs on `ferretdb`, `sdk-mongo-java` on `mongo-java`. */
export const ACCUMULATION_SERVERS = ['ferretdb', 'mongo-java'] as const;
export type AccumulationServer = (typeof ACCUMULATION_SERVERS)[number];

export interface AccumulationRow {
  server: AccumulationServer;
  /** COMPLETED keys when the timed operations started. */
  records: number;
  /** Documents in the collection then (heads and chain elements). */
  docs: number;
  /** Writing the records up to this size from the previous one, keys/s. */
  fillRate: number;
  /** begin + complete of new keys, messages/s. */
  newKeyRate: number;
  /** begin of COMPLETED keys (`duplicate`), messages/s. */
  duplicateRate: number;
  /** StoreUnavailableError retries during the timed operations. */
  retries: number;
  loadStart: number;
  loadEnd: number;
}

export interface AccumulationResult {
  records: readonly number[];
  ops: number;
  concurrency: number;
  rows: AccumulationRow[];
  /** Full output of each run, for the JSON record. */
  outputs: Record<string, string>;
}

const BENCH = 'packages/store-mongo/bench/accumulation.ts';

export async function runAccumulation(
  options: {
    servers: readonly AccumulationServer[];
    records: readonly number[];
    ops: number;
    concurrency: number;
    timeoutMs: number;
  },
  progress: Progress,
): Promise<AccumulationResult> {
  const rows: AccumulationRow[] = [];
  const outputs: Record<string, string> = {};
  for (const server of options.servers) {
    progress.note(
      `mongo-accumulation: ${server}, ${options.records.join(' then ')} records, ${options.ops} ops per size`,
    );
    const output = await runBench(
      [
        BENCH,
        '--servers',
        server,
        '--records',
        options.records.join(','),
        '--ops',
        String(options.ops),
        '--concurrency',
        String(options.concurrency),
        '--json',
      ],
      { EO_MONGO_URL: env.mongoUrl, EO_MONGO_JAVA_URL: env.mongoJavaUrl },
      options.timeoutMs,
      (line) => progress.note(`  ${line}`),
    );
    outputs[server] = output;
    const json = output.trimEnd().split('\n').at(-1) ?? '';
    rows.push(...(JSON.parse(json) as { rows: AccumulationRow[] }).rows);
  }
  return { records: options.records, ops: options.ops, concurrency: options.concurrency, rows, outputs };
}
