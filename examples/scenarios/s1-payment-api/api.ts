/**
 * The payment API: `POST /payments` with an `Idempotency-Key` header. The first request with a
 * key charges the card once and its answer is stored in Redis with the completion record; every
 * later request with that key gets the stored answer back (`Idempotent-Replayed: true`) and the
 * card is not touched. The same key while the first request still runs is 409 (with
 * `Retry-After`); the same key with another body is 422.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  createIdempotentExecutor,
  ExecutionFailedError,
  type ProcessedStore,
  RequestInProgressError,
} from '@exactly-once/core';
import type { CardProcessor } from './card-processor.js';

export interface PaymentRequest {
  customerId: string;
  amountCents: number;
  currency: string;
}

export interface PaymentResponse {
  transactionId: string;
  status: 'succeeded';
  amountCents: number;
  currency: string;
}

export interface PaymentApi {
  readonly url: string;
  close(): Promise<void>;
}

const DAY = 86_400_000;

export async function startPaymentApi(options: {
  store: ProcessedStore;
  processor: CardProcessor;
  port?: number;
}): Promise<PaymentApi> {
  const payments = createIdempotentExecutor<PaymentRequest, PaymentResponse>({
    consumer: 'payments-api',
    store: options.store,
    // Kept 30 days for the audit trail: a retry within 30 days gets the first answer.
    retentionMs: 30 * DAY,
    leaseMs: 10_000,
  });

  const pay = (key: string, body: PaymentRequest) =>
    payments.execute({ key, payload: body }, async (payment, ctx) => {
      const charge = await options.processor.charge({
        ...payment,
        // Pass a stable key on: a processor that honours it also covers a crash of this API
        // between the charge and the completion record (this fake one does not).
        idempotencyKey: ctx.keyFor('charge'),
      });
      return {
        transactionId: charge.transactionId,
        status: 'succeeded',
        amountCents: charge.amountCents,
        currency: charge.currency,
      };
    });

  const server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/payments') return reply(res, 404, { error: 'not found' });
    handle(req, res).catch(() => reply(res, 500, { error: 'internal error' }));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Sent twice, the header is refused: req.headers would join the values into "a, b". node
    // hands header bytes over as latin1 text: decoded as UTF-8, a key that is not UTF-8 becomes
    // U+FFFD, which the executor refuses (INVALID_KEY, a 400 below).
    const sent = req.headersDistinct['idempotency-key'];
    const key = sent?.length === 1 ? Buffer.from(sent[0] as string, 'latin1').toString('utf8') : undefined;
    if (key === undefined || key === '') {
      return reply(res, 400, { error: 'one Idempotency-Key header is required' });
    }
    let body: PaymentRequest;
    try {
      body = validate(JSON.parse(await readBody(req)));
    } catch (error) {
      return reply(res, 400, { error: (error as Error).message });
    }
    try {
      const { status, result } = await pay(key, body);
      reply(res, 201, result, status === 'duplicate' ? { 'idempotent-replayed': 'true' } : {});
    } catch (error) {
      if (error instanceof RequestInProgressError) {
        const seconds = Math.max(1, Math.ceil(error.retryAfterMs / 1000));
        reply(res, 409, { error: 'a request with this key is in progress' }, { 'retry-after': `${seconds}` });
      } else if (error instanceof ExecutionFailedError && error.outcome === 'mismatch') {
        reply(res, 422, { error: 'this Idempotency-Key was used with another request body' });
      } else if (error instanceof ExecutionFailedError && error.info.code === 'INVALID_KEY') {
        reply(res, 400, { error: 'the Idempotency-Key is not UTF-8 text' });
      } else if (error instanceof ExecutionFailedError && error.outcome === 'retryable') {
        reply(res, 503, { error: 'try again with the same Idempotency-Key' }, { 'retry-after': '1' });
      } else {
        reply(res, 500, { error: 'the payment failed' });
      }
    }
  }

  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await payments.stop({ timeoutMs: 5_000 });
      await closed;
    },
  };
}

function validate(body: unknown): PaymentRequest {
  const p = body as Partial<PaymentRequest> | null;
  if (
    typeof p !== 'object' ||
    p === null ||
    typeof p.customerId !== 'string' ||
    !Number.isSafeInteger(p.amountCents) ||
    (p.amountCents as number) <= 0 ||
    typeof p.currency !== 'string'
  ) {
    throw new Error('body must have customerId, amountCents (> 0) and currency');
  }
  return { customerId: p.customerId, amountCents: p.amountCents as number, currency: p.currency };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  if (res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}
