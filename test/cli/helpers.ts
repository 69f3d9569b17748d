/**
 * Runs the `exactly-once` CLI as a subprocess, as an operator would: its built `dist/bin.js`, which
 * Vitest's global setup brings up to date with the sources (`tsc -b`) before any test file runs.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const bin = 'packages/cli/dist/bin.js';

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function cli(
  args: readonly string[],
  options: {
    timeoutMs?: number;
    env?: NodeJS.ProcessEnv;
    /** Closes the read end of stdout at once, as `| head` does once it has its lines. */
    closeStdout?: boolean;
  } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      cwd: repoRoot,
      env: { ...process.env, NODE_OPTIONS: '', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    if (options.closeStdout) child.stdout.destroy();
    else
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
      });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs the CLI with `--json` appended, expects exit 0 and parses stdout. */
export async function cliJson<T = Record<string, unknown>>(args: readonly string[]): Promise<T> {
  const r = await cli([...args, '--json']);
  if (r.code !== 0)
    throw new Error(`exactly-once ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Expects exit 0 and returns stdout. */
export async function cliText(args: readonly string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0)
    throw new Error(`exactly-once ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}
