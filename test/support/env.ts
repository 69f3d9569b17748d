import { randomUUID } from 'node:crypto';

/** Where the real local servers are (see scripts/infra.sh); each can be overridden by env. */
export const env = {
  redisUrl: process.env.EO_REDIS_URL ?? 'redis://127.0.0.1:6379',
  redisClusterNodes: (process.env.EO_REDIS_CLUSTER_NODES ?? '127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003')
    .split(',')
    .map((hp) => {
      const [host, port] = hp.split(':');
      return { host: host as string, port: Number(port) };
    }),
  amqpUrl: process.env.EO_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  rabbitManagementUrl: process.env.EO_RABBIT_MANAGEMENT_URL ?? 'http://guest:guest@127.0.0.1:15672',
  kafkaBrokers: (process.env.EO_KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
  mongoUrl: process.env.EO_MONGO_URL ?? 'mongodb://127.0.0.1:27017',
  mongoJavaUrl: process.env.EO_MONGO_JAVA_URL ?? 'mongodb://127.0.0.1:27018',
  otlpUrl: process.env.EO_OTLP_URL ?? 'http://127.0.0.1:4318',
  jaegerQueryUrl: process.env.EO_JAEGER_QUERY_URL ?? 'http://127.0.0.1:16686',
} as const;

/**
 * A name no other test (or earlier run) uses, for queues, topics, groups, key prefixes and
 * databases: the prefix, `-` and 32 random hex digits (a UUID without its dashes).
 */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomUUID().replace(/-/g, '')}`;
}
