/** Starts worker.ts as a child process (the way main.ts and the test run a killable service). */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { WorkerConfig } from './worker.js';

export interface WorkerProcess {
  readonly child: ChildProcess;
  /** Resolves with the signal that ended it (`SIGKILL` after a planned crash), or null. */
  readonly exited: Promise<NodeJS.Signals | null>;
  /** Resolves once the consumer is subscribed. */
  readonly started: Promise<void>;
}

export function startWorker(config: WorkerConfig): WorkerProcess {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '--conditions=@exactly-once/source',
      fileURLToPath(new URL('./worker.ts', import.meta.url)),
    ],
    { env: { ...process.env, S8_WORKER: JSON.stringify(config) }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<NodeJS.Signals | null>((resolve) =>
    child.on('exit', (_code, signal) => resolve(signal)),
  );
  const started = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('started')) resolve();
    });
    void exited.then(() => reject(new Error('the worker exited before it started')));
  });
  started.catch(() => {});
  return { child, exited, started };
}
