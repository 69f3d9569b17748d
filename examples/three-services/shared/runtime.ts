/** Process plumbing every service shares: a logger, the stats endpoint, readiness and shutdown. */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger, LogMeta } from '@exactly-once/core';
import type { Tracing } from './tracing.js';

/** One line per event on stderr; the driver writes each instance's output to its own log file. */
export function createLogger(instance: string): Logger {
  const write = (level: string) => (message: string, meta?: LogMeta) => {
    const extra = meta ? ` ${JSON.stringify(meta)}` : '';
    process.stderr.write(`${new Date().toISOString()} ${level} [${instance}] ${message}${extra}\n`);
  };
  return { debug: () => {}, info: write('info'), warn: write('warn'), error: write('error') };
}

/**
 * `GET /stats`: the instance's pipeline outcomes (from its process spans) plus service counters.
 * `POST /flush`: exports buffered spans now. The driver calls it right before it SIGKILLs an
 * instance: the crash is about processing state, and the trace check should not fail only
 * because telemetry still in the exporter's buffer died with the process.
 */
export async function serveStats(
  instance: string,
  tracing: Tracing,
  extra: () => Record<string, unknown> = () => ({}),
): Promise<{ port: number; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ instance, outcomes: tracing.outcomes, ...extra() }));
    } else if (req.method === 'POST' && req.url === '/flush') {
      tracing.flush().then(
        () => res.writeHead(204).end(),
        (error: unknown) => res.writeHead(500).end(String(error)),
      );
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) =>
    server.listen(Number(process.env.STATS_PORT ?? 0), '127.0.0.1', resolve),
  );
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Tells the driver (over the IPC channel it opened) that the instance is ready, and on which ports. */
export function announceReady(info: Record<string, unknown>): void {
  if (process.send) process.send({ type: 'ready', ...info });
  else console.log(`ready ${JSON.stringify(info)}`);
}

/**
 * Runs `stop` once on SIGTERM/SIGINT, or when the driver that started us went away, then exits.
 * `stop` should stop consuming first (unacked messages go back to the broker), then flush spans.
 */
export function onShutdown(logger: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const run = (why: string) => {
    if (stopping) return;
    stopping = true;
    logger.info(`shutting down (${why})`);
    // Longer than the services' stop (5 s) and idle (30 s): a run stop() gave up on may still
    // be recording its completion, and exiting under it is a crash.
    const guard = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, 45_000);
    stop().then(
      () => {
        clearTimeout(guard);
        process.exit(0);
      },
      (error: unknown) => {
        logger.error('shutdown failed', { error: String(error) });
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => run('SIGTERM'));
  process.once('SIGINT', () => run('SIGINT'));
  process.once('disconnect', () => run('driver went away'));
}
