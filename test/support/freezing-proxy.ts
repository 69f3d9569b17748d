/**
 * A TCP proxy that can freeze: `freeze()` stops forwarding on every connection open at that
 * moment, in both directions, and keeps them open, so a request already sent is never answered
 * and nothing tells the client (a server stalled with the connection open, or a reply lost on a
 * link nothing times out). Connections made after the freeze are forwarded as usual.
 * `hold()` keeps what clients send from then on and `release()` sends it on: requests that reach
 * the server late (a client's queue through an outage, a network that held them).
 */
import { createServer, type Server, type Socket, connect } from 'node:net';

export interface FreezingProxy {
  readonly port: number;
  /** Connections frozen so far. */
  readonly frozen: number;
  /** Connections open now (a client that gave one up has closed it). */
  readonly open: number;
  freeze(): void;
  /** Keeps what clients send (on every connection, open or new) until `release`. */
  hold(): void;
  /** Sends on what was held, in order, and forwards as usual again. */
  release(): void;
  close(): Promise<void>;
}

export async function startFreezingProxy(target: { host: string; port: number }): Promise<FreezingProxy> {
  const open = new Set<{ client: Socket; server: Socket; frozen: boolean }>();
  let frozen = 0;
  let held: { server: Socket; chunk: Buffer }[] | undefined;
  const proxy: Server = createServer((client) => {
    const server = connect(target.port, target.host);
    const link = { client, server, frozen: false };
    open.add(link);
    client.on('data', (chunk: Buffer) => {
      if (link.frozen) return;
      if (held) held.push({ server, chunk });
      else server.write(chunk);
    });
    server.on('data', (chunk) => {
      if (!link.frozen) client.write(chunk);
    });
    const end = () => {
      open.delete(link);
      client.destroy();
      server.destroy();
    };
    client.on('close', end).on('error', end);
    server.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const address = proxy.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    get frozen() {
      return frozen;
    },
    get open() {
      return open.size;
    },
    freeze() {
      for (const link of open) {
        if (!link.frozen) frozen++;
        link.frozen = true;
      }
    },
    hold() {
      held ??= [];
    },
    release() {
      const chunks = held ?? [];
      held = undefined;
      for (const { server, chunk } of chunks) if (!server.destroyed) server.write(chunk);
    },
    async close() {
      for (const link of open) {
        link.client.destroy();
        link.server.destroy();
      }
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    },
  };
}
