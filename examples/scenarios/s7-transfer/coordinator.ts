/**
 * The transfer coordinator (two-phase commit): a RabbitMQ consumer of TransferRequested. Each call
 * to a participant is a journaled `ctx.step`, so a coordinator that crashed resumes where its log
 * (the journal) ends; each step has a `reconcile` that asks the participant for the transfer's
 * state by transfer id, so a call whose answer was lost (a timeout, a crash) is resolved by
 * asking, never by guessing.
 */
import { PermanentError, type ProcessedStore, type StepEvent, withTimeout } from '@exactly-once/core';
import { createConsumer, type RabbitConsumer } from '@exactly-once/rabbitmq';
import type { Operation, PrepareRequest, TransferState } from './participant.js';

export interface TransferRequested {
  readonly transferId: string;
  readonly from: { readonly participant: string; readonly account: string };
  readonly to: { readonly participant: string; readonly account: string };
  readonly amount: number;
}

export interface TransferOutcome {
  readonly transferId: string;
  readonly outcome: 'committed' | 'aborted';
  readonly votes: readonly TransferState[];
}

/** The call went out and no answer came back: applied or not, only the participant knows. */
export class NoAnswerError extends Error {
  override name = 'NoAnswerError';
  readonly retryable = true;
}

/** A participant's HTTP API, as the coordinator sees it. */
export function participantClient(name: string, url: string, timeoutMs: number) {
  const call = async (method: string, path: string, body: unknown, signal: AbortSignal) => {
    let res: Response;
    try {
      res = await fetch(`${url}${path}`, {
        method,
        ...(body === undefined
          ? {}
          : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
        signal: withTimeout(signal, timeoutMs),
      });
    } catch (cause) {
      throw new NoAnswerError(`${name} ${method} ${path}: no answer`, { cause });
    }
    const { state } = (await res.json()) as { state: TransferState };
    if (res.status === 409)
      throw new PermanentError(`${name} refused ${path} for a transfer in state ${state}`);
    if (!res.ok) throw new NoAnswerError(`${name} ${method} ${path}: HTTP ${res.status}`);
    return state;
  };
  return {
    name,
    send: (op: Operation, body: PrepareRequest | { transferId: string }, signal: AbortSignal) =>
      call('POST', `/${op}`, body, signal),
    status: (transferId: string, signal: AbortSignal) =>
      call('GET', `/transfers/${encodeURIComponent(transferId)}`, undefined, signal),
  };
}
type Client = ReturnType<typeof participantClient>;

/** Phase 1: the participant's vote. No answer: ask; still unknown: no vote (the transfer aborts). */
async function prepare(p: Client, request: PrepareRequest, signal: AbortSignal): Promise<TransferState> {
  try {
    return await p.send('prepare', request, signal);
  } catch (error) {
    if (!(error instanceof NoAnswerError)) throw error;
    const state = await p.status(request.transferId, signal).catch(() => 'unknown' as const);
    // Unknown: it may still arrive; the abort that follows is recorded, so it will be refused.
    return state === 'unknown' ? 'aborted' : state;
  }
}

/** Phase 2: commit or abort, until the participant confirms it; a lost answer is resolved by asking. */
async function finish(p: Client, op: 'commit' | 'abort', transferId: string, signal: AbortSignal) {
  try {
    return await p.send(op, { transferId }, signal);
  } catch (error) {
    if (!(error instanceof NoAnswerError)) throw error;
    const state = await p.status(transferId, signal); // no answer again: NoAnswerError, retried
    if (isFinished(op, state)) return state;
    throw new NoAnswerError(`${p.name} has not applied ${op} of ${transferId} (it says ${state})`);
  }
}

const isFinished = (op: 'commit' | 'abort', state: TransferState) =>
  op === 'commit' ? state === 'committed' : state === 'aborted' || state === 'refused';

export interface CoordinatorOptions {
  readonly amqpUrl: string;
  readonly queue: string;
  readonly store: ProcessedStore;
  /** Participant name -> base URL. */
  readonly participants: Readonly<Record<string, string>>;
  /** How long a call waits for its answer. @defaultValue 400 */
  readonly callTimeoutMs?: number;
  /** Steps that keep failing (a participant down): `alert` after 5 failures in a run. */
  readonly onStepEvent?: (event: StepEvent) => void;
  readonly leaseMs?: number;
}

export function createCoordinator(options: CoordinatorOptions): RabbitConsumer {
  const clients = new Map(
    Object.entries(options.participants).map(([name, url]) => [
      name,
      participantClient(name, url, options.callTimeoutMs ?? 400),
    ]),
  );
  const client = (name: string) => {
    const c = clients.get(name);
    if (!c) throw new PermanentError(`unknown participant ${name}`);
    return c;
  };

  return createConsumer<TransferRequested, TransferOutcome>({
    connection: options.amqpUrl,
    queue: options.queue,
    consumer: 'transfers',
    store: options.store,
    prefetch: 8,
    leaseMs: options.leaseMs ?? 1_500,
    retryDelaysMs: [100, 1_000],
    // A coordinator crash counts as an attempt: leave room for several in a row.
    retry: { maxAttempts: 30, initialDelayMs: 100, maxDelayMs: 1_000 },
    ...(options.onStepEvent ? { onStepEvent: options.onStepEvent } : {}),
    handler: async (t, ctx) => {
      const { transferId } = t;
      const legs = [
        {
          p: client(t.from.participant),
          request: { transferId, ...t.from, amount: t.amount, side: 'debit' },
        },
        { p: client(t.to.participant), request: { transferId, ...t.to, amount: t.amount, side: 'credit' } },
      ] as const;

      // Phase 1. A step the coordinator crashed in is reconciled by asking: the state there is the vote.
      const votes: TransferState[] = [];
      for (const { p, request } of legs) {
        votes.push(
          await ctx.step<TransferState>(`prepare:${p.name}`, (signal) => prepare(p, request, signal), {
            reconcile: async ({ signal }) => {
              const state = await p.status(transferId, signal);
              return state === 'unknown' ? { done: false } : { done: true, value: state };
            },
          }),
        );
      }

      // The decision, journaled: the coordinator's log. Every later attempt carries it out. (A vote
      // read back as `committed` is a yes: only a journal lost after the decision shows one.)
      const decision = await ctx.step('decision', () =>
        votes.every((v) => v === 'prepared' || v === 'committed') ? ('commit' as const) : ('abort' as const),
      );

      // Phase 2: to every participant, until each confirms. A participant that does not answer is
      // asked, again and again (the step stays in doubt and raises an alert after 5 failures).
      for (const { p } of legs) {
        await ctx.step(`${decision}:${p.name}`, (signal) => finish(p, decision, transferId, signal), {
          retry: { maxAttempts: Number.MAX_SAFE_INTEGER, initialDelayMs: 200, maxDelayMs: 2_000 },
          alertAfter: 5,
          reconcile: async ({ signal }) => {
            const state = await p.status(transferId, signal);
            return isFinished(decision, state) ? { done: true, value: state } : { done: false };
          },
        });
      }
      return { transferId, outcome: decision === 'commit' ? 'committed' : 'aborted', votes };
    },
  });
}
