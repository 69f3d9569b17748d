/**
 * A fake payment service (PS-1, PS-2): accounts with balances, and the two-phase protocol a
 * transfer coordinator speaks to it, idempotent by transfer id. Its own ledger records every
 * money movement it applied; nothing in it is deduplicated by the SDK.
 *
 *   POST /prepare {transferId, account, amount, side}  debit: hold the amount (refused if the balance
 *                                                      is short); credit: accept (refused for an
 *                                                      unknown account)
 *   POST /commit  {transferId}                         apply: the hold leaves, or the credit lands
 *   POST /abort   {transferId}                         release; an unknown id is recorded aborted, so
 *                                                      a prepare arriving late is refused
 *   GET  /transfers/<id>                               the transfer's state here, or `unknown`
 *
 * Every call answers the transfer's state; the same call twice answers the same state and moves
 * no money twice. Faults are injectable: drop the answers to commits (the commit is applied, the
 * answer never comes), be down (every connection reset), and a hook after each applied call.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type TransferState = 'unknown' | 'prepared' | 'committed' | 'aborted' | 'refused';
export type Operation = 'prepare' | 'commit' | 'abort';

export interface PrepareRequest {
  readonly transferId: string;
  readonly account: string;
  readonly amount: number;
  readonly side: 'debit' | 'credit';
}

/** One money movement this participant applied. */
export interface LedgerEntry {
  readonly transferId: string;
  readonly account: string;
  readonly delta: number;
}

export interface ParticipantFaults {
  /** Drop the answer of every n-th commit (0: never): applied, then no answer. */
  dropCommitAnswerEvery: number;
  /** Reset every connection: the participant is unreachable. */
  down: boolean;
  /** Called after a call was applied and before it is answered. */
  afterApply?: (op: Operation, transferId: string, count: number) => void;
}

export interface Participant {
  readonly name: string;
  readonly url: string;
  readonly faults: ParticipantFaults;
  readonly balances: ReadonlyMap<string, number>;
  readonly ledger: readonly LedgerEntry[];
  /** Transfers and their state here. */
  readonly transfers: ReadonlyMap<string, TransferState>;
  /** Money held by prepared debits. */
  held(): number;
  /** Credits prepared, not yet committed. */
  pendingCredits(): number;
  /** Calls received, by kind (`status` included), and commit answers dropped. */
  readonly calls: Record<Operation | 'status', number> & { droppedAnswers: number };
  close(): Promise<void>;
}

interface Entry {
  state: TransferState;
  account?: string;
  amount?: number;
  side?: 'debit' | 'credit';
}

export async function startParticipant(
  name: string,
  accounts: Record<string, number>,
  faults: Partial<ParticipantFaults> = {},
): Promise<Participant> {
  const balances = new Map(Object.entries(accounts));
  const transfers = new Map<string, Entry>();
  const ledger: LedgerEntry[] = [];
  const allFaults: ParticipantFaults = { dropCommitAnswerEvery: 0, down: false, ...faults };
  const calls = { prepare: 0, commit: 0, abort: 0, status: 0, droppedAnswers: 0 };

  const apply = (op: Operation, body: Record<string, unknown>): { status: number; state: TransferState } => {
    const id = String(body.transferId);
    const entry = transfers.get(id);
    if (op === 'prepare') {
      if (entry) return { status: 200, state: entry.state };
      const { account, amount, side } = body as unknown as PrepareRequest;
      const balance = balances.get(account);
      const refused = balance === undefined || (side === 'debit' && balance < amount);
      if (!refused && side === 'debit') balances.set(account, balance - amount); // held
      transfers.set(id, { state: refused ? 'refused' : 'prepared', account, amount, side });
      return { status: 200, state: refused ? 'refused' : 'prepared' };
    }
    if (op === 'commit') {
      if (entry?.state === 'committed') return { status: 200, state: 'committed' };
      if (entry?.state !== 'prepared') return { status: 409, state: entry?.state ?? 'unknown' };
      const { account = '', amount = 0, side } = entry;
      if (side === 'credit') balances.set(account, (balances.get(account) ?? 0) + amount);
      ledger.push({ transferId: id, account, delta: side === 'debit' ? -amount : amount });
      entry.state = 'committed';
      return { status: 200, state: 'committed' };
    }
    // abort
    if (!entry) {
      transfers.set(id, { state: 'aborted' });
      return { status: 200, state: 'aborted' };
    }
    if (entry.state === 'committed') return { status: 409, state: 'committed' };
    if (entry.state === 'prepared') {
      if (entry.side === 'debit' && entry.account)
        balances.set(entry.account, (balances.get(entry.account) ?? 0) + (entry.amount ?? 0));
      entry.state = 'aborted';
    }
    return { status: 200, state: entry.state };
  };

  const reply = (res: ServerResponse, status: number, state: TransferState) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ state }));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (allFaults.down) {
      req.socket.destroy();
      return;
    }
    const url = new URL(req.url ?? '/', 'http://participant');
    if (req.method === 'GET' && url.pathname.startsWith('/transfers/')) {
      calls.status++;
      const id = decodeURIComponent(url.pathname.slice('/transfers/'.length));
      return reply(res, 200, transfers.get(id)?.state ?? 'unknown');
    }
    const op = url.pathname.slice(1) as Operation;
    if (req.method !== 'POST' || !['prepare', 'commit', 'abort'].includes(op))
      return reply(res, 404, 'unknown');
    let text = '';
    for await (const chunk of req) text += chunk;
    const body = JSON.parse(text) as Record<string, unknown>;
    const count = ++calls[op];
    const { status, state } = apply(op, body);
    allFaults.afterApply?.(op, String(body.transferId), count);
    if (
      op === 'commit' &&
      allFaults.dropCommitAnswerEvery > 0 &&
      count % allFaults.dropCommitAnswerEvery === 0
    ) {
      // Applied; the answer is lost on the way back. The connection dies later.
      calls.droppedAnswers++;
      setTimeout(() => req.socket.destroy(), 3_000).unref();
      return;
    }
    reply(res, status, state);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => req.socket.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;

  return {
    name,
    url: `http://127.0.0.1:${port}`,
    faults: allFaults,
    balances,
    ledger,
    get transfers() {
      return new Map([...transfers].map(([id, e]) => [id, e.state]));
    },
    held: () =>
      [...transfers.values()]
        .filter((e) => e.state === 'prepared' && e.side === 'debit')
        .reduce((sum, e) => sum + (e.amount ?? 0), 0),
    pendingCredits: () =>
      [...transfers.values()]
        .filter((e) => e.state === 'prepared' && e.side === 'credit')
        .reduce((sum, e) => sum + (e.amount ?? 0), 0),
    calls,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
