/**
 * Service A, the order API: `POST /orders` with an `Idempotency-Key` header. The first request
 * with a key runs once and its response is stored in Redis with the completion record; every
 * later request with that key (a client retry, a replay) gets the stored response back. The
 * OrderCreated message is written into that same record and published to RabbitMQ only after the
 * record is durable, so the API never announces an order it could forget.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import {
  createIdempotentExecutor,
  ExecutionFailedError,
  type HandlerContext,
  RequestInProgressError,
} from '@exactly-once/core';
import { createPublisher } from '@exactly-once/rabbitmq';
import { createRedisStore } from '@exactly-once/store-redis';
import { Redis } from 'ioredis';
import { type OrderCreated, required, runNames, servers } from '../shared/config.js';
import { announceReady, createLogger, onShutdown, serveStats } from '../shared/runtime.js';
import { startTracing } from '../shared/tracing.js';

const run = required('DEMO_RUN');
const instance = process.env.INSTANCE ?? 'order-1';
const tracing = startTracing('order', instance, run);
const logger = createLogger(instance);
const names = runNames(run);

interface OrderRequest {
  customerId: string;
  email: string;
  amountCents: number;
  currency: string;
  items: { sku: string; quantity: number }[];
  receipt?: 'summary' | 'itemized';
}

interface OrderResponse {
  orderId: string;
  status: 'accepted';
  amountCents: number;
  currency: string;
}

const redis = new Redis(servers.redisUrl, { maxRetriesPerRequest: 2 });
const store = createRedisStore({ client: redis, keyPrefix: names.redisPrefix, logger });
await store.checkServer();
// A short publish timeout: while RabbitMQ is down the client gets a quick 503 and retries with
// the same key, instead of holding the connection for the 30 s default.
const publisher = createPublisher({ connection: servers.amqpUrl, publishTimeoutMs: 3_000 });
await publisher.ready();
const orders = createIdempotentExecutor<OrderRequest, OrderResponse>({
  consumer: 'orders-api',
  store,
  publisher,
  leaseMs: 5_000,
  logger,
});
const tracer = trace.getTracer('three-services/order');

async function placeOrder(order: OrderRequest, ctx: HandlerContext): Promise<OrderResponse> {
  // Derived from the key, so a run that is repeated after a crash names the same order.
  const orderId = `ord_${ctx.keyFor('order-id').slice(4, 24)}`;
  const event: OrderCreated = {
    type: 'OrderCreated',
    orderId,
    customerId: order.customerId,
    email: order.email,
    amountCents: order.amountCents,
    currency: order.currency,
    items: order.items,
    receipt: order.receipt ?? 'summary',
  };
  ctx.publish(names.ordersExchange, event, { name: 'order-created', routingKey: names.orderCreatedKey });
  return { orderId, status: 'accepted', amountCents: order.amountCents, currency: order.currency };
}

function validate(body: unknown): OrderRequest {
  const o = body as Partial<OrderRequest> | null;
  const ok =
    typeof o === 'object' &&
    o !== null &&
    typeof o.customerId === 'string' &&
    typeof o.email === 'string' &&
    Number.isSafeInteger(o.amountCents) &&
    (o.amountCents as number) > 0 &&
    typeof o.currency === 'string' &&
    Array.isArray(o.items);
  if (!ok) throw new Error('body must have customerId, email, amountCents (> 0), currency and items');
  return o as OrderRequest;
}

async function readBody(req: IncomingMessage): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function handleOrder(req: IncomingMessage, res: ServerResponse): Promise<number> {
  // Sent twice, the header is refused: req.headers would join the values into "a, b". node
  // hands header bytes over as latin1 text: decoded as UTF-8, a key that is not UTF-8 becomes
  // U+FFFD, which the executor refuses (INVALID_KEY, a 400 below).
  const sent = req.headersDistinct['idempotency-key'];
  const raw = sent?.length === 1 ? (sent[0] as string) : '';
  const key = Buffer.from(raw, 'latin1').toString('utf8');
  if (key.length === 0) {
    reply(res, 400, { error: 'one Idempotency-Key header is required' });
    return 400;
  }
  trace.getActiveSpan()?.setAttribute('exactly_once.request_id', key);
  let order: OrderRequest;
  try {
    order = validate(JSON.parse(await readBody(req)));
  } catch (error) {
    reply(res, 400, { error: (error as Error).message });
    return 400;
  }
  try {
    // The client's key is the request id of everything downstream: B and C spans, messages, logs.
    const { status, result } = await orders.execute({ key, payload: order }, placeOrder);
    reply(res, 201, result, {
      // Echoed as it came: a header value is latin1 text.
      'idempotency-key': raw,
      ...(status === 'duplicate' ? { 'idempotent-replayed': 'true' } : {}),
    });
    return 201;
  } catch (error) {
    if (error instanceof RequestInProgressError) {
      const seconds = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)));
      reply(
        res,
        409,
        { error: 'a request with this Idempotency-Key is in progress' },
        { 'retry-after': seconds },
      );
      return 409;
    }
    if (error instanceof ExecutionFailedError && error.outcome === 'mismatch') {
      reply(res, 422, { error: 'this Idempotency-Key was used with a different request body' });
      return 422;
    }
    if (error instanceof ExecutionFailedError && error.info.code === 'INVALID_KEY') {
      reply(res, 400, { error: 'the Idempotency-Key is not UTF-8 text' });
      return 400;
    }
    if (error instanceof ExecutionFailedError && error.outcome === 'retryable') {
      // Typically RabbitMQ unreachable: the order is recorded, its message not yet confirmed.
      // The retry with the same key publishes it and returns the stored response.
      reply(res, 503, { error: 'temporarily unavailable; retry with the same key' }, { 'retry-after': '1' });
      return 503;
    }
    logger.error('order failed', { error: String(error) });
    reply(res, 500, { error: 'internal error' });
    return 500;
  }
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (req.method === 'GET' && url.pathname === '/health') return reply(res, 200, { ok: true });
  if (req.method !== 'POST' || url.pathname !== '/orders') return reply(res, 404, { error: 'not found' });
  // The server span starts the request's trace (or continues a caller's traceparent, if any).
  const parent = propagation.extract(ROOT_CONTEXT, req.headers);
  const span = tracer.startSpan(
    'POST /orders',
    {
      kind: SpanKind.SERVER,
      attributes: { 'http.request.method': 'POST', 'http.route': '/orders', 'url.path': url.pathname },
    },
    parent,
  );
  context
    .with(trace.setSpan(parent, span), () => handleOrder(req, res))
    .then(
      (status) => {
        span.setAttribute('http.response.status_code', status);
        if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      },
      (error: unknown) => {
        logger.error('request failed', { error: String(error) });
        if (!res.headersSent) reply(res, 500, { error: 'internal error' });
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
      },
    )
    .finally(() => span.end());
});
await new Promise<void>((resolve) => server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve));
const port = (server.address() as AddressInfo).port;
const stats = await serveStats(instance, tracing);
announceReady({ instance, port, statsPort: stats.port });
logger.info(`order API on http://127.0.0.1:${port}/orders`);

onShutdown(logger, async () => {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  await orders.stop({ timeoutMs: 5_000 }); // the calls in flight answer, or are cut short
  await closed;
  await publisher.close();
  await stats.close();
  await tracing.shutdown();
  redis.disconnect();
});
