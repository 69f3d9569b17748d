/**
 * Configuration shared by the driver and the three services. Services read everything from the
 * environment (the driver sets it), so each one can also be started by hand.
 */

/** Where the local servers are (scripts/infra.sh); the same variables the test suite reads. */
export const servers = {
  redisUrl: process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379',
  amqpUrl: process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  kafkaBrokers: (process.env.EO_KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
  mongoUrl: process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017',
  otlpUrl: process.env.EO_OTLP_URL ?? 'http://127.0.0.1:4318',
  jaegerQueryUrl: process.env.EO_JAEGER_QUERY_URL ?? 'http://127.0.0.1:16686',
  /** Zipkin: spans in on `/api/v2/spans`, the trace UI on `/zipkin/`. */
  zipkinUrl: process.env.EO_ZIPKIN_URL ?? 'http://127.0.0.1:9411',
} as const;

/** Where a person looks at a trace: Zipkin's UI page of the trace. */
export const zipkinTraceUrl = (traceId: string): string => `${servers.zipkinUrl}/zipkin/traces/${traceId}`;

/**
 * Every broker and store name of one demo run. A run owns its names, so runs never see each
 * other's messages or records and the driver can delete everything afterwards.
 */
export function runNames(run: string) {
  return {
    /** A publishes OrderCreated here (a direct exchange) with routing key `order.created`. */
    ordersExchange: `demo.${run}.orders`,
    orderCreatedKey: 'order.created',
    /** B's work queue, bound to the exchange; B declares it with its retry and dead-letter queues. */
    billingQueue: `demo.${run}.billing`,
    billingDeadLetters: `demo.${run}.billing.dlq`,
    /** A second queue on the exchange the driver reads, to re-publish exact copies. */
    tapQueue: `demo.${run}.tap`,
    paymentsTopic: `demo.${run}.payments`,
    paymentsDeadLetters: `demo.${run}.payments.dlq`,
    notificationGroup: `demo.${run}.notification`,
    /** Redis key prefix of A's and C's processed-store records (no `{` or `}`). */
    redisPrefix: `demo-${run}`,
    /** B's processed-store database (FerretDB database names allow letters, digits and `_`). */
    mongoDb: `demo_${run}`,
  };
}

export type RunNames = ReturnType<typeof runNames>;

/** An environment variable the driver always sets; a clear error when started by hand without it. */
export function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required (the demo driver sets it)`);
  return value;
}

/** B's RabbitMQ retry tiers (one delay queue each); the driver deletes them after a run. */
export const BILLING_RETRY_DELAYS_MS = [500, 1_000, 2_000, 5_000];

/** Size of an itemized receipt: large enough that it must not travel inline. */
export const RECEIPT_BYTES = 4 * 1024 * 1024;

/** OrderCreated: A -> B over RabbitMQ. */
export interface OrderCreated {
  type: 'OrderCreated';
  orderId: string;
  customerId: string;
  email: string;
  amountCents: number;
  currency: string;
  items: { sku: string; quantity: number }[];
  /** `itemized` orders get a multi-megabyte receipt, stored by reference (C). */
  receipt: 'summary' | 'itemized';
}

/** PaymentCaptured: B -> C over Kafka. */
export interface PaymentCaptured {
  type: 'PaymentCaptured';
  orderId: string;
  chargeId: string;
  email: string;
  amountCents: number;
  currency: string;
  receipt: 'summary' | 'itemized';
}
