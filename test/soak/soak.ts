/**
 * The soak: one transport x one processed-store at a time, with racing worker processes
 * (worker.ts), duplicates in the input, SIGKILLs at random pipeline points, one worker SIGSTOPped
 * past its lease, one broker restart and one store restart. Effects are counted by the crash
 * ledger (test/support/crash-ledger.ts) on the shared Redis, which nothing here restarts; the
 * stores are the soak's own servers (servers.ts).
 *
 * Schedule. Every disturbance is an event at a fraction of the run, measured in keys completed
 * (the ledger's completions): the harness publishes the input only a window ahead of the next
 * event, so there is always work in flight when an event fires, and events do not bunch up at the
 * end however fast the workers are. Kills are spread evenly over 5-85% of the run (with jitter);
 * each arms a random live worker to SIGKILL itself at the 1st-3rd next event of a random pipeline
 * point, and a worker that does not die within a few seconds is disarmed and another one armed.
 * Every dead worker is replaced at once. The pause is armed at 15%: the worker SIGSTOPs itself in
 * a handler after its effect; the harness sends a copy of that message, waits until another worker
 * took the key over and completed it, then SIGCONTs it (its lease is long gone: the store must
 * refuse what it does next). The broker restarts at 40%, the store at 60%; replays of keys
 * completed long ago are published after the last event.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type ProcessedRecord, type ProcessedStore, scopeKey } from '@exactly-once/core';
import { createMongoStore } from '@exactly-once/store-mongo';
import { createRedisStore } from '@exactly-once/store-redis';
import { Cluster, Redis } from 'ioredis';
import { type Admin, type Kafka, Kafka as KafkaClient, logLevel } from 'kafkajs';
import { MongoClient } from 'mongodb';
import {
  committed,
  createTopics,
  distinctKeys,
  fullyCommitted,
  readTopic,
  topicSize,
} from '../kafka/helpers.js';
import { rawChannel } from '../rabbitmq/helpers.js';
import {
  type AppliedEntry,
  dropLedger,
  type KillPoint,
  ledgerKeys,
  tallyLedger,
} from '../support/crash-ledger.js';
import { workerArgs } from '../support/bundle.js';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import {
  CONSUMER,
  type SoakWorkerConfig,
  type StopEntry,
  type WorkerCommand,
  type WorkerState,
} from './protocol.js';
import type { SoakServers, StoreKind } from './servers.js';

export type Transport = 'rabbitmq' | 'kafka';
export interface Combination {
  readonly transport: Transport;
  readonly store: StoreKind;
}
export const ALL_COMBINATIONS: readonly Combination[] = (['rabbitmq', 'kafka'] as const).flatMap(
  (transport) => (['redis', 'redis-cluster', 'mongo'] as const).map((store) => ({ transport, store })),
);
export const combinationName = (c: Combination) => `${c.transport} x ${c.store}`;

export interface SoakOptions {
  readonly messages: number;
  /** Worker processes racing on the input. Default 8. */
  readonly workers?: number;
  /** SIGKILLs to deliver. Default 20. */
  readonly kills?: number;
  /** Fraction of the keys sent 2 or 3 times, the copies mixed in later. Default 0.1. */
  readonly duplicateRate?: number;
  /** Fraction of the keys sent once more after the last event (completed long before). Default 0.02. */
  readonly replayRate?: number;
  readonly leaseMs?: number;
  /** Default true: one SIGSTOP/SIGCONT, one broker restart, one store restart. */
  readonly pause?: boolean;
  readonly brokerRestart?: boolean;
  readonly storeRestart?: boolean;
  readonly servers: SoakServers;
  readonly log?: (line: string) => void;
}

export interface SoakRow {
  readonly combination: string;
  readonly messages: number;
  readonly duplicatesInjected: number;
  readonly kills: number;
  /** Kills by pipeline point, e.g. `in-handler 4, after-begin 3`. */
  readonly killPoints: string;
  readonly stops: number;
  /** How long the stopped worker stayed stopped. */
  readonly stoppedMs: number;
  readonly brokerRestarts: number;
  readonly storeRestarts: number;
  /** Acquisitions after the first (record attempts - 1), summed over keys. */
  readonly takeovers: number;
  /** Handler starts, killed ones included. */
  readonly handlerRuns: number;
  /** Handler runs that reached their effect: the non-idempotent count. */
  readonly appliedEffects: number;
  /** Distinct ctx.keyFor('effect') values: the idempotent effect. */
  readonly effects: number;
  readonly duplicateEffects: number;
  /** Keys not COMPLETED, plus input messages left unacked/uncommitted at the end. */
  readonly lost: number;
  readonly doubleCompletions: number;
  readonly deadLettered: number;
  readonly outgoingDistinct: number;
  /**
   * The stopped run reached its effect and another attempt completed its key: what the SIGSTOP is
   * for. Read from the stop entry, the applied list and the final record, not from the tally.
   */
  readonly stoppedRunSuperseded: boolean;
  /** What was read for it, printed with the details. */
  readonly stoppedRun: string;
  /** Runs superseded while their (stopped) worker lived, and completes the store refused as stale. */
  readonly staleAttempts: number;
  readonly staleCompletesRefused: number;
  /** Superseded attempts of other live workers (a lease lost to a store outage or a stall). */
  readonly liveTakeovers: number;
  /** Worker exits other than the soak's kills (each replaced). */
  readonly unplannedExits: number;
  /** Ledger lines the crash model does not explain (must be empty). */
  readonly problems: readonly string[];
  readonly wallMs: number;
}

const root = fileURLToPath(new URL('../..', import.meta.url));
const execFileP = promisify(execFile);

/** Pipeline points a kill is drawn from, per transport (crash-ledger.ts describes each). */
const POINTS: Record<Transport, readonly KillPoint[]> = {
  rabbitmq: ['after-begin', 'in-handler', 'after-complete', 'after-publish', 'before-ack', 'mid-batch'],
  kafka: [
    'after-begin',
    'in-handler',
    'after-complete',
    'after-publish',
    'before-ack',
    'before-commit',
    'mid-batch',
  ],
};

const rand = (n: number) => Math.floor(Math.random() * n);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const keyOf = (i: number) => `k${i}`;
const idOf = (i: number) => `m${i}`;

interface Worker {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly ready: Promise<boolean>;
  readonly exited: Promise<NodeJS.Signals | null>;
  /** Last lines of its output, shown when it dies unexpectedly. */
  readonly tail: string[];
  armed: boolean;
  paused: boolean;
  /** Ended by the harness (SIGTERM at the end): not replaced. */
  retiring: boolean;
}

/** Runs one combination and returns its row. Throws only when the run cannot finish. */
export async function runSoak(combination: Combination, options: SoakOptions): Promise<SoakRow> {
  const t0 = Date.now();
  const log = options.log ?? (() => {});
  const N = options.messages;
  const workerCount = options.workers ?? 8;
  const killTarget = options.kills ?? 20;
  const leaseMs = options.leaseMs ?? 3_000;
  const { transport } = combination;
  const name = combinationName(combination);
  const say = (line: string) => log(`[${name} ${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}`);

  const run = uniqueName(`soak-${transport}-${combination.store}`);
  const ledger = `ledger:${run}`;
  const storeName = `soak_${run.slice(-32)}`;
  const address = options.servers.address(combination.store);
  const ledgerRedis = new Redis(env.redisUrl, { maxRetriesPerRequest: 5 });
  const reader = openReader(address.kind, address.url, storeName);

  // ------------------------------------------------------------------ input: keys, copies, replays
  const sequence: number[] = Array.from({ length: N }, (_, i) => i);
  let copies = 0;
  for (let d = 0; d < Math.round(N * (options.duplicateRate ?? 0.1)); d++) {
    const i = rand(N);
    for (let c = 0; c < 1 + rand(2); c++) {
      // Somewhere after the first copy: right behind it (a racing duplicate) or much later.
      const first = sequence.indexOf(i);
      sequence.splice(first + 1 + rand(sequence.length - first), 0, i);
      copies++;
    }
  }
  let published = 0;
  let resent = 0;

  // ------------------------------------------------------------------ transport
  const source = run;
  const out = `${run}.out`;
  const dlq = `${run}.dlq`;
  const groupId = `${run}-group`;
  let kafka: Kafka | undefined;
  let admin: Admin | undefined;
  let raw: Awaited<ReturnType<typeof rawChannel>> | undefined;
  const rabbit = async () => {
    raw ??= await rawChannel();
    return raw;
  };
  const resetRabbit = async () => {
    await raw?.close().catch(() => {});
    raw = undefined;
  };
  if (transport === 'rabbitmq') {
    const r = await rabbit();
    await r.ch.assertQueue(source, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await r.ch.assertQueue(out, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  } else {
    kafka = new KafkaClient({
      clientId: `soak-harness-${process.pid}`,
      brokers: env.kafkaBrokers,
      logLevel: logLevel.NOTHING,
      retry: { retries: 30, initialRetryTime: 300, maxRetryTime: 5_000 },
    });
    admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [source], 16);
    await createTopics(admin, [out], 4);
    await createTopics(admin, [dlq], 1);
  }

  /** Sends key indices (each a JSON order with its x-idempotency-key), confirmed by the broker. */
  const send = async (indices: readonly number[]) => {
    for (let attempt = 1; ; attempt++) {
      try {
        if (transport === 'rabbitmq') {
          const r = await rabbit();
          for (let c = 0; c < indices.length; c += 200) {
            await Promise.all(
              indices
                .slice(c, c + 200)
                .map((i) => r.publish(source, { id: idOf(i) }, { 'x-idempotency-key': keyOf(i) })),
            );
          }
        } else {
          const producer = kafka!.producer({ idempotent: true, maxInFlightRequests: 1 });
          await producer.connect();
          try {
            for (let c = 0; c < indices.length; c += 500) {
              await producer.send({
                topic: source,
                acks: -1,
                messages: indices.slice(c, c + 500).map((i) => ({
                  key: idOf(i),
                  value: JSON.stringify({ id: idOf(i) }),
                  headers: { 'x-idempotency-key': keyOf(i) },
                })),
              });
            }
          } finally {
            await producer.disconnect().catch(() => {});
          }
        }
        return;
      } catch (error) {
        // A broken connection after a broker restart: send again (what was confirmed comes twice,
        // counted as duplicates).
        if (attempt >= 90) throw error;
        resent += indices.length;
        say(`publish failed (${String(error)}); again`);
        if (transport === 'rabbitmq') await resetRabbit();
        await sleep(1_000);
      }
    }
  };
  /** Publishes the input up to the position where `keys` distinct keys are out. */
  const publishUpToKeys = async (keys: number) => {
    const target = Math.min(sequence.length, Math.ceil((keys * sequence.length) / N));
    if (target <= published) return;
    const batch = sequence.slice(published, target);
    published = target;
    await send(batch);
  };

  // ------------------------------------------------------------------ workers
  const workers = new Set<Worker>();
  let kills = 0;
  let unplannedExits = 0;
  let ending = false;
  const config: SoakWorkerConfig = {
    transport,
    store: address,
    storeName,
    ledger,
    source,
    out,
    leaseMs,
    ...(transport === 'kafka' ? { groupId, dlqTopic: dlq } : {}),
  };
  const spawnWorker = (): Worker => {
    const child = spawn(process.execPath, workerArgs('test/soak/worker.ts'), {
      cwd: root,
      env: { ...process.env, EO_SOAK_WORKER: JSON.stringify(config) },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const tail: string[] = [];
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 30) tail.shift();
        if (process.env.EO_SOAK_VERBOSE) say(`worker ${child.pid}: ${line}`);
      }
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const w: Worker = {
      child,
      pid: child.pid ?? -1,
      tail,
      armed: false,
      paused: false,
      retiring: false,
      ready: new Promise<boolean>((resolve) => {
        child.on('message', (m: { type?: string }) => {
          if (m?.type === 'ready') resolve(true);
        });
        child.once('exit', () => resolve(false));
      }),
      exited: new Promise((resolve) => child.once('exit', (_code, signal) => resolve(signal))),
    };
    child.on('error', () => {});
    workers.add(w);
    void w.exited.then((signal) => {
      workers.delete(w);
      if (w.retiring) return;
      if (signal === 'SIGKILL') kills++;
      else {
        unplannedExits++;
        say(`worker ${w.pid} exited (${signal ?? child.exitCode}) unexpectedly:\n  ${tail.join('\n  ')}`);
      }
      if (!ending) spawnWorker();
    });
    return w;
  };
  const command = (w: Worker, c: WorkerCommand) => {
    if (w.child.connected) w.child.send(c);
  };
  const candidates = () =>
    [...workers].filter((w) => !w.armed && !w.paused && !w.retiring && w.child.exitCode === null);

  const progress = async () => ledgerRedis.hlen(ledgerKeys(ledger).completions);
  /** Keys published ahead of those completed: enough to keep every worker busy, no more. */
  const window = Math.max(40, Math.round(N * 0.03));
  /** Never past the next event (plus the window): the run cannot outrun its schedule. */
  let cap = 0;
  const feed = async () => publishUpToKeys(Math.min((await progress()) + window, cap));
  const waitProgress = async (keys: number, what: string) =>
    waitUntil(
      async () => {
        await feed();
        return (await progress()) >= keys;
      },
      {
        timeoutMs: 300_000,
        intervalMs: 200,
        message: () => `${name}: ${keys} keys completed before ${what}`,
      },
    );

  // ------------------------------------------------------------------ events
  /** Arms one worker after another until one dies at the point (SIGKILLs itself). */
  const killOne = async (): Promise<boolean> => {
    for (let tries = 0; tries < 6; tries++) {
      const pool = candidates();
      if (pool.length === 0) {
        await sleep(500);
        continue;
      }
      const victim = pool[rand(pool.length)]!;
      // Claimed before the await: a pause running beside this must not pick the same worker.
      victim.armed = true;
      if (!(await victim.ready)) {
        victim.armed = false;
        continue;
      }
      const point = POINTS[transport][rand(POINTS[transport].length)]!;
      // mid-batch fires on a batch of >= 2 completes only: the first one.
      command(victim, { type: 'arm', point, at: point === 'mid-batch' ? 1 : 1 + rand(3) });
      // Each try may take a window of new work: the victim gets its share of it.
      cap = Math.max(cap, (await progress()) + window);
      // Work keeps coming while it is armed: the point fires on the victim's share of it.
      let died = false;
      void victim.exited.then(() => {
        died = true;
      });
      for (const until = Date.now() + 4_000; !died && Date.now() < until; ) {
        await feed();
        await sleep(200);
      }
      if (died) return true;
      say(
        `worker ${victim.pid} did not die at ${point} (progress ${await progress()}, published ${published})`,
      );
      command(victim, { type: 'disarm' });
      victim.armed = false;
    }
    return false;
  };

  let stops = 0;
  let stoppedMs = 0;
  const pausedPids = new Set<number>();
  let stopEntry: StopEntry | undefined;
  /** SIGSTOP (by the worker itself, mid-handler), a copy of its message, takeover, SIGCONT. */
  const pauseOne = async (): Promise<void> => {
    for (let tries = 0; tries < 6 && stopEntry === undefined; tries++) {
      const pool = candidates();
      const victim = pool[rand(pool.length)];
      // Claimed before the await: a kill armed meanwhile must not pick the same worker (a worker
      // both stopped and armed dies on answers it reads after the SIGCONT, long stale).
      if (victim) victim.paused = true;
      if (!victim || !(await victim.ready)) {
        if (victim) victim.paused = false;
        await sleep(500);
        continue;
      }
      pausedPids.add(victim.pid);
      command(victim, { type: 'pause' });
      const entry = await waitUntil(
        async () =>
          (await ledgerRedis.lrange(`${ledger}:stops`, 0, -1))
            .map((s) => JSON.parse(s) as StopEntry)
            .find((e) => e.pid === victim.pid),
        { timeoutMs: 8_000, intervalMs: 100 },
      ).catch(() => undefined);
      if (!entry) {
        command(victim, { type: 'disarm' });
        victim.paused = false;
        continue;
      }
      stopEntry = entry;
      const t = Date.now();
      say(`worker ${victim.pid} stopped in ${entry.key} attempt ${entry.attempt}`);
      // The stopped worker's connection still holds the message; a copy goes to another worker,
      // which finds the key busy until the lease ends, then takes it over.
      const index = Number(entry.key.slice(entry.key.lastIndexOf(':k') + 2));
      await send([index]);
      copies++;
      await waitUntil(
        async () => {
          const r = await reader.store.get(entry.key);
          return r !== undefined && r.state === 'COMPLETED' && r.attempt > entry.attempt;
        },
        {
          timeoutMs: 180_000,
          intervalMs: 250,
          message: `${name}: takeover of ${entry.key} from the stopped worker`,
        },
      );
      // Longer than the lease by construction (a takeover needs it to end); at least 2 leases.
      await sleep(Math.max(0, 2 * leaseMs - (Date.now() - t)));
      stoppedMs = Date.now() - t;
      victim.child.kill('SIGCONT');
      stops++;
      say(`worker ${victim.pid} continued after ${stoppedMs} ms`);
      return;
    }
    throw new Error(`${name}: no worker could be paused`);
  };

  let brokerRestarts = 0;
  let storeRestarts = 0;
  const restartBroker = async () => {
    const t = Date.now();
    const infra = (...args: string[]) =>
      execFileP('bash', ['scripts/infra.sh', ...args], { cwd: root, timeout: 300_000 });
    try {
      await infra('down', transport);
    } finally {
      await infra('up', transport);
    }
    if (transport === 'rabbitmq') await resetRabbit();
    brokerRestarts++;
    say(`${transport} restarted in ${Date.now() - t} ms`);
  };
  const restartStore = async () => {
    const { downMs } = await options.servers.restart(combination.store);
    storeRestarts++;
    say(`${combination.store} crashed and restarted in ${downMs} ms`);
  };

  type Event = { at: number; what: string; run: () => Promise<void> };
  const events: Event[] = [];
  let killsMissed = 0;
  for (let k = 0; k < killTarget; k++) {
    events.push({
      at: 0.05 + (0.8 * (k + Math.random())) / killTarget,
      what: `kill ${k + 1}`,
      run: async () => {
        if (!(await killOne())) killsMissed++;
      },
    });
  }
  let pausing: Promise<void> | undefined;
  if (options.pause ?? true)
    events.push({
      at: 0.15,
      what: 'pause',
      run: async () => {
        pausing = pauseOne();
        // Its failure is reported at the end, not left unhandled meanwhile.
        pausing.catch(() => {});
      },
    });
  if (options.brokerRestart ?? true) events.push({ at: 0.4, what: 'broker restart', run: restartBroker });
  if (options.storeRestart ?? true) events.push({ at: 0.6, what: 'store restart', run: restartStore });
  events.sort((a, b) => a.at - b.at);

  // ------------------------------------------------------------------ the run
  const finalRecords = new Map<string, ProcessedRecord | undefined>();
  let completed = 0;
  let remaining = 0;
  let outgoing = new Set<string>();
  let replays = 0;
  try {
    for (let i = 0; i < workerCount; i++) spawnWorker();
    await Promise.all([...workers].map((w) => w.ready));
    say(`${workerCount} workers ready`);
    const keysAt = (i: number) => (i < events.length ? Math.floor(events[i]!.at * N) : N);
    for (const [i, e] of events.entries()) {
      cap = keysAt(i) + window;
      await waitProgress(keysAt(i), e.what);
      cap = keysAt(i + 1) + window;
      await e.run();
    }
    await publishUpToKeys(N);
    await pausing;
    // Replays: keys of the first half, completed long ago, sent once more.
    const replayed = Array.from({ length: Math.round(N * (options.replayRate ?? 0.02)) }, () =>
      rand(Math.ceil(N / 2)),
    );
    await send(replayed);
    replays = replayed.length;
    say(`all published (${sequence.length + replays} messages); kills ${kills}, waiting for the end`);

    // The end: every key COMPLETED, the input drained (RabbitMQ) or committed (Kafka).
    const storeKeys = Array.from({ length: N }, (_, i) => scopeKey('default', CONSUMER, keyOf(i)));
    /** Keys known COMPLETED (read so, or in the ledger): they stay so, never read again. */
    const done = new Set<string>();
    const read = async (keys: readonly string[]) => {
      for (let c = 0; c < keys.length; c += 1_000) {
        const chunk = keys.slice(c, c + 1_000);
        const records = await reader.getMany(chunk);
        for (const [j, k] of chunk.entries()) {
          finalRecords.set(k, records[j]);
          if (records[j]?.state === 'COMPLETED') done.add(k);
        }
      }
    };
    /**
     * While the workers run, only the keys neither seen COMPLETED nor in the ledger's completions
     * (a worker writes one only after the store acknowledged the complete, so the key is
     * COMPLETED): reading all 10,000 records, even once, was the heaviest load on FerretDB at the
     * end of a run (each read is a few finds, each a table scan on FerretDB 1.x).
     */
    const readOpen = async () => {
      for (const k of await ledgerRedis.hkeys(ledgerKeys(ledger).completions)) done.add(k);
      await read(storeKeys.filter((k) => !done.has(k)));
      completed = done.size;
      return completed;
    };
    /** Every record, for the tally: once, after the workers stopped. */
    const readAll = async () => {
      await read(storeKeys);
      completed = storeKeys.filter((k) => finalRecords.get(k)?.state === 'COMPLETED').length;
      return completed;
    };
    const inputDone = async () =>
      transport === 'rabbitmq'
        ? (await (await rabbit()).count(source)) === 0
        : fullyCommitted(admin!, groupId, source);
    /** Keys not COMPLETED with their records, and (Kafka) the partitions not fully committed. */
    const leftovers = async () => {
      await readOpen();
      const open = [...finalRecords.entries()].filter(([k, r]) => !done.has(k) && r?.state !== 'COMPLETED');
      const now = Date.now();
      const lines = open
        .slice(0, 20)
        .map(([k, r]) =>
          r === undefined
            ? `  ${k}: no record`
            : `  ${k}: ${r.state} attempt ${r.attempt} fence ${r.fence}` +
              (r.state === 'IN_PROGRESS' ? ` lease ${r.leaseUntil - now} ms from now, owner ${r.owner}` : ''),
        );
      if (transport === 'kafka') {
        const ends = await admin!.fetchTopicOffsets(source);
        const done = await committed(admin!, groupId, source);
        const behind = ends
          .filter((p) => (done.get(p.partition) ?? -1) < Number(p.high) && p.high !== p.low)
          .map((p) => `${p.partition}: committed ${done.get(p.partition) ?? 'none'} of ${p.high}`);
        const group = await admin!.describeGroups([groupId]);
        lines.push(
          `  partitions behind: ${behind.join(', ') || 'none'}; group ${group.groups[0]?.state}, ` +
            `${group.groups[0]?.members.length} members; live workers ${workers.size}`,
        );
      }
      return `${open.length} keys not COMPLETED:\n${lines.join('\n')}\n${await workerStates()}`;
    };
    /** Each live worker's own account (stats, partitions, last events), asked over IPC. */
    const workerStates = async () => {
      const states = await Promise.all(
        [...workers].map(
          (w) =>
            new Promise<string>((resolve) => {
              const answer = (m: WorkerState) => {
                if (m?.type !== 'state') return;
                clearTimeout(timer);
                w.child.off('message', answer);
                resolve(
                  `worker ${w.pid}: stats ${JSON.stringify(m.stats)}\n` +
                    (m.kafka ? `  kafka ${JSON.stringify(m.kafka)}\n` : '') +
                    (m.store ? `  store ${JSON.stringify(m.store)}\n` : '') +
                    `  ${m.recent.join('\n  ')}`,
                );
              };
              const timer = setTimeout(() => {
                w.child.off('message', answer);
                resolve(`worker ${w.pid}: no answer (stopped?)`);
              }, 3_000);
              w.child.on('message', answer);
              w.child.send({ type: 'dump' } satisfies WorkerCommand, () => {});
            }),
        ),
      );
      return states.join('\n');
    };
    let state = '';
    let polls = 0;
    // Reading records is slow on FerretDB (a few queries per key): not more often than every
    // other reading's time.
    let nextRead = 0;
    await waitUntil(
      async () => {
        // The ledger's count is a hint only: a complete whose reply a store crash cut is
        // COMPLETED in the store without a completion in the ledger. The records decide.
        const seen = await progress();
        const drained = await inputDone();
        state = `completions seen ${seen}/${N}, input ${drained ? 'drained' : 'pending'}, completed ${completed}`;
        if (!drained || (seen < N - 50 && ++polls % 10 !== 0) || Date.now() < nextRead) return false;
        const t = Date.now();
        const all = (await readOpen()) === N;
        nextRead = Date.now() + 2 * (Date.now() - t);
        return all;
      },
      {
        // A slow run (FerretDB at 10,000 keys, a loaded CI machine) is waited for; a stalled one
        // fails after 5 minutes without a new completion, with every worker's account.
        timeoutMs: 300_000,
        progress: () => state,
        intervalMs: 1_000,
        message: () => `${name}: the end (${state})`,
      },
    ).catch(async (error: unknown) => {
      // What is left and where: the next person needs this to tell a stuck partition from a
      // stuck record.
      throw new Error(`${(error as Error).message}\n${await leftovers().catch((e) => `(no details: ${e})`)}`);
    });
    ending = true;
    const stopAll = async () => {
      const all = [...workers];
      for (const w of all) {
        w.retiring = true;
        w.child.kill('SIGCONT');
        w.child.kill('SIGTERM');
      }
      await Promise.all(
        all.map((w) => Promise.race([w.exited, sleep(20_000).then(() => w.child.kill('SIGKILL'))])),
      );
    };
    await stopAll();
    if (transport === 'rabbitmq') {
      // Unacked copies went back to the queue when their workers stopped: a last worker drains
      // them (duplicates of completed keys), until the queue stays empty.
      for (let round = 0; round < 3 && (await (await rabbit()).count(source)) > 0; round++) {
        ending = false;
        spawnWorker();
        await waitUntil(async () => (await (await rabbit()).count(source)) === 0, {
          timeoutMs: 120_000,
          intervalMs: 500,
          message: `${name}: the last copies`,
        }).catch(() => {});
        await sleep(2 * leaseMs);
        ending = true;
        await stopAll();
      }
      remaining = await (await rabbit()).count(source);
      const r = await rabbit();
      await waitUntil(
        async () => {
          for (const m of await r.drain(out))
            outgoing.add(String(m.properties.headers?.['x-idempotency-key']));
          return outgoing.size >= N;
        },
        { timeoutMs: 60_000, intervalMs: 500, message: `${name}: outgoing messages` },
      ).catch(() => {});
    } else {
      remaining = await uncommitted(admin!, groupId, source);
      const records = await readTopic(kafka!, out, (r) => distinctKeys(r) >= N, 120_000).catch(() => []);
      outgoing = new Set(records.map((r) => r.headers['x-idempotency-key'] ?? ''));
    }
    await readAll();

    // ---------------------------------------------------------------- the counts
    const tally = await tallyLedger(ledgerRedis, ledger, finalRecords);
    const fenced = await ledgerRedis.hgetall(`${ledger}:fenced`);
    const staleLines: string[] = [];
    const liveLines: string[] = [];
    const problems: string[] = [];
    for (const p of tally.problems) {
      const m = /was superseded though its worker \(pid (\d+)\) lived/.exec(p);
      if (m && pausedPids.has(Number(m[1]))) staleLines.push(p);
      else if (m) liveLines.push(p);
      else problems.push(p);
    }
    // The stopped run: taken over, completed by another attempt, completed at most once.
    let stoppedRunSuperseded = false;
    let stoppedRun = 'none';
    if (stopEntry) {
      const r = finalRecords.get(stopEntry.key);
      const done = Number(await ledgerRedis.hget(ledgerKeys(ledger).completions, stopEntry.key));
      if (r?.state !== 'COMPLETED' || r.attempt <= stopEntry.attempt)
        problems.push(
          `stopped run ${stopEntry.key}#${stopEntry.attempt}: record ${r?.state} attempt ${r?.attempt}`,
        );
      // No completion in the ledger is possible: the completing worker's reply was cut (a store
      // restart, a broken client) after the write landed, and later copies were duplicates.
      // The record above says COMPLETED by a later attempt; more than one completion is a fault.
      if (done > 1) problems.push(`stopped run ${stopEntry.key}: completed ${done}x`);
      const stopped = stopEntry;
      const reachedEffect = (await ledgerRedis.lrange(ledgerKeys(ledger).applied, 0, -1))
        .map((s) => JSON.parse(s) as AppliedEntry)
        .some((a) => a.key === stopped.key && a.attempt === stopped.attempt && a.pid === stopped.pid);
      stoppedRunSuperseded = reachedEffect && r?.state === 'COMPLETED' && r.attempt > stopped.attempt;
      stoppedRun =
        `${stopped.key}#${stopped.attempt} (pid ${stopped.pid}): reached its effect ${reachedEffect}, ` +
        `final record ${r?.state} attempt ${r?.attempt}, pid among the killed ${tally.kills.some((k) => k.pid === stopped.pid)}`;
    }
    if (killsMissed > 0) say(`${killsMissed} kill(s) found no worker to fire in`);
    const byPoint = new Map<string, number>();
    for (const k of tally.kills) byPoint.set(k.point, (byPoint.get(k.point) ?? 0) + 1);
    const deadLettered =
      transport === 'rabbitmq'
        ? await (await rabbit()).check(`${source}.dlq`).then((q) => q?.messageCount ?? 0)
        : await topicSize(admin!, dlq);
    if (tally.kills.length !== kills) problems.push(`${kills} SIGKILLs, ${tally.kills.length} in the ledger`);
    return {
      combination: name,
      messages: N,
      duplicatesInjected: copies + replays + resent,
      kills,
      killPoints: [...byPoint].map(([p, n]) => `${p} ${n}`).join(', '),
      stops,
      stoppedMs,
      brokerRestarts,
      storeRestarts,
      takeovers: tally.takeovers,
      handlerRuns: tally.handlerStarts,
      appliedEffects: tally.applied,
      effects: tally.idempotentEffects,
      duplicateEffects: tally.duplicateEffects,
      lost: N - completed + remaining,
      doubleCompletions: tally.doubleCompletions,
      deadLettered,
      outgoingDistinct: outgoing.size,
      stoppedRunSuperseded,
      stoppedRun,
      staleAttempts: staleLines.length,
      staleCompletesRefused: Object.values(fenced).reduce((n, v) => n + Number(v), 0),
      liveTakeovers: liveLines.length,
      unplannedExits,
      problems,
      wallMs: Date.now() - t0,
    };
  } finally {
    ending = true;
    for (const w of workers) {
      w.retiring = true;
      w.child.kill('SIGKILL');
    }
    await Promise.all([...workers].map((w) => w.exited));
    await dropLedger(ledgerRedis, ledger).catch(() => {});
    await ledgerRedis.del(`${ledger}:fenced`, `${ledger}:stops`).catch(() => {});
    await ledgerRedis.quit().catch(() => {});
    await reader.close().catch(() => {});
    if (transport === 'rabbitmq') {
      const r = await rabbit().catch(() => undefined);
      await r?.deleteQueues([source, out, `${source}.dlq`, `${source}.retry.100`, `${source}.retry.500`]);
      await resetRabbit();
    } else {
      await admin?.deleteTopics({ topics: [source, out, dlq] }).catch(() => {});
      await admin?.disconnect().catch(() => {});
    }
  }
}

/** Records of `topic` past the group's committed offsets. */
async function uncommitted(admin: Admin, groupId: string, topic: string): Promise<number> {
  const ends = await admin.fetchTopicOffsets(topic);
  const done = await committed(admin, groupId, topic);
  return ends.reduce((n, p) => n + Number(p.high) - Math.max(Number(p.low), done.get(p.partition) ?? -1), 0);
}

/** The harness's own store client: reads records (the ground truth) and the stopped key. */
function openReader(
  kind: StoreKind,
  url: string,
  storeName: string,
): {
  store: ProcessedStore;
  getMany(keys: string[]): Promise<(ProcessedRecord | undefined)[]>;
  close(): Promise<void>;
} {
  if (kind === 'mongo') {
    const client = new MongoClient(url, { serverSelectionTimeoutMS: 5_000 });
    const store = createMongoStore({ db: client.db(storeName) });
    // In bulk: on FerretDB 1.x every `get` that misses an element scans the collection, and the
    // tally reads all 10,000 records (a get each took over half an hour at the end of a run).
    return { store, getMany: (keys) => store.getMany(keys), close: () => client.close() };
  }
  const client =
    kind === 'redis'
      ? new Redis(url, { maxRetriesPerRequest: 2 })
      : new Cluster(
          url.split(',').map((hp) => ({ host: hp.split(':')[0]!, port: Number(hp.split(':')[1]) })),
          { redisOptions: { maxRetriesPerRequest: 2 } },
        );
  client.on('error', () => {}); // down during the store restart: reads are retried
  const store = createRedisStore({ client, keyPrefix: storeName });
  return {
    store,
    getMany: (keys) => Promise.all(keys.map((k) => store.get(k))),
    close: async () => {
      await client.quit();
    },
  };
}

const COLUMNS: [keyof SoakRow, string][] = [
  ['combination', 'combination'],
  ['messages', 'messages'],
  ['duplicatesInjected', 'duplicates injected'],
  ['kills', 'SIGKILLs'],
  ['stops', 'SIGSTOPs'],
  ['brokerRestarts', 'broker restarts'],
  ['storeRestarts', 'store restarts'],
  ['takeovers', 'takeovers'],
  ['handlerRuns', 'handler runs'],
  ['appliedEffects', 'non-idempotent effects'],
  ['effects', 'idempotent effects'],
  ['duplicateEffects', 'duplicate effects'],
  ['lost', 'lost'],
  ['doubleCompletions', 'double completions'],
  ['wallMs', 'wall time'],
];

const cell = (row: SoakRow, k: keyof SoakRow) =>
  k === 'wallMs' ? `${(row.wallMs / 1000).toFixed(0)} s` : String(row[k] as string | number);

/** The rows as a Markdown table (the columns the README shows). */
export function soakTable(rows: readonly SoakRow[]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [
    line(COLUMNS.map(([, t]) => t)),
    line(COLUMNS.map(([k]) => (k === 'combination' ? '---' : '---:'))),
    ...rows.map((r) => line(COLUMNS.map(([k]) => cell(r, k)))),
  ].join('\n');
}

/** One combination's row with the details behind it, for the log. */
export function soakDetails(row: SoakRow): string {
  return [
    `${row.combination}: ${row.messages} messages, ${row.duplicatesInjected} duplicates injected, wall ${(row.wallMs / 1000).toFixed(1)} s`,
    `  SIGKILLs ${row.kills} (${row.killPoints}); SIGSTOP ${row.stops} for ${row.stoppedMs} ms; broker restarts ${row.brokerRestarts}; store restarts ${row.storeRestarts}`,
    `  takeovers ${row.takeovers}; handler runs ${row.handlerRuns}; non-idempotent effects ${row.appliedEffects}; idempotent effects ${row.effects}`,
    `  duplicate effects ${row.duplicateEffects}; lost ${row.lost}; double completions ${row.doubleCompletions}; dead-lettered ${row.deadLettered}; outgoing distinct ${row.outgoingDistinct}`,
    `  stopped run ${row.stoppedRun}`,
    `  stale attempts of the stopped worker ${row.staleAttempts}; stale completes refused ${row.staleCompletesRefused}; takeovers from live workers ${row.liveTakeovers}; unplanned worker exits ${row.unplannedExits}`,
    ...(row.problems.length
      ? [`  PROBLEMS (${row.problems.length}):`, ...row.problems.slice(0, 20).map((p) => `    ${p}`)]
      : []),
  ].join('\n');
}
