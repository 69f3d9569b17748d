/**
 * A fake email API; the driver runs it inside its own process and reads what it recorded. Like
 * real email APIs that take an `Idempotency-Key`, a repeated key gets the first answer back and
 * sends nothing; every email it does send is recorded with its key, order and sender instance.
 * `POST /admin/faults` makes it misbehave for the emails of a chosen request id:
 *
 * - `error`: answer 500 without sending;
 * - `stall`: send (record), then hold the answer for `stallMs`.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type SinkFault = 'error' | 'stall';

export interface Email {
  id: string;
  idempotencyKey: string;
  orderId: string;
  requestId: string;
  chargeId: string;
  to: string;
  /** The receipt, by reference: a blob pointer (uri, size, sha256), or absent for small ones. */
  receipt?: { uri: string; size: number; sha256: string };
  /** User-Agent of the sender (which notification instance). */
  by: string;
}

export interface SinkState {
  stats: {
    requests: number;
    emails: number;
    replays: number;
    conflicts: number;
    faults: Record<SinkFault, number>;
  };
  emails: Email[];
  stalled: { requestId: string; by: string }[];
}

export interface EmailSink {
  readonly url: string;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startEmailSink(options: { port?: number } = {}): Promise<EmailSink> {
  const keys = new Map<string, { fingerprint: string; emailId: string }>();
  const emails: Email[] = [];
  const stalled = new Set<{ requestId: string; by: string }>();
  const faults = new Map<string, { fault: SinkFault; times: number; stallMs: number }[]>();
  const stats: SinkState['stats'] = {
    requests: 0,
    emails: 0,
    replays: 0,
    conflicts: 0,
    faults: { error: 0, stall: 0 },
  };

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (res.destroyed) return;
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };

  const send = async (req: IncomingMessage, res: ServerResponse, raw: string) => {
    stats.requests++;
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') return json(res, 400, { error: 'Idempotency-Key required' });
    const fingerprint = createHash('sha256').update(raw).digest('hex');
    const kept = keys.get(key);
    if (kept) {
      if (kept.fingerprint !== fingerprint) {
        stats.conflicts++;
        return json(res, 422, { error: 'idempotency key reused with a different email' });
      }
      stats.replays++;
      return json(res, 202, { id: kept.emailId }, { 'idempotent-replayed': 'true' });
    }
    const body = JSON.parse(raw) as Omit<Email, 'id' | 'idempotencyKey' | 'by'>;
    const list = faults.get(body.requestId);
    const fault = list?.[0];
    if (fault && --fault.times <= 0) list?.shift();
    if (fault) stats.faults[fault.fault]++;
    if (fault?.fault === 'error') return json(res, 500, { error: 'mail server unavailable' });
    const email: Email = {
      ...body,
      id: `em_${String(emails.length + 1).padStart(6, '0')}`,
      idempotencyKey: key,
      by: String(req.headers['user-agent'] ?? ''),
    };
    keys.set(key, { fingerprint, emailId: email.id });
    emails.push(email);
    stats.emails++;
    if (fault?.fault === 'stall') {
      const held = { requestId: body.requestId, by: email.by };
      stalled.add(held);
      await sleep(fault.stallMs);
      stalled.delete(held);
    }
    json(res, 202, { id: email.id });
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      if (req.method === 'POST' && req.url === '/v1/emails') {
        send(req, res, raw).catch((error: unknown) => json(res, 500, { error: String(error) }));
      } else if (req.method === 'POST' && req.url === '/admin/faults') {
        const f = JSON.parse(raw) as {
          requestId: string;
          fault: SinkFault;
          times?: number;
          stallMs?: number;
        };
        const list = faults.get(f.requestId) ?? [];
        list.push({ fault: f.fault, times: f.times ?? 1, stallMs: f.stallMs ?? 30_000 });
        faults.set(f.requestId, list);
        res.writeHead(204).end();
      } else if (req.method === 'GET' && req.url === '/admin/state') {
        json(res, 200, { stats, emails, stalled: [...stalled] } satisfies SinkState);
      } else {
        json(res, 404, { error: 'not found' });
      }
    });
  });
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
