/**
 * CPU profiles of the bench process (V8 sampling profiler through node:inspector), started and
 * stopped around the consuming window only, and a summary of where the samples fell: top
 * functions by self time, and self time by package. The same summary works on a file written by
 * `node --cpu-prof` (see `--summarize-profile`).
 *
 * Only this process is sampled: time the servers spend (Redis scripts, broker I/O) shows up here
 * as `(idle)` or inside the client's socket callbacks.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  file: string;
  /** What ran while sampling, e.g. `kafka sdk-redis, 20000 messages`. */
  label: string;
  totalMs: number;
  /** Sampled time minus `(idle)`: CPU this process used. */
  busyMs: number;
  /** `busyMs` per message, when the number of messages is known. */
  busyUsPerMsg?: number;
  /** Inclusive time of the SDK's and the clients' own functions (recursion counted once). */
  inclusive: { name: string; where: string; totalMs: number; percent: number }[];
  /** Self time by function, highest first. */
  topFunctions: { name: string; where: string; selfMs: number; percent: number }[];
  /** Self time by package or category (GC, idle, node internals...). */
  byPackage: { name: string; selfMs: number; percent: number }[];
}

export class CpuProfiler {
  private session: Session | undefined;

  /** Connects and configures; `start` then only has to send one message. */
  async prepare(): Promise<void> {
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    // 200 µs: fine enough for per-message costs of a few tens of µs, cheap enough to run along.
    await session.post('Profiler.setSamplingInterval', { interval: 200 });
    this.session = session;
  }

  /**
   * Starts sampling. Not awaited by callers on a hot path: the inspector dispatches the command
   * synchronously, so sampling has begun when this returns.
   */
  start(): Promise<void> {
    if (!this.session) throw new Error('profiler not prepared');
    return this.session.post('Profiler.start').then(() => {});
  }

  async stop(file: string, label: string, messages?: number): Promise<ProfileSummary> {
    const session = this.session;
    if (!session) throw new Error('profiler not started');
    const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: CpuProfile };
    session.disconnect();
    this.session = undefined;
    await writeFile(file, JSON.stringify(profile));
    return summarizeProfile(profile, file, label, messages);
  }
}

export async function summarizeProfileFile(file: string, messages?: number): Promise<ProfileSummary> {
  return summarizeProfile(JSON.parse(await readFile(file, 'utf8')) as CpuProfile, file, file, messages);
}

/** Frames worth an inclusive figure: the SDK's packages and the clients it is compared with. */
const INCLUSIVE_OF =
  /\/packages\/|node_modules\/(ioredis|kafkajs|amqplib|amqp-connection-manager|@redis\/client|@aws-lambda-powertools|@opentelemetry|mongodb)\//;

/** Where a frame's code lives, coarse enough to say which layer the time belongs to. */
function packageOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') {
    if (functionName.startsWith('(')) return functionName; // (garbage collector), (idle), (program)
    return '(native)';
  }
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1] as string;
  const pkg = /\/packages\/([^/]+)\//.exec(url);
  if (pkg) return `@exactly-once/${pkg[1]}`;
  if (url.startsWith('node:')) return 'node internals';
  if (url.includes('/bench/')) return 'bench harness';
  return url;
}

function shortUrl(url: string): string {
  const i = url.search(/node_modules\/|packages\/|bench\//);
  return i >= 0 ? url.slice(i).replace(/^node_modules\//, '') : url.replace(/^file:\/\//, '');
}

export function summarizeProfile(
  profile: CpuProfile,
  file: string,
  label: string,
  messages?: number,
  top = 15,
): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // The inspector's own work (starting the profiler) is not the workload's: leave it out.
  const excluded = new Set<number>();
  const exclude = (id: number) => {
    excluded.add(id);
    for (const c of byId.get(id)?.children ?? []) exclude(c);
  };
  for (const n of profile.nodes) if (n.callFrame.url === 'node:inspector') exclude(n.id);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i] as number;
    if (excluded.has(id)) continue;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0) || 1;
  const fns = new Map<string, { name: string; where: string; us: number }>();
  const pkgs = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)?.callFrame;
    if (!frame) continue;
    const name = frame.functionName || '(anonymous)';
    // Line numbers of TypeScript sources are those of the transpiled code: leave them out.
    const line = frame.url.endsWith('.ts') ? '' : `:${frame.lineNumber + 1}`;
    const where = frame.url ? `${shortUrl(frame.url)}${line}` : '';
    const key = `${name}@${where}`;
    const entry = fns.get(key) ?? { name, where, us: 0 };
    entry.us += us;
    fns.set(key, entry);
    const pkg = packageOf(frame);
    pkgs.set(pkg, (pkgs.get(pkg) ?? 0) + us);
  }
  const pct = (us: number) => Number(((100 * us) / totalUs).toFixed(1));

  // Inclusive time per function; a function under itself (recursion) is counted once.
  const totalOf = new Map<number, number>();
  const inclusiveOf = (id: number): number => {
    const known = totalOf.get(id);
    if (known !== undefined) return known;
    let t = selfUs.get(id) ?? 0;
    for (const c of byId.get(id)?.children ?? []) t += inclusiveOf(c);
    totalOf.set(id, t);
    return t;
  };
  const keyOf = (f: CallFrame) => `${f.functionName || '(anonymous)'}@${f.url}`;
  const inclusive = new Map<string, { name: string; where: string; us: number }>();
  for (const n of profile.nodes) {
    if (!INCLUSIVE_OF.test(n.callFrame.url)) continue;
    const key = keyOf(n.callFrame);
    let up = parent.get(n.id);
    let nested = false;
    while (up !== undefined && !nested) {
      const f = byId.get(up)?.callFrame;
      nested = f !== undefined && keyOf(f) === key;
      up = parent.get(up);
    }
    if (nested) continue;
    const entry = inclusive.get(key) ?? {
      name: n.callFrame.functionName || '(anonymous)',
      where: shortUrl(n.callFrame.url),
      us: 0,
    };
    entry.us += inclusiveOf(n.id);
    inclusive.set(key, entry);
  }
  const idleUs = pkgs.get('(idle)') ?? 0;
  const busyUs = totalUs - idleUs;
  return {
    file,
    label,
    totalMs: Math.round(totalUs / 1000),
    busyMs: Math.round(busyUs / 1000),
    ...(messages ? { busyUsPerMsg: Number((busyUs / messages).toFixed(1)) } : {}),
    inclusive: [...inclusive.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, 25)
      .map((f) => ({ name: f.name, where: f.where, totalMs: Math.round(f.us / 1000), percent: pct(f.us) })),
    topFunctions: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, selfMs: Math.round(f.us / 1000), percent: pct(f.us) })),
    byPackage: [...pkgs]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: Math.round(us / 1000), percent: pct(us) })),
  };
}

export function formatProfile(summary: ProfileSummary): string {
  const perMsg = summary.busyUsPerMsg === undefined ? '' : `, ${summary.busyUsPerMsg} us CPU per message`;
  const lines = [
    `profile: ${summary.label} (${summary.totalMs} ms sampled, ${summary.busyMs} ms busy${perMsg})`,
    `  file: ${summary.file}`,
    '  self time by package:',
  ];
  for (const p of summary.byPackage) {
    lines.push(`    ${p.percent.toFixed(1).padStart(5)}%  ${String(p.selfMs).padStart(6)} ms  ${p.name}`);
  }
  lines.push('  top functions by self time:');
  for (const f of summary.topFunctions) {
    lines.push(
      `    ${f.percent.toFixed(1).padStart(5)}%  ${String(f.selfMs).padStart(6)} ms  ${f.name}  ${f.where}`,
    );
  }
  lines.push('  inclusive time of SDK and client functions:');
  for (const f of summary.inclusive.slice(0, 15)) {
    lines.push(
      `    ${f.percent.toFixed(1).padStart(5)}%  ${String(f.totalMs).padStart(6)} ms  ${f.name}  ${f.where}`,
    );
  }
  return lines.join('\n');
}
