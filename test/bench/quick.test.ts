/**
 * The benchmark harness in quick mode (tiny sizes, one round) against the local servers: it must
 * run every section and print its tables. No figure is checked: timings on a shared CI machine
 * say nothing, and the targets are reported by the full run, not asserted.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it, onTestFinished } from 'vitest';

const benchDir = fileURLToPath(new URL('../../bench/', import.meta.url));

/**
 * Runs a bench script (under its sources, as `npm run bench` does); resolves with its stdout (the
 * tables) once it exited 0.
 */
async function runScript(args: string[]): Promise<string> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=@exactly-once/source', ...args], {
    cwd: benchDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // SIGINT lets the package benches it started delete their keys.
  onTestFinished(() => {
    if (child.exitCode === null) child.kill('SIGINT');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code, `exit ${code}\n${stdout.slice(-4000)}\n${stderr.slice(-4000)}`).toBe(0);
  return stdout;
}

it('runs every section of the bench in quick mode and prints the tables', async () => {
  const stdout = await runScript(['run.ts', '--quick', '--no-progress']);
  for (const header of [
    '== Consume throughput',
    '== CPU per message by process',
    '== Added latency per message, serial',
    '== Storage per key',
    '== Outbox drain',
    '== Targets',
  ]) {
    expect(stdout).toContain(header);
  }
  expect(stdout).toMatch(/broker\s+variant\s+msgs\s+msgs\/s\s+x raw/);
  // The consumer's own CPU is always measured; the servers' when scripts/infra.sh started them.
  const cpu = stdout.slice(stdout.indexOf('== CPU per message by process'));
  expect(cpu).toMatch(/broker\s+variant\s+consumer us\s+broker us\s+redis us/);
  expect(cpu).toMatch(/rabbitmq\s+raw\s+\d+\.\d\s+\d+\.\d/);
}, 600_000);

it('the diagnostics run: the pipeline alone (with the Redis store) and the Redis scripts alone', async () => {
  const pipeline = await runScript([
    'pipeline.ts',
    '--messages',
    '300',
    '--rounds',
    '1',
    '--warmup',
    '100',
    '--redis',
  ]);
  expect(pipeline).toMatch(/mode\s+variant\s+CPU us\/msg/);
  expect(pipeline).toMatch(/one-by-one\s+sdk-redis\s+\d+\.\d/);
  const scripts = await runScript([
    'redis-scripts.ts',
    '--keys',
    '200',
    '--rounds',
    '1',
    '--batches',
    '1,16',
  ]);
  expect(scripts).toMatch(/commands\s+batch\s+begin us\/key\s+complete us\/key/);
  expect(scripts).toMatch(/store scripts\s+16\s+\d+\.\d/);
  expect(scripts).toMatch(/SET NX \+ SET\s+16\s+\d+\.\d/);
}, 300_000);
