/**
 * The idempotent producer: a first service's `send` (sets request id, idempotency key and trace
 * context) and core's confirmed `OutgoingPublisher` for handler outputs and dead-letter copies.
 */
import { ClosedError, Headers, type OutgoingMessage, PublishError } from '@exactly-once/core';
import type { OutgoingPublisher } from '@exactly-once/core/spi';
import {
  encodeValue,
  extraHeaders,
  injectContext,
  type OptionNames,
  recordError,
  refuseUnknownOptions,
  sendIdentity,
  tracer,
} from '@exactly-once/core/spi';
import { context, SpanKind, trace } from '@opentelemetry/api';
import {
  type KafkaLike,
  type ProducerConfigLike,
  type ProducerClient,
  type ProducerLike,
  type ProducerRecordMessageLike,
  producerClient,
} from './client.js';

export interface ProducerOptions {
  /** A kafkajs `Kafka`, or the `Kafka` of `@confluentinc/kafka-javascript`'s KafkaJS API. */
  kafka: KafkaLike;
  /**
   * Extra producer options, in kafkajs' layout on either client (on
   * `@confluentinc/kafka-javascript` kafkajs' names go into its `kafkaJS` block, librdkafka
   * properties such as `'linger.ms'` stay at the top). The adapter always sets
   * `idempotent: true` and acks -1: idempotence is what keeps a retried send from writing
   * twice. kafkajs also gets `maxInFlightRequests: 1`, which keeps per-partition order across
   * retries (librdkafka's idempotent producer keeps it with up to 5).
   */
  producerConfig?: Omit<ProducerConfigLike, 'idempotent' | 'maxInFlightRequests'>;
  /** Broker-side timeout of one produce request. @defaultValue 30000 */
  timeoutMs?: number;
  /**
   * Record the idempotency key and the Kafka message key on `send` spans (`exactly_once.key`,
   * `messaging.kafka.message.key`). Keys are customer data; the request id is always recorded.
   * @defaultValue false
   */
  recordKeys?: boolean;
}

export interface SendOptions {
  /** End-to-end request id (`x-request-id`), copied onto every downstream message. @defaultValue a random UUID */
  requestId?: string;
  /**
   * Dedup key of the message (`x-idempotency-key`): the same business request must get the same
   * key every time it is sent. @defaultValue the request id
   */
  idempotencyKey?: string;
  /** Kafka record key: picks the partition, so records with one key stay in order. @defaultValue none (null key) */
  key?: string;
  /** Extra headers; the SDK's own (`x-request-id`, `x-idempotency-key`, trace) win. */
  headers?: Readonly<Record<string, string>>;
}

const SEND_OPTIONS = {
  requestId: true,
  idempotencyKey: true,
  key: true,
  headers: true,
} as const satisfies OptionNames<SendOptions>;

export interface SendResult {
  readonly requestId: string;
  readonly idempotencyKey: string;
}

/** A connected-on-demand idempotent producer that is also core's {@link OutgoingPublisher}. */
export interface ExactlyOnceProducer extends OutgoingPublisher {
  /**
   * Sends one JSON (or bytes/string) message as a first service: sets `x-request-id`,
   * `x-idempotency-key` and `traceparent`, in a `send <topic>` PRODUCER span. Resolves when all
   * in-sync replicas acknowledged it (acks -1).
   */
  send(topic: string, message: unknown, options?: SendOptions): Promise<SendResult>;
  /** Produces raw records to one topic, acks -1. Used for dead-letter and retry copies. */
  sendRecords(topic: string, records: ProducerRecordMessageLike[]): Promise<void>;
  /** Resolves once the producer is connected (sends connect lazily otherwise). */
  connect(): Promise<void>;
  /**
   * Disconnects, for good: from then on `send`, `sendRecords`, `publish` and `connect` reject
   * with a `ClosedError` and never connect again (create a new producer instead). Safe to call
   * twice.
   */
  disconnect(): Promise<void>;
}

/**
 * Creates the producer. Sends connect on first use; call {@link ExactlyOnceProducer.disconnect}
 * when done (it is final).
 *
 * @example
 * ```ts
 * const producer = createProducer({ kafka });
 * const { requestId } = await producer.send('orders', { orderId: 'o-1' }, { key: 'o-1' });
 * ```
 */
export function createProducer(options: ProducerOptions): ExactlyOnceProducer {
  refuseUnknownOptions(options, {
    kafka: true,
    producerConfig: true,
    timeoutMs: true,
    recordKeys: true,
  } satisfies OptionNames<ProducerOptions>);
  const timeout = options.timeoutMs ?? 30_000;
  // Set by disconnect(): a send after it (a late run of a stopped consumer, say) must not
  // connect the client again and leave it connected with nobody to disconnect it.
  let closed = false;
  let disconnecting: Promise<void> | undefined;
  const closedError = () => new ClosedError('producer', 'the producer is disconnected; create a new one');
  const open = (): Session => ({
    client: producerClient(options.kafka, { ...options.producerConfig }, timeout),
    sending: new Set(),
  });
  let session = open();
  // Replaced clients' disconnects, each once its sends settled; disconnect() waits for them.
  let retired: Promise<unknown> = Promise.resolve();
  const connectSession = (s: Session) => {
    if (closed) return Promise.reject(closedError());
    s.connecting ??= s.client.producer.connect().catch((error: unknown) => {
      // A failed connect must not stick: the next send tries again.
      s.connecting = undefined;
      throw error;
    });
    return s.connecting;
  };
  const connect = () => connectSession(session);

  const direct = async (topicMessages: TopicMessages[]) => {
    const s = session;
    await connectSession(s);
    const sending = s.client.send(topicMessages);
    s.sending.add(sending);
    const settled = () => s.sending.delete(sending);
    sending.then(settled, settled);
    try {
      await sending;
    } catch (error) {
      // kafkajs numbers each partition's batches for the broker's deduplication and, when a
      // request fails, takes back the numbers of every partition in it, also of those the
      // broker had appended. The next batch to such a partition would reuse a number: refused
      // for ever (OUT_OF_ORDER_SEQUENCE_NUMBER) or, with the same record count, taken for a
      // retry and dropped unwritten. A new client gets a new producer id, numbered from 0;
      // what had been appended may be appended again, which consumers deduplicate.
      // librdkafka keeps its numbers right by itself.
      if (s.client.kind === 'kafkajs' && s === session && !closed) {
        session = open();
        const old = Promise.allSettled([...s.sending]).then(() => s.client.producer.disconnect());
        retired = Promise.all([retired, old.catch(() => {})]);
      }
      throw error;
    }
  };

  // With one request in flight, concurrent sends (one per busy partition) would queue behind each
  // other, a broker round trip each. Sends that arrive while a request is in flight go out
  // together in the next one, in arrival order, so per-partition order is kept. librdkafka
  // batches concurrent sends itself: they go to it directly.
  const queue: { topicMessages: TopicMessages[]; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let flushing = false;
  const flush = async () => {
    flushing = true;
    try {
      while (queue.length > 0) {
        const group = queue.splice(0, MAX_COALESCED_SENDS);
        try {
          await direct(mergeByTopic(group.flatMap((p) => p.topicMessages)));
          for (const p of group) p.resolve();
        } catch (error) {
          if (group.length === 1) {
            group[0]?.reject(error);
            continue;
          }
          // One bad record (unknown topic, too large) must not fail the sends it shared a
          // request with, again and again: each goes out alone now.
          for (const p of group) await direct(p.topicMessages).then(p.resolve, p.reject);
        }
      }
    } finally {
      flushing = false;
    }
  };
  const sendBatch = (topicMessages: TopicMessages[]): Promise<void> => {
    // An instrumentation makes its spans from the caller's context at the client call; a shared
    // request would put every coalesced message under one caller's trace.
    if (session.client.batchesSends || instrumented(session.client.producer)) return direct(topicMessages);
    return new Promise<void>((resolve, reject) => {
      queue.push({ topicMessages, resolve, reject });
      if (!flushing) void flush();
    });
  };

  return {
    connect,
    disconnect() {
      closed = true;
      disconnecting ??= (async () => {
        const pending = session.connecting;
        session.connecting = undefined;
        if (pending) {
          await pending.catch(() => {});
          await session.client.producer.disconnect();
        }
        await retired;
      })();
      return disconnecting;
    },

    async send(topic, message, sendOptions = {}) {
      if (closed) throw closedError();
      // A misspelt idempotencyKey would send under the request id: the receivers' deduplication lost.
      refuseUnknownOptions(sendOptions, SEND_OPTIONS, 'send options');
      // Refused here if a consumer would refuse it; a long request id as consumers read it.
      const { requestId, idempotencyKey } = sendIdentity(sendOptions);
      const { bytes, contentType } = encodeValue(message);
      const base: Record<string, string> = {
        'content-type': contentType,
        ...extraHeaders(sendOptions.headers),
      };
      const own = {
        [Headers.RequestId]: requestId,
        [Headers.IdempotencyKey]: idempotencyKey,
      };
      const record = (headers: Record<string, string>) => [
        { topic, messages: [{ key: sendOptions.key ?? null, value: Buffer.from(bytes), headers }] },
      ];
      if (instrumented(session.client.producer)) {
        // @opentelemetry/instrumentation-kafkajs already makes a `send <topic>` PRODUCER span
        // and injects its context into the headers; a second span would double every send.
        await sendBatch(record({ ...base, ...own }));
        return { requestId, idempotencyKey };
      }
      const span = tracer().startSpan(`send ${topic}`, {
        kind: SpanKind.PRODUCER,
        attributes: {
          'messaging.system': 'kafka',
          'messaging.destination.name': topic,
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'send',
          'exactly_once.request_id': requestId,
          ...(options.recordKeys ? { 'exactly_once.key': idempotencyKey } : {}),
          ...(sendOptions.key === undefined || !options.recordKeys
            ? {}
            : { 'messaging.kafka.message.key': sendOptions.key }),
        },
      });
      const ctx = trace.setSpan(context.active(), span);
      try {
        await context.with(ctx, () => sendBatch(record({ ...base, ...injectContext(ctx, {}), ...own })));
      } catch (error) {
        recordError(span, error);
        throw error;
      } finally {
        span.end();
      }
      return { requestId, idempotencyKey };
    },

    async sendRecords(topic, records) {
      if (closed) throw closedError();
      await sendBatch([{ topic, messages: records }]);
    },

    async publish(messages: readonly OutgoingMessage[]) {
      if (closed) throw closedError();
      if (messages.length === 0) return;
      const byTopic = new Map<string, ProducerRecordMessageLike[]>();
      for (const m of messages) {
        const list = byTopic.get(m.destination) ?? [];
        byTopic.set(m.destination, list);
        list.push({ key: m.routingKey ?? null, value: Buffer.from(m.body), headers: { ...m.headers } });
      }
      try {
        // One request for all of a run's outputs; it resolves only when every one is acknowledged.
        await sendBatch([...byTopic].map(([topic, list]) => ({ topic, messages: list })));
      } catch (error) {
        if (error instanceof ClosedError) throw error;
        throw new PublishError(`kafka produce not acknowledged: ${(error as Error)?.message ?? error}`, {
          cause: error,
        });
      }
    },
  };
}

type TopicMessages = { topic: string; messages: ProducerRecordMessageLike[] };

/** One client and its connection; replaced after a failed kafkajs send. */
interface Session {
  readonly client: ProducerClient;
  connecting?: Promise<void>;
  /** Sends under way on this client (a replaced one disconnects once they settled). */
  readonly sending: Set<Promise<unknown>>;
}

/** Upper bound of sends merged into one produce request. */
const MAX_COALESCED_SENDS = 64;

function mergeByTopic(list: TopicMessages[]): TopicMessages[] {
  const byTopic = new Map<string, ProducerRecordMessageLike[]>();
  for (const { topic, messages } of list) {
    const acc = byTopic.get(topic) ?? [];
    byTopic.set(topic, acc);
    acc.push(...messages);
  }
  return [...byTopic].map(([topic, messages]) => ({ topic, messages }));
}

/** True when an OpenTelemetry instrumentation wrapped the client's send (shimmer marks wrappers). */
function instrumented(producer: ProducerLike): boolean {
  return (producer.sendBatch as { __wrapped?: unknown }).__wrapped === true;
}
