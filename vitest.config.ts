import { defineConfig } from 'vitest/config';
import { LongestFirst } from './test/support/long-first.js';

// Tests import workspace packages by name; this condition resolves them to their TypeScript
// sources so a test run never depends on a stale build.
const conditions = ['@exactly-once/source', 'node', 'import', 'default'];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: conditions } },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    // Integration tests share real servers; isolate them by unique names, not by serial runs.
    pool: 'forks',
    // Most files wait on servers, leases and child processes rather than compute: more files at
    // once than the default (CPUs - 1, one file at a time on a 2-CPU machine). Three cut the main
    // suite from about 1,200 s to 820-920 s on 2 CPUs, but kept them 94% busy, and timing-bound
    // tests (compaction passes on the Cluster) then failed their premises: two it is.
    // EO_TEST_WORKERS overrides it; the destructive files always run one at a time
    // (--no-file-parallelism).
    maxWorkers: Number(process.env.EO_TEST_WORKERS ?? 2),
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    // Builds the CLI and bundles the worker scripts the tests start, once a run.
    globalSetup: ['test/support/global-setup.ts'],
    sequence: { sequencer: LongestFirst },
  },
});
