/**
 * Connections come from amqp-connection-manager: it reconnects with backoff after a broker
 * restart or a dropped socket, round-robins over several URLs, and sets heartbeats. Channels are
 * ours (see channel.ts): the manager's channel wrapper only reopens a channel after the whole
 * connection was lost, and we must know which channel delivered each message.
 */
import amqp, { type AmqpConnectionManager } from 'amqp-connection-manager';

export type { AmqpConnectionManager } from 'amqp-connection-manager';

/** A broker URL (or several, tried in turn), or a connection manager you own. */
export type ConnectionInput = string | readonly string[] | AmqpConnectionManager;

export function resolveConnection(input: ConnectionInput): {
  manager: AmqpConnectionManager;
  /** True when we created the manager, so we close it. */
  owned: boolean;
} {
  if (typeof input === 'string' || Array.isArray(input)) {
    const urls = (typeof input === 'string' ? [input] : [...input]) as string[];
    return {
      // A 5 s heartbeat notices a dead peer within ~10 s; reconnect attempts every second.
      manager: amqp.connect(urls, { heartbeatIntervalInSeconds: 5, reconnectTimeInSeconds: 1 }),
      owned: true,
    };
  }
  return { manager: input as AmqpConnectionManager, owned: false };
}
