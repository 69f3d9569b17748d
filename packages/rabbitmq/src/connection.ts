/**
 * Connections come from amqp-connection-manager: it reconnects with backoff after a broker
 * restart or a dropped socket and re-runs each channel's setup on the new connection. We use its
 * setup hook for consumers (so every delivery is settled on the raw channel that delivered it)
 * and its buffering confirm channels for publishing.
 */
import amqp, { type AmqpConnectionManager } from 'amqp-connection-manager';

export type { AmqpConnectionManager } from 'amqp-connection-manager';

/** A broker URL (or several, tried in turn), or a connection manager you own. */
export type ConnectionInput = string | readonly string[] | AmqpConnectionManager;

export function resolveConnection(input: ConnectionInput): {
  manager: AmqpConnectionManager;
  owned: boolean;
} {
  if (typeof input === 'string' || Array.isArray(input)) {
    const urls = (typeof input === 'string' ? [input] : [...input]) as string[];
    return {
      manager: amqp.connect(urls, { heartbeatIntervalInSeconds: 5, reconnectTimeInSeconds: 1 }),
      owned: true,
    };
  }
  return { manager: input as AmqpConnectionManager, owned: false };
}
