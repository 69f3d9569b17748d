/**
 * CPU time of the processes a consume run keeps busy: this process (the consumer), the broker
 * and the Redis server(s). On a machine where all of them share the CPUs, throughput is roughly
 * CPUs / (total CPU per message), so the split says which process an added microsecond comes from.
 *
 * Servers are found without asking the operator: Redis by `INFO server`'s `process_id`, the
 * brokers by the PID files `scripts/infra.sh` writes. A server started some other way (or on
 * another machine) is left out and its column printed as `-`. Linux only (`/proc`).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Broker } from './consume.js';

/** Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on every Linux build that matters). */
const TICKS_PER_SECOND = 100;

const infraRun = join(
  process.env.EXACTLY_ONCE_INFRA_HOME ?? join(homedir(), '.cache', 'exactly-once-infra'),
  'run',
);

function readPidFile(name: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(infraRun, `${name}.pid`), 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The broker's server process: RabbitMQ's Erlang VM, Kafka's JVM. */
export function brokerPid(broker: Broker): number | undefined {
  return readPidFile(broker === 'rabbitmq' ? 'rabbitmq-beam' : 'kafka');
}

/** `utime + stime` of one process, all its threads, in µs; undefined once it is gone. */
function processCpuUs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1_000_000) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** The pid and every process under it (a server started through a shell script runs below it). */
function withDescendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const queue = [root];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    out.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return out;
}

export interface CpuSnapshot {
  consumerUs: number;
  brokerUs: number | undefined;
  redisUs: number | undefined;
}

/** The processes measured besides this one: the broker's, and the Redis servers the variant uses. */
export interface CpuGroups {
  readonly broker: readonly number[];
  readonly redis: readonly number[];
}

export function resolveGroups(broker: Broker, redisPids: readonly number[]): CpuGroups {
  const root = brokerPid(broker);
  return { broker: root === undefined ? [] : withDescendants(root), redis: [...redisPids] };
}

function sum(pids: readonly number[]): number | undefined {
  if (pids.length === 0) return undefined;
  let total = 0;
  for (const pid of pids) {
    const us = processCpuUs(pid);
    if (us === undefined) return undefined;
    total += us;
  }
  return total;
}

export function snapshot(groups: CpuGroups): CpuSnapshot {
  const own = process.cpuUsage();
  return { consumerUs: own.user + own.system, brokerUs: sum(groups.broker), redisUs: sum(groups.redis) };
}

export interface CpuPerMessage {
  consumerUs: number;
  brokerUs: number | undefined;
  redisUs: number | undefined;
}

export function perMessage(before: CpuSnapshot, after: CpuSnapshot, messages: number): CpuPerMessage {
  const delta = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined ? undefined : (b - a) / messages;
  return {
    consumerUs: (after.consumerUs - before.consumerUs) / messages,
    brokerUs: delta(before.brokerUs, after.brokerUs),
    redisUs: delta(before.redisUs, after.redisUs),
  };
}

/** `process_id` of each server's `INFO server`. */
export async function redisServerPids(
  clients: readonly { info(section: string): Promise<string> }[],
): Promise<number[]> {
  const infos = await Promise.all(clients.map((c) => c.info('server')));
  return infos
    .map((info) => Number(/^process_id:(\d+)/m.exec(info)?.[1]))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}
