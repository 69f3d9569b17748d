/**
 * The soak counts a duplicate effect as a product failure, so its store servers must not lose an
 * acknowledged write when they are killed. mongo-java-server's H2 file is written in the
 * background about once a second: killed, a plain server loses its last second of acknowledged
 * inserts (measured: 2,110 of 6,620). The soak runs it with `--commit-each-command`
 * (scripts/mongo-java/Main.java); this checks that every insert the driver saw acknowledged is
 * still there after a SIGKILL and a restart on the same file.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MongoClient } from 'mongodb';
import { afterAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../support/wait.js';
import { mongoJavaArgs, mongoJavaHome } from './servers.js';

const port = Number(process.env.EO_TEST_MONGO_JAVA_DURABLE_PORT ?? 27049);
const url = `mongodb://127.0.0.1:${port}/?directConnection=true`;
const dir = mkdtempSync(join(tmpdir(), 'eo-mongo-java-durable-'));
let server: ChildProcess | undefined;

const start = () => {
  server = spawn('java', mongoJavaArgs(mongoJavaHome(), port, join(dir, 'mongo.mv')), { stdio: 'ignore' });
  return server;
};
const connect = () =>
  waitUntil(
    async () => {
      const client = new MongoClient(url, { serverSelectionTimeoutMS: 500 });
      try {
        await client.db('admin').command({ ping: 1 });
        return client;
      } catch {
        await client.close().catch(() => {});
        return undefined;
      }
    },
    { timeoutMs: 60_000, intervalMs: 200, message: 'mongo-java-server answers' },
  );
const kill = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });

afterAll(async () => {
  if (server) await kill(server);
  rmSync(dir, { recursive: true, force: true });
});

describe("the soak's mongo-java-server", () => {
  it('keeps every acknowledged insert through a SIGKILL (--commit-each-command)', async () => {
    const first = start();
    let client = await connect();
    const things = client.db('durable').collection<{ _id: string }>('things');
    let acknowledged = 0;
    let stop = false;
    // Four writers insert until the server dies under them.
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          await things.insertOne({ _id: `w${w}-${i}` });
          acknowledged++;
        } catch {
          return;
        }
      }
    });
    await waitUntil(() => acknowledged >= 500, { timeoutMs: 60_000, message: '500 inserts' });
    await kill(first);
    stop = true;
    await Promise.all(writers);
    await client.close(true).catch(() => {});

    start();
    client = await connect();
    try {
      const kept = await client.db('durable').collection('things').countDocuments();
      // An insert may have landed without its reply (the kill cut it): more is fine, less is not.
      expect(kept).toBeGreaterThanOrEqual(acknowledged);
    } finally {
      await client.close();
    }
  });
});
