/** What the soak harness (soak.ts) and its workers (worker.ts) share. */
import type { KillPoint } from '../support/crash-ledger.js';
import type { StoreAddress } from './servers.js';

export interface SoakWorkerConfig {
  readonly transport: 'rabbitmq' | 'kafka';
  readonly store: StoreAddress;
  /** Redis key prefix (redis, redis-cluster) or database name (mongo). */
  readonly storeName: string;
  /** Key prefix of the ledger on the shared Redis (env.redisUrl). */
  readonly ledger: string;
  /** RabbitMQ queue or Kafka topic. */
  readonly source: string;
  readonly out: string;
  /** Kafka only. */
  readonly groupId?: string;
  readonly dlqTopic?: string;
  readonly leaseMs: number;
}

export type WorkerCommand =
  | { readonly type: 'arm'; readonly point: KillPoint; readonly at: number }
  | { readonly type: 'disarm' }
  | { readonly type: 'pause' }
  /** Reply with a {@link WorkerState}: the harness prints it when a run stalls. */
  | { readonly type: 'dump' };

/** What a worker reports when asked (dump): enough to tell a hung batch from a paused partition. */
export interface WorkerState {
  readonly type: 'state';
  readonly stats: unknown;
  /** Kafka: the partitions each client has assigned and paused. */
  readonly kafka?: readonly { assigned: unknown; paused: unknown }[];
  /** MongoDB: the driver's view of each server (type, last error). */
  readonly store?: unknown;
  /** The last lines the worker logged about its work (EO_SOAK_VERBOSE adds every handler run). */
  readonly recent: readonly string[];
}

export const CONSUMER = 'soak';

export interface StopEntry {
  readonly key: string;
  readonly attempt: number;
  readonly fence: number;
  readonly pid: number;
}
