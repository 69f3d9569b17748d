import { defineConfig } from 'vitest/config';

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
    // once than the default (CPUs - 1, one file at a time on a 2-CPU machine). Three keep 2 CPUs
    // busy (the main suite took 820-920 s, against 1,190-1,240 s with two). EO_TEST_WORKERS
    // overrides it; the destructive files always run one at a time (--no-file-parallelism).
    maxWorkers: Number(process.env.EO_TEST_WORKERS ?? 3),
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
