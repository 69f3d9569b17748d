/**
 * How the processed-store has been answering this process, for a liveness probe.
 *
 * During a store outage the pipeline keeps its messages (RabbitMQ: in their prefetch slots;
 * Kafka: its partitions) and tries them again: right for an outage every instance shares, since
 * nothing could process them elsewhere. It is wrong when only this process's client is broken and
 * will never recover by itself (a database driver whose server monitor hangs after the server
 * died mid-check; a host cut off from the store), while other instances reach the store: they
 * cannot take over what this one holds. Only the process can tell, and only a restart (a new
 * client) ends it. `unavailableSince` is what a liveness probe compares with its patience.
 */
import { StoreUnavailableError } from '../errors.js';
import { wrapServerCalls } from './delegate.js';
import type { ProcessedStore } from './types.js';

export interface StoreHealth {
  /** When (epoch ms) a store call last got an answer (any answer: a refused fence is one too). */
  readonly lastAnswerAt: number | undefined;
  /**
   * When (epoch ms) the store stopped answering: the first call that failed as unavailable
   * (`StoreUnavailableError`, a missed `storeTimeoutMs` included) since the last answer.
   * `undefined` while the store answers.
   */
  readonly unavailableSince: number | undefined;
}

/** `store` with its answers and outages recorded; `health()` reads the record. */
export function withHealth(store: ProcessedStore): { store: ProcessedStore; health(): StoreHealth } {
  let lastAnswerAt: number | undefined;
  let unavailableSince: number | undefined;
  const answered = () => {
    lastAnswerAt = Date.now();
    unavailableSince = undefined;
  };
  const failed = (error: unknown) => {
    if (error instanceof StoreUnavailableError) unavailableSince ??= Date.now();
  };
  const wrapped = wrapServerCalls(store, (_name, call) => (...args) => {
    const answer = call(...args);
    answer.then(answered, failed);
    return answer;
  });
  return {
    store: wrapped,
    health: () => ({ lastAnswerAt, unavailableSince }),
  };
}
