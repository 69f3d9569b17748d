/**
 * The CLI against a store server that accepts connections and never answers (a Redis stopped with
 * SIGSTOP, a MongoDB whose host hangs): each command ends with an error naming the server, never
 * waits for ever. Before, `stuck` and `inspect` against a stopped Redis printed nothing and never
 * returned.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

let server: Server;
let port = 0;
const sockets = new Set<Socket>();

beforeAll(async () => {
  // Reads whatever a client sends and answers nothing.
  server = createServer((socket) => {
    sockets.add(socket);
    socket.on('data', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => server.close(resolve));
});

describe('the CLI against a server that never answers', () => {
  it.each([
    ['stuck --redis', ['stuck', '--older-than', '5s', '--consumer', 'billing', '--redis']],
    ['inspect --redis', ['inspect', 'billing', 'order-1', '--redis']],
  ])('%s ends with an error saying the server did not answer', { timeout: 100_000 }, async (_name, args) => {
    const r = await cli([...args, `redis://127.0.0.1:${port}`], { timeoutMs: 90_000 });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/did not answer within \d+ s/);
    expect(r.stderr).toContain(`127.0.0.1:${port}`);
  });

  it('--timeout sets how long a call may wait, and the error says how to give a slow server longer', async () => {
    // An outside test: `stuck` over a few thousand records on a slow server needed more than 15 s.
    const r = await cli([
      'inspect',
      'billing',
      'order-1',
      '--timeout',
      '2s',
      '--redis',
      `redis://127.0.0.1:${port}`,
    ]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/did not answer within 2 s: .*give it longer with --timeout/);
    const bad = await cli([
      'inspect',
      'billing',
      'order-1',
      '--timeout',
      'soon',
      '--redis',
      'redis://127.0.0.1:1',
    ]);
    expect(bad.code).toBe(2);
  });

  it('stuck --mongo ends with an error too', { timeout: 100_000 }, async () => {
    const r = await cli(
      ['stuck', '--older-than', '5s', '--consumer', 'billing', '--mongo', `mongodb://127.0.0.1:${port}/eo`],
      {
        timeoutMs: 90_000,
      },
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`127.0.0.1:${port}`);
  });
});
