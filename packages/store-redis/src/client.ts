/**
 * The slice of an ioredis client (standalone `Redis` or `Cluster`) the store uses, typed
 * structurally so the public API does not tie callers to one ioredis build.
 */
import { CorruptRecordError, StoreUnavailableError } from '@exactly-once/core';
import { type LuaScript, scripts } from './generated/scripts.js';

export type RedisArg = string | Buffer | number;

export interface RedisClient {
  /** `true` for an ioredis `Cluster`. */
  readonly isCluster: boolean;
  defineCommand(name: string, definition: { lua: string; numberOfKeys?: number }): void;
  call(command: string, ...args: RedisArg[]): Promise<unknown>;
  pipeline(): unknown;
  quit(): Promise<unknown>;
  /** Connection events (`ready` on every connect; a Cluster's `+node`), where the client has them. */
  on?(event: string, listener: () => void): unknown;
  /** Cluster only: the node connections. */
  nodes?(role?: 'all' | 'master' | 'slave'): RedisClient[];
}

export type ScriptName = keyof typeof scripts;
type Command = (...args: RedisArg[]) => Promise<unknown>;

const registered = new WeakSet<object>();

/**
 * Registers every script once per client. ioredis sends a defined command as EVALSHA and falls
 * back to EVAL on NOSCRIPT, so a restarted or failed-over server reloads them transparently.
 */
export function registerScripts(client: RedisClient): void {
  if (registered.has(client)) return;
  for (const script of Object.values(scripts) as LuaScript[]) {
    const definition =
      script.numberOfKeys === undefined
        ? { lua: script.lua }
        : { lua: script.lua, numberOfKeys: script.numberOfKeys };
    client.defineCommand(script.command, definition);
  }
  registered.add(client);
}

/**
 * Runs a script, replies as Buffers. A value at a record's name that is not a record (the
 * scripts' EOCORRUPT, see includes/record.lua), or one of another type at a key the call touches,
 * becomes a CorruptRecordError naming `key`; any other failure a retryable StoreUnavailableError.
 */
export async function runScript(
  client: RedisClient | object,
  name: ScriptName,
  operation: string,
  args: RedisArg[],
  key?: string,
): Promise<unknown> {
  const command = (client as Record<string, Command | undefined>)[`${scripts[name].command}Buffer`];
  if (command === undefined) throw new Error(`script ${name} is not registered on this client`);
  try {
    return await command.apply(client, args);
  } catch (cause) {
    throw storeError(operation, cause, key);
  }
}

/**
 * Runs a plain command with the same error mapping; replies are strings. (Not `callBuffer`:
 * ioredis 5.8 drops its command name when `enableAutoPipelining` is on.)
 */
export async function runCommand(
  client: RedisClient,
  operation: string,
  command: string,
  args: RedisArg[],
  key?: string,
): Promise<unknown> {
  try {
    return await client.call(command, ...args);
  } catch (cause) {
    throw storeError(operation, cause, key);
  }
}

/** A failed call's error: damage (see {@link corruption}) for `key`, else an outage. */
function storeError(operation: string, cause: unknown, key: string | undefined): Error {
  const why = cause instanceof Error ? corruption(cause.message) : undefined;
  if (why === undefined) return unavailable(operation, cause);
  return new CorruptRecordError({ ...(key === undefined ? {} : { key }), detail: why });
}

/**
 * What a script's EOCORRUPT error said, if `text` is one (without where Redis says it was raised);
 * a WRONGTYPE is damage too (see corruption in includes/record.lua, which says it in the same words).
 */
function corruption(text: string): string | undefined {
  const at = text.indexOf(CORRUPT);
  if (at >= 0) return text.slice(at + CORRUPT.length).replace(/ script: \w+, on @user_script:\d+\.$/, '');
  if (isWrongType(text)) return WRONG_TYPE;
  return undefined;
}
const CORRUPT = 'EOCORRUPT ';
const WRONG_TYPE =
  "a value of another type at one of its keys (its record's extras, its slot's marker bucket or an index, its payload's claim)";

/** Whether `error` (or its text) is Redis' WRONGTYPE: a key holds another type than the command needs. */
export function isWrongType(error: unknown): boolean {
  return String(error instanceof Error ? error.message : error).includes('WRONGTYPE');
}

export function unavailable(operation: string, cause: unknown): StoreUnavailableError {
  return cause instanceof StoreUnavailableError ? cause : new StoreUnavailableError({ operation, cause });
}
