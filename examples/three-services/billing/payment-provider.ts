/**
 * A fake card processor; the driver runs it inside its own process. It honours `Idempotency-Key`
 * the way real payment APIs do: the first request with a key charges and its response is kept;
 * a later request with the same key and body gets that same response (`Idempotent-Replayed:
 * true`) and no new charge; the same key with another body is 422; a key still being processed is
 * 409. `POST /admin/faults` makes it misbehave for the charges of a chosen request id:
 *
 * - `drop`:  charge, then cut the connection without answering (the client cannot know);
 * - `error`: answer 500 before charging (a transient failure; the key is not kept);
 * - `stall`: charge, then hold the answer for `stallMs` (longer than the client's timeout).
 *
 * `GET /admin/state` lists every charge made, for the driver's verification.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type ProviderFault = 'drop' | 'error' | 'stall';

interface Kept {
  fingerprint: string;
  /** undefined while the first request is being processed. */
  response?: { status: number; body: unknown };
}

export interface Charge {
  id: string;
  orderId: string;
  requestId: string;
  amountCents: number;
  idempotencyKey: string;
  /** User-Agent of the caller that made the charge (which billing instance). */
  by: string;
}

export interface ProviderStats {
  /** Every POST /v1/charges received. */
  requests: number;
  charges: number;
  replays: number;
  conflicts: number;
  faults: Record<ProviderFault, number>;
}

/** `POST /admin/faults`: the next `times` charge requests for `requestId` get `fault`. */
export interface FaultRequest {
  requestId: string;
  fault: ProviderFault;
  times?: number;
  stallMs?: number;
}

/** `GET /admin/state`. */
export interface ProviderState {
  stats: ProviderStats;
  charges: Charge[];
  /** Requests currently held by a `stall` fault: which request id, and which caller waits. */
  stalled: { requestId: string; by: string }[];
}

export interface PaymentProvider {
  readonly url: string;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startPaymentProvider(options: { port?: number } = {}): Promise<PaymentProvider> {
  const keys = new Map<string, Kept>();
  const charges: Charge[] = [];
  const stalled = new Set<{ requestId: string; by: string }>();
  const faults = new Map<string, { fault: ProviderFault; times: number; stallMs: number }[]>();
  const stats: ProviderStats = {
    requests: 0,
    charges: 0,
    replays: 0,
    conflicts: 0,
    faults: { drop: 0, error: 0, stall: 0 },
  };

  const takeFault = (requestId: string) => {
    const list = faults.get(requestId);
    const next = list?.[0];
    if (!list || !next) return undefined;
    if (--next.times <= 0) list.shift();
    stats.faults[next.fault]++;
    return next;
  };

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (res.destroyed) return;
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };

  const charge = async (req: IncomingMessage, res: ServerResponse, raw: string) => {
    stats.requests++;
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') return json(res, 400, { error: 'Idempotency-Key required' });
    const fingerprint = createHash('sha256').update(raw).digest('hex');
    const kept = keys.get(key);
    if (kept) {
      if (kept.fingerprint !== fingerprint) {
        stats.conflicts++;
        return json(res, 422, { error: 'idempotency key reused with different parameters' });
      }
      if (!kept.response) return json(res, 409, { error: 'a request with this key is in progress' });
      stats.replays++;
      return json(res, kept.response.status, kept.response.body, { 'idempotent-replayed': 'true' });
    }
    const body = JSON.parse(raw) as { amountCents: number; metadata: { orderId: string; requestId: string } };
    const fault = takeFault(body.metadata.requestId);
    if (fault?.fault === 'error') return json(res, 500, { error: 'processor unavailable' });
    const entry: Kept = { fingerprint };
    keys.set(key, entry);
    await sleep(10 + Math.random() * 40); // the card network
    const made: Charge = {
      id: `ch_${String(charges.length + 1).padStart(6, '0')}`,
      orderId: body.metadata.orderId,
      requestId: body.metadata.requestId,
      amountCents: body.amountCents,
      idempotencyKey: key,
      by: String(req.headers['user-agent'] ?? ''),
    };
    charges.push(made);
    stats.charges++;
    entry.response = {
      status: 201,
      body: { id: made.id, status: 'succeeded', amountCents: made.amountCents },
    };
    if (fault?.fault === 'drop') {
      res.socket?.destroy();
      return;
    }
    if (fault?.fault === 'stall') {
      const held = { requestId: made.requestId, by: made.by };
      stalled.add(held);
      await sleep(fault.stallMs);
      stalled.delete(held);
    }
    json(res, entry.response.status, entry.response.body);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      if (req.method === 'POST' && req.url === '/v1/charges') {
        charge(req, res, raw).catch((error: unknown) => json(res, 500, { error: String(error) }));
      } else if (req.method === 'POST' && req.url === '/admin/faults') {
        const f = JSON.parse(raw) as FaultRequest;
        const list = faults.get(f.requestId) ?? [];
        list.push({ fault: f.fault, times: f.times ?? 1, stallMs: f.stallMs ?? 30_000 });
        faults.set(f.requestId, list);
        res.writeHead(204).end();
      } else if (req.method === 'GET' && req.url === '/admin/state') {
        json(res, 200, { stats, charges, stalled: [...stalled] } satisfies ProviderState);
      } else {
        json(res, 404, { error: 'not found' });
      }
    });
  });
  // A dropped or stalled caller must not take the server down with a socket error.
  server.on('clientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
