/**
 * Refuses a server that may evict keys. Under memory pressure an eviction policy drops keys
 * silently: a dropped COMPLETED record makes the next redelivery of its message run again, which
 * is exactly what this store exists to prevent. Every `volatile-*` policy is as dangerous as the
 * `allkeys-*` ones, because every record here carries a TTL.
 */
import { ConfigError, type Logger } from '@exactly-once/core';
import { type RedisClient, unavailable } from './client.js';

export const SAFE_POLICY = 'noeviction';

export interface ServerCheckOptions {
  readonly client: RedisClient;
  readonly logger: Logger;
  /** When false, an unsafe policy is logged instead of thrown. */
  readonly enforce: boolean;
  /** Told what the servers answered besides the policy, before an unsafe policy is thrown. */
  readonly seen?: (state: ServerState) => void;
}

/**
 * Checks `maxmemory-policy` on the server, or on every master of a cluster. A server that refuses
 * `CONFIG GET` (an ACL user without `+config|get`, which the store does not need otherwise, or a
 * managed service that renames CONFIG) cannot be checked: that is logged once per check, as a
 * warning with `code: 'CONFIG_GET_REFUSED'`, and the store works on.
 */
export async function checkServer(options: ServerCheckOptions): Promise<void> {
  const { client, logger, enforce } = options;
  const refused: string[] = [];
  let unsafe: string | undefined;
  let evictedKeys: number | undefined;
  for (const node of await targets(client)) {
    let reply: unknown;
    try {
      reply = await node.call('CONFIG', 'GET', 'maxmemory-policy');
    } catch (cause) {
      // A server reply (NOPERM, unknown command), not an outage.
      if (cause instanceof Error && cause.name === 'ReplyError') {
        refused.push(cause.message);
        continue;
      }
      throw unavailable('checkServer', cause);
    }
    const policy = parsePolicy(reply);
    if (policy === undefined) {
      logger.warn('CONFIG GET maxmemory-policy returned nothing; make sure it is "noeviction"');
    } else if (policy !== SAFE_POLICY) {
      const message =
        `Redis maxmemory-policy is "${policy}": the server may evict processed-records under memory ` +
        `pressure, and an evicted record lets its message be processed again. Set it to "${SAFE_POLICY}" ` +
        '(or pass checkEvictionPolicy: false to accept the risk).';
      if (enforce) unsafe ??= message;
      else logger.warn(message);
    }
    await checkVersion(node);
    const evicted = await evictedKeysOf(node);
    if (evicted !== undefined) evictedKeys = (evictedKeys ?? 0) + evicted;
  }
  if (refused.length > 0) {
    const denied = refused.some((m) => m.startsWith('NOPERM'));
    logger.warn(
      `cannot read maxmemory-policy: CONFIG GET was refused${denied ? ' (the ACL user lacks +config|get)' : ''}; ` +
        'make sure the policy is "noeviction" (or pass checkEvictionPolicy: false to skip this check)',
      { code: 'CONFIG_GET_REFUSED', error: refused[0] },
    );
  }
  // Seen whatever the policy: keys evicted while it was unsafe are the ones to report.
  options.seen?.(evictedKeys === undefined ? {} : { evictedKeys });
  if (unsafe !== undefined) throw new ConfigError(unsafe);
}

/** What a check saw besides the policy. */
export interface ServerState {
  /** `evicted_keys` of INFO stats, summed over the masters; absent where INFO is refused. */
  readonly evictedKeys?: number;
}

/** The node's `evicted_keys` since it started, or undefined where INFO is refused. */
async function evictedKeysOf(node: RedisClient): Promise<number | undefined> {
  let info: unknown;
  try {
    info = await node.call('INFO', 'stats');
  } catch (cause) {
    if (cause instanceof Error && cause.name === 'ReplyError') return undefined;
    throw unavailable('checkServer', cause);
  }
  const evicted = /evicted_keys:(\d+)/.exec(String(info));
  return evicted ? Number(evicted[1]) : undefined;
}

/**
 * Refuses Redis before 7.0, whose Lua cannot load the batch scripts (script flags). A server that
 * refuses `INFO` (an ACL user without `+info`) is not checked: the scripts then fail to load with
 * Redis's own compile error.
 */
async function checkVersion(node: RedisClient): Promise<void> {
  let info: unknown;
  try {
    info = await node.call('INFO', 'server');
  } catch (cause) {
    if (cause instanceof Error && cause.name === 'ReplyError') return;
    throw unavailable('checkServer', cause);
  }
  const version = /redis_version:(\d+)\.(\d+)/.exec(String(info));
  if (version && Number(version[1]) < 7) {
    throw new ConfigError(
      `Redis ${version[1]}.${version[2]} is too old: the Redis store needs Redis 7.0 or newer (its batch ` +
        'scripts use script flags)',
    );
  }
}

/** `CONFIG GET` answers `[name, value]` (RESP2) or `{ name: value }` (RESP3). */
export function parsePolicy(reply: unknown): string | undefined {
  if (Array.isArray(reply)) {
    const value: unknown = reply[1];
    return value === undefined ? undefined : String(value);
  }
  if (reply !== null && typeof reply === 'object') {
    const value = (reply as Record<string, unknown>)['maxmemory-policy'];
    return value === undefined ? undefined : String(value);
  }
  return undefined;
}

async function targets(client: RedisClient): Promise<RedisClient[]> {
  if (!client.isCluster || client.nodes === undefined) return [client];
  // A cluster client learns its nodes on connect; a keyless command makes it connect.
  try {
    await client.call('PING');
  } catch (cause) {
    throw unavailable('checkServer', cause);
  }
  const masters = client.nodes('master');
  return masters.length > 0 ? masters : [client];
}
