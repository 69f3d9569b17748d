/**
 * A TCP proxy in front of the API that can lose responses: for the next `n` connections it
 * forwards the request, throws the server's answer away and resets the client's connection. The
 * server did all its work; the client only sees a broken connection (a mobile network timing out,
 * a load balancer dropping the reply).
 */
import { createServer, type Socket, connect } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface LossyProxy {
  readonly url: string;
  /** Lose the responses of the next `n` connections. */
  dropNextResponses(n: number): void;
  /** Responses lost so far. */
  readonly dropped: number;
  close(): Promise<void>;
}

export async function startLossyProxy(target: string): Promise<LossyProxy> {
  const { hostname, port } = new URL(target);
  let toDrop = 0;
  let dropped = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const drop = toDrop > 0;
    if (drop) toDrop--;
    const upstream = connect(Number(port), hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    if (!drop) {
      upstream.pipe(client);
    } else {
      upstream.once('data', () => {
        // The answer exists; the client never gets it.
        dropped++;
        client.resetAndDestroy();
        upstream.destroy();
      });
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${address.port}`,
    dropNextResponses(n) {
      toDrop += n;
    },
    get dropped() {
      return dropped;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
