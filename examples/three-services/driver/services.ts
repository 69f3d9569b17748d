/**
 * Starts, kills and watches the service processes. Each instance is its own Node process with an
 * IPC channel (for its `ready` message) and a log file; its stats endpoint is polled so that an
 * instance's outcome counters survive its SIGKILL (the last snapshot is kept).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export type ServiceName = 'order' | 'billing' | 'notification';

export interface Instance {
  readonly name: string;
  readonly service: ServiceName;
  readonly child: ChildProcess;
  readonly logFile: string;
  port?: number;
  statsPort?: number;
  alive: boolean;
  /** Set when the driver itself stops or kills it; any other exit is a crash to report. */
  stopping?: boolean;
  /** Last `/stats` answer. */
  stats?: { outcomes: Record<string, number> };
}

export class Fleet {
  readonly instances: Instance[] = [];
  /** Instances that exited without being told to. */
  readonly crashes: string[] = [];
  private readonly counters = new Map<ServiceName, number>();

  constructor(
    private readonly cwd: string,
    private readonly logDir: string,
    private readonly env: Record<string, string>,
  ) {}

  /** Starts one instance and resolves once it announced itself ready. */
  async start(service: ServiceName): Promise<Instance> {
    const n = (this.counters.get(service) ?? 0) + 1;
    this.counters.set(service, n);
    const name = `${service}-${n}`;
    const logFile = join(this.logDir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--conditions=@exactly-once/source', `${service}/main.ts`],
      {
        cwd: this.cwd,
        env: { ...process.env, KAFKAJS_NO_PARTITIONER_WARNING: '1', ...this.env, INSTANCE: name },
        stdio: ['ignore', fd, fd, 'ipc'],
      },
    );
    closeSync(fd);
    const instance: Instance = { name, service, child, logFile, alive: true };
    this.instances.push(instance);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${name} not ready after 60 s\n${tail(logFile)}`)),
        60_000,
      );
      child.on('message', (m: { type?: string; port?: number; statsPort?: number }) => {
        if (m?.type !== 'ready') return;
        instance.port = m.port;
        instance.statsPort = m.statsPort;
        clearTimeout(timer);
        resolve();
      });
      child.once('exit', (code, signal) => {
        instance.alive = false;
        if (!instance.stopping) this.crashes.push(`${name} exited (${signal ?? code}); log: ${logFile}`);
        clearTimeout(timer);
        reject(new Error(`${name} exited (${signal ?? code}) before it was ready\n${tail(logFile)}`));
      });
    });
    return instance;
  }

  live(service: ServiceName): Instance[] {
    return this.instances.filter((i) => i.service === service && i.alive);
  }

  byName(name: string): Instance | undefined {
    return this.instances.find((i) => i.name === name);
  }

  /** SIGKILL: no shutdown hooks, nothing acked, nothing flushed. Resolves once it is gone. */
  async kill(instance: Instance): Promise<void> {
    // Keep the counters it reached, then its spans: a crash should not blind the checks.
    await this.pollOne(instance);
    await fetch(`http://127.0.0.1:${instance.statsPort}/flush`, { method: 'POST' }).catch(() => {});
    instance.stopping = true;
    const gone = new Promise((r) => instance.child.once('exit', r));
    instance.child.kill('SIGKILL');
    await gone;
    instance.alive = false;
  }

  /** SIGTERM to every live instance (order first: stop taking requests, then the consumers). */
  async stopAll(): Promise<void> {
    await this.pollStats();
    for (const service of ['order', 'billing', 'notification'] as const) {
      await Promise.all(this.live(service).map((i) => this.terminate(i)));
    }
  }

  private async terminate(instance: Instance): Promise<void> {
    instance.stopping = true;
    const gone = new Promise((r) => instance.child.once('exit', r));
    instance.child.kill('SIGTERM');
    // After the service's own shutdown guard (45 s): a graceful stop is never cut short.
    const timer = setTimeout(() => instance.child.kill('SIGKILL'), 50_000);
    await gone;
    clearTimeout(timer);
    instance.alive = false;
  }

  async pollStats(): Promise<void> {
    await Promise.all(this.instances.filter((i) => i.alive).map((i) => this.pollOne(i)));
  }

  private async pollOne(instance: Instance): Promise<void> {
    try {
      const res = await fetch(`http://127.0.0.1:${instance.statsPort}/stats`, {
        signal: AbortSignal.timeout(2_000),
      });
      if (res.ok) instance.stats = (await res.json()) as Instance['stats'];
    } catch {
      // busy or gone: keep the previous snapshot
    }
  }

  /** Outcome counts of a service, summed over every instance it ever had. */
  outcomes(service: ServiceName): Record<string, number> {
    const sum: Record<string, number> = {};
    for (const i of this.instances.filter((x) => x.service === service)) {
      for (const [k, v] of Object.entries(i.stats?.outcomes ?? {})) sum[k] = (sum[k] ?? 0) + v;
    }
    return sum;
  }

  /** Last resort (Ctrl-C, a crash of the driver): no instance may outlive the driver. */
  killAll(): void {
    for (const i of this.instances) {
      i.stopping = true;
      if (i.alive) i.child.kill('SIGKILL');
    }
  }
}

export function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}
