/**
 * A supervisor for crash-loop tests: a worker script run as a real process (SIGKILL is the real
 * thing), started again each time it dies, as a deployment would, until the test stops it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type WorkerScript, workerArgs } from './bundle.js';
import { waitUntil } from './wait.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

export interface Supervised {
  /** How many times a worker died and was started again. */
  readonly restarts: number;
  /** Stops restarting, asks the worker to stop (SIGTERM) and kills it if it does not. */
  stop(): Promise<void>;
}

/** Runs `script` (a path from the repository root) with its config in EO_WORKER_CONFIG. */
export function supervise(script: WorkerScript, config: object): Supervised {
  let worker: ChildProcess;
  let restarts = 0;
  let stopping = false;
  const start = () => {
    worker = spawn(process.execPath, workerArgs(script), {
      cwd: root,
      env: { ...process.env, EO_WORKER_CONFIG: JSON.stringify(config) },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    worker.on('exit', () => {
      if (stopping) return;
      restarts++;
      start();
    });
  };
  start();
  return {
    get restarts() {
      return restarts;
    },
    async stop() {
      stopping = true;
      const last = worker;
      if (last.exitCode !== null || last.signalCode !== null) return;
      const exited = new Promise((resolve) => last.once('exit', resolve));
      last.kill('SIGTERM');
      await waitUntil(() => last.exitCode !== null || last.signalCode !== null, { timeoutMs: 30_000 }).catch(
        () => last.kill('SIGKILL'),
      );
      await exited;
    },
  };
}

/** The lines of a ledger file the workers append to (none yet: empty). */
export async function ledgerLines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8').catch(() => '')).split('\n').filter((line) => line !== '');
}
