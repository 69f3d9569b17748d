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
import { CorruptRecordError, PartialBatchError, StoreUnavailableError, toErrorInfo } from '../errors.js';
import type { Logger } from '../logger.js';
import { wrapServerCalls } from './delegate.js';
import type { ProcessedStore } from './types.js';

export interface StoreHealth {
  /** When (epoch ms) a store call last got an answer (any answer: a refused fence is one too). */
  readonly lastAnswerAt: number | undefined;
  /**
   * When (epoch ms) the store stopped answering: when the first call that failed as unavailable
   * (`StoreUnavailableError`, a missed `storeTimeoutMs` included) since the last answer was made,
   * or the last answer if that came later. Not when it failed: a call that hangs until
   * `storeTimeoutMs` fails a minute into the outage. `undefined` while the store answers.
   */
  readonly unavailableSince: number | undefined;
}

/** While an outage lasts, it is logged again this often (with the calls failed meanwhile). */
export const OUTAGE_REMINDER_MS = 30_000;

/**
 * `store` with its answers and outages recorded; `health()` reads the record. An outage is logged
 * here, once when it starts, every {@link OUTAGE_REMINDER_MS} while it lasts and once when the
 * store answers again, rather than once per message kept: with 100 messages in flight that would
 * be 100 warnings a second, each a process warning under the default logger.
 */
export function withHealth(
  store: ProcessedStore,
  logger: Logger,
  /** What happens to the work meanwhile, in the outage's first warning. */
  meanwhile: string,
): { store: ProcessedStore; health(): StoreHealth } {
  let lastAnswerAt: number | undefined;
  let unavailableSince: number | undefined;
  let failedCalls = 0;
  let loggedAt = 0;
  const answered = () => {
    lastAnswerAt = Date.now();
    if (unavailableSince !== undefined) {
      logger.info('processed-store answering again', {
        unavailableForMs: lastAnswerAt - unavailableSince,
        failedCalls,
      });
      unavailableSince = undefined;
      failedCalls = 0;
    }
  };
  const failed = (error: unknown, calledAt: number) => {
    // A damaged record is the store's answer, not an outage; so is a batch whose only failures
    // were damaged records.
    if (
      error instanceof CorruptRecordError ||
      (error instanceof PartialBatchError && ![...error.errors.values()].some(unavailable))
    ) {
      answered();
      return;
    }
    if (!unavailable(error)) return;
    const now = Date.now();
    failedCalls++;
    if (unavailableSince === undefined) {
      unavailableSince = Math.max(calledAt, lastAnswerAt ?? calledAt);
      loggedAt = now;
      logger.warn(`processed-store unavailable; ${meanwhile}`, {
        unavailableForMs: now - unavailableSince,
        error: toErrorInfo(error),
      });
    } else if (now - loggedAt >= OUTAGE_REMINDER_MS) {
      loggedAt = now;
      logger.warn('processed-store still unavailable', {
        unavailableForMs: now - unavailableSince,
        failedCalls,
        error: toErrorInfo(error),
      });
    }
  };
  const wrapped = wrapServerCalls(store, (_name, call) => (...args) => {
    const calledAt = Date.now();
    const answer = call(...args);
    answer.then(answered, (error: unknown) => failed(error, calledAt));
    return answer;
  });
  return {
    store: wrapped,
    health: () => ({ lastAnswerAt, unavailableSince }),
  };
}

function unavailable(error: unknown): boolean {
  return error instanceof StoreUnavailableError;
}
