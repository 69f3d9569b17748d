/**
 * When the eviction policy check runs. Every operation waits for the first check. A policy can
 * also change later (`CONFIG SET`, a restart or failover onto a server configured otherwise), and
 * records evicted after that would let their messages run again with nothing said: so begins
 * check again every {@link RECHECK_MS}, and right after the client reconnects, and are refused
 * (`ConfigError`, which a consumer defers as a store outage) while the policy is unsafe.
 * Completions and other writes of runs already begun are never refused: refusing them would
 * leave a run whose handler already ran unrecorded. Keys the server evicted since the last check
 * are logged as an error, whatever the policy is now.
 */
import { ConfigError, type Logger } from '@exactly-once/core';
import type { RedisClient } from './client.js';
import { checkServer, type ServerState } from './server-check.js';

/** How often begins check the policy again while it is safe. */
export const RECHECK_MS = 60_000;
/** How often while it is not: a fixed policy lets begins through this soon. */
export const REFUSED_RECHECK_MS = 5_000;

export interface PolicyGate {
  /** Resolves once the first check passed (at once when the check is opted out of). */
  ready(): Promise<void>;
  /** `ready`, and refused while a later check found the policy unsafe. */
  readyToBegin(): Promise<void>;
  /** Runs the check now, as `checkServer()` (throws on an unsafe policy when enforced). */
  check(): Promise<void>;
  /** Stops following the client's reconnects (its one listener stays, shared by the stores on it). */
  close(): void;
}

export function policyGate(options: {
  readonly client: RedisClient;
  readonly logger: Logger;
  readonly enforce: boolean;
  /** Monotonic clock, injectable for tests. */
  readonly now?: () => number;
}): PolicyGate {
  const { client, logger, enforce } = options;
  const now = options.now ?? (() => performance.now());
  let evicted: number | undefined;
  const seen = ({ evictedKeys: count }: ServerState): void => {
    if (count !== undefined && evicted !== undefined && count > evicted) {
      logger.error(
        `Redis evicted ${count - evicted} key(s) since the store last looked: any of them may be a processed-record, whose message then runs again if it comes back. Set maxmemory-policy to "noeviction" and give Redis the memory it needs`,
        { code: 'KEYS_EVICTED', evictedKeys: count - evicted },
      );
    }
    // A restarted server counts from 0 again.
    if (count !== undefined) evicted = count;
  };
  const check = () => checkServer({ client, logger, enforce, seen });

  let first: Promise<void> | undefined;
  let passed = !enforce;
  const ready = async (): Promise<void> => {
    if (passed) return;
    first ??= check().then(
      () => {
        passed = true;
        recheckAt = now() + RECHECK_MS;
      },
      (error: unknown) => {
        // An outage during the check is retried on the next call; an unsafe policy keeps failing.
        if (!(error instanceof ConfigError)) first = undefined;
        throw error;
      },
    );
    await first;
  };

  let recheckAt = Number.POSITIVE_INFINITY;
  let refused: ConfigError | undefined;
  let rechecking: Promise<void> | undefined;
  const recheck = (): Promise<void> => {
    rechecking ??= check()
      .then(
        () => {
          if (refused) logger.info('Redis maxmemory-policy is "noeviction" again: begins go on');
          refused = undefined;
          recheckAt = now() + RECHECK_MS;
        },
        (error: unknown) => {
          recheckAt = now() + REFUSED_RECHECK_MS;
          if (!(error instanceof ConfigError)) {
            // A node that does not answer (a master down on a Cluster, a reconnect under way):
            // the begin goes on as the last check left it, and asks again soon. Failing it would
            // fail the begins of every node for one node's outage.
            logger.debug('eviction policy check failed; tried again shortly', { error: String(error) });
            return;
          }
          if (!refused) {
            logger.error(
              'Redis maxmemory-policy is no longer "noeviction": begins are refused until it is again',
              { error: error.message },
            );
          }
          refused = error;
        },
      )
      .finally(() => {
        rechecking = undefined;
      });
    return rechecking;
  };

  // After a reconnect the server may be another one (a restart, a failover): check before the
  // next begin. The first connect is covered by `ready`.
  const reconnected = () => {
    if (passed) recheckAt = 0;
  };
  // Nothing to follow when the check is opted out of.
  const unwatch = enforce ? onReconnect(client, reconnected) : () => {};

  return {
    ready,
    async readyToBegin() {
      await ready();
      if (!enforce) return;
      if (now() >= recheckAt) await recheck();
      if (refused) throw refused;
    },
    check,
    close: unwatch,
  };
}

/** Per client, what its reconnects tell: one listener a client, however many stores share it. */
const watchers = new WeakMap<object, Set<() => void>>();

function onReconnect(client: RedisClient, listener: () => void): () => void {
  let listeners = watchers.get(client);
  if (listeners === undefined) {
    const all = new Set<() => void>();
    const tell = () => {
      for (const l of all) l();
    };
    client.on?.('ready', tell);
    client.on?.('+node', tell);
    watchers.set(client, all);
    listeners = all;
  }
  listeners.add(listener);
  const own = listeners;
  return () => {
    own.delete(listener);
  };
}
