/**
 * The trace a person looks at: a tiny demo run (3 orders through A -> B -> C) prints the Zipkin UI
 * link of an order's trace; headless Chromium opens that page and the test reads, from the DOM the
 * Lens UI rendered (not from Zipkin's JSON API), that the trace holds spans of all three services.
 * Chromium comes from apt (`scripts/infra.sh install chromium`, run here when it is missing).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, expect, it, onTestFinished } from 'vitest';
import { waitUntil } from '../support/wait.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const exampleDir = join(repoRoot, 'examples/three-services');
const chromium = 'chromium';
const SERVICES = ['order', 'billing', 'notification'] as const;

const chromiumRuns = () => spawnSync(chromium, ['--version'], { stdio: 'ignore' }).status === 0;

beforeAll(() => {
  if (chromiumRuns()) return;
  execFileSync('bash', ['scripts/infra.sh', 'install', 'chromium'], { cwd: repoRoot, stdio: 'inherit' });
  if (!chromiumRuns()) throw new Error('chromium does not run after `scripts/infra.sh install chromium`');
}, 600_000);

/** Runs the demo driver; resolves with its exit code and everything it printed. */
async function runDemo(args: string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@exactly-once/source', 'driver/main.ts', ...args],
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
  return { code, output };
}

/**
 * The page's text after Lens rendered it: Chromium runs the app in virtual time (the budget covers
 * its API calls) and prints the DOM. The window is tall because Lens only renders the span rows
 * that fit on the screen.
 */
function renderedText(url: string): string[] {
  const profile = mkdtempSync(join(tmpdir(), 'eo-chromium-'));
  try {
    const dom = execFileSync(
      chromium,
      [
        '--headless',
        '--no-sandbox', // root (CI) needs it; the page is our own local server
        '--disable-gpu',
        `--user-data-dir=${profile}`,
        '--window-size=1280,4000',
        '--virtual-time-budget=10000',
        '--dump-dom',
        url,
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000, maxBuffer: 64 << 20 },
    );
    return dom
      .replace(/<(script|style)\b[\s\S]*?<\/\1>/g, '')
      .split(/<[^>]+>/)
      .map((s) => s.replace(/&amp;/g, '&').replace(/&lt;/g, '<').replace(/&gt;/g, '>').trim())
      .filter((s) => s.length > 0);
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

it("shows an order's A -> B -> C trace in Zipkin's UI (the link the demo prints)", async () => {
  const { code, output } = await runDemo(['--quick', '--orders', '3']);
  const link = /^\s*(http:\/\/\S+\/zipkin\/traces\/([0-9a-f]{32}))\s*$/m.exec(output);
  if (!link) console.log(output);
  expect(link, `the demo printed no Zipkin link (exit code ${code})`).not.toBeNull();
  const [, url, traceId] = link as RegExpExecArray;

  // A span row of the trace view reads `<service>: <span name>`.
  let seen = new Set<string>();
  let text: string[] = [];
  await waitUntil(
    () => {
      text = renderedText(url as string);
      seen = new Set(text.map((line) => /^([\w-]+): /.exec(line)?.[1]).filter((s) => s !== undefined));
      return text.includes(traceId as string) && SERVICES.every((s) => seen.has(s));
    },
    {
      timeoutMs: 90_000,
      intervalMs: 2_000,
      message: () => `${SERVICES.join(', ')} rows on ${url}; rendered services: [${[...seen].join(', ')}]`,
    },
  );
  expect(text).toContain('order: post /orders');
  expect(text.some((line) => line.startsWith('billing: process '))).toBe(true);
  expect(text.some((line) => line.startsWith('notification: process '))).toBe(true);
}, 300_000);
