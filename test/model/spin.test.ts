/**
 * The record protocol, model-checked: model/check.sh runs Spin on model/exactly-once.pml (three
 * workers, duplicates, crashes before any step, stalls, revocations, lease takeovers, journaled
 * steps, release, fail, ack) and this file fails when Spin is missing, when a property does not
 * hold, or when a mutant of the protocol is not caught. Search sizes are printed, never asserted:
 * timings on a shared machine say nothing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it, onTestFinished } from 'vitest';

const checkScript = fileURLToPath(new URL('../../model/check.sh', import.meta.url));
// Generous: the exhaustive searches take seconds to a minute, longer on a busy machine.
const TIMEOUT_MS = 15 * 60_000;

interface Run {
  code: number | null;
  out: string;
}

function check(name: string): Promise<Run> {
  const child = spawn('bash', [checkScript, name], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out })));
}

it('has Spin and a C compiler (scripts/infra.sh installs them)', () => {
  const spin = spawnSync('spin', ['-V'], { encoding: 'utf8' });
  expect(
    spin.error,
    'spin is not installed: run `bash scripts/infra.sh install` or apt-get install spin',
  ).toBe(undefined);
  expect(spin.stdout).toMatch(/Spin Version 6\./);
  const cc = spawnSync(process.env.CC ?? 'cc', ['--version'], { encoding: 'utf8' });
  expect(cc.error, 'no C compiler for the Spin verifiers: apt-get install gcc').toBe(undefined);
});

it(
  'safety: at most one COMPLETED, ack last, no stale-fence write, steps never re-run (exhaustive)',
  async () => {
    const run = await check('safety');
    console.log(run.out.trim());
    expect(run.code, run.out).toBe(0);
    expect(run.out).toMatch(/^PASS safety: states stored [\d.e+]+, depth \d+/m);
  },
  TIMEOUT_MS,
);

it(
  'safety with two keys sharing the workers (exhaustive)',
  async () => {
    const run = await check('safety-2keys');
    console.log(run.out.trim());
    expect(run.code, run.out).toBe(0);
    expect(run.out).toMatch(/^PASS safety-2keys:/m);
  },
  TIMEOUT_MS,
);

it(
  'liveness: under weak fairness every message is eventually acked or dead-lettered',
  async () => {
    const run = await check('liveness');
    console.log(run.out.trim());
    expect(run.code, run.out).toBe(0);
    expect(run.out).toMatch(/^PASS liveness:/m);
  },
  TIMEOUT_MS,
);

it(
  'catches completeOne.lua without its fence check, and prints the counterexample',
  async () => {
    const run = await check('mutant');
    console.log(run.out.trim());
    expect(run.code, run.out).toBe(0);
    expect(run.out).toMatch(/^CAUGHT mutant: pan:1: assertion violated \(wf\[w\]==granted\[k\]\)/m);
    // The trail shows the stale worker's complete being accepted after a takeover.
    expect(run.out).toMatch(/acquired takeover: fence 2/);
    expect(run.out).toMatch(/complete_2_lua\(key 0, fence 1\) -> ok/);
    expect(run.out).toContain('text of failed assertion: assert((wf[w]==granted[k]))');
  },
  TIMEOUT_MS,
);

it(
  'catches a lease that never runs out after its holder died (the liveness check is not vacuous)',
  async () => {
    const run = await check('liveness-mutant');
    console.log(run.out.trim());
    expect(run.code, run.out).toBe(0);
    expect(run.out).toMatch(/^CAUGHT liveness-mutant: pan:1: acceptance cycle/m);
  },
  TIMEOUT_MS,
);
