/**
 * The three-service demo, small: 30 orders through A -> B -> C with concurrent and replayed
 * requests, provider and email faults, exact and tampered broker copies and one SIGKILL of a
 * billing worker, but no broker restart (so this is not a destructive test). The driver exits
 * non-zero on any lost or duplicated charge or email, a wrong dead-letter count or a broken trace.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it, onTestFinished } from 'vitest';

const exampleDir = fileURLToPath(new URL('../../examples/three-services/', import.meta.url));

it('charges and emails every order exactly once under chaos (demo --quick)', async () => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@exactly-once/source', 'driver/main.ts', '--quick', '--orders', '30'],
    { cwd: exampleDir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // On a timeout the driver gets SIGINT, which SIGKILLs the services it started.
  onTestFinished(() => {
    if (child.exitCode === null) child.kill('SIGINT');
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) console.log(output);
  expect(output).toContain('verification');
  expect(code).toBe(0);
}, 240_000);
