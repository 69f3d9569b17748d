/**
 * The chaos driver: starts the payment provider, the email API and the services (A, B x2, C x2),
 * places orders the way a careful client does (one key per order, the same key on every retry)
 * while it breaks things on purpose, then checks what the outside world saw: one charge and one
 * email per order, every duplicate stopped, every trace whole. Exits non-zero if anything is off.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import { type ProviderState, startPaymentProvider } from '../billing/payment-provider.js';
import { type SinkState, startEmailSink } from '../notification/email-sink.js';
import { runNames, servers, zipkinTraceUrl } from '../shared/config.js';
import {
  bindOrderQueues,
  cleanup,
  createTopics,
  deadLetterCounts,
  KafkaTap,
  newKafka,
  preflight,
  RabbitTap,
  restartRabbit,
  sleep,
} from './brokers.js';
import { checkTraces, findTraces, renderTree, type TraceReport } from './jaeger.js';
import { Progress } from './progress.js';
import { Fleet, type ServiceName } from './services.js';
import { OrderClient, type OrderResult, planOrders } from './traffic.js';
import { buildTable, printTable } from './verify.js';

const int = (v: string) => {
  const n = Number.parseInt(v, 10);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a positive integer');
  return n;
};
const opts = new Command()
  .name('demo')
  .description('A -> B -> C under chaos: one charge and one email per order, or a non-zero exit')
  .option('--orders <n>', 'orders to place (default 200, 30 with --quick)', int)
  .option('--quick', 'short run: 30 orders, one SIGKILL (billing), no broker restart')
  .option('--seed <n>', 'seed of the traffic and fault plan', int)
  .option('--keep', "keep the run's queues, topics, records and temp files")
  .parse()
  .opts<{ orders?: number; quick?: boolean; seed?: number; keep?: boolean }>();

const quick = opts.quick === true;
const total = opts.orders ?? (quick ? 30 : 200);
const seed = opts.seed ?? Math.floor(Math.random() * 1e9);
const run = `r${Date.now().toString(36)}${Math.random().toString(36).slice(2, 5)}`;
const names = runNames(run);
const exampleDir = fileURLToPath(new URL('..', import.meta.url));
const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
const workDir = mkdtempSync(join(tmpdir(), `eo-demo-${run}-`));
const logDir = join(workDir, 'logs');
const blobDir = join(workDir, 'blobs');
mkdirSync(logDir);

const getJson = async <T>(url: string): Promise<T> => (await fetch(url)).json() as Promise<T>;
const postJson = (url: string, body: unknown) =>
  fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function main(): Promise<number> {
  console.log(`three-services demo: run ${run}, ${total} orders, seed ${seed}${quick ? ', quick' : ''}`);
  const missing = await preflight(servers.jaegerQueryUrl, servers.zipkinUrl);
  if (missing.length > 0) {
    console.error(`not reachable: ${missing.join(', ')}. Start the servers with: bash scripts/infra.sh up`);
    return 2;
  }
  const started = Date.now();
  const provider = await startPaymentProvider();
  const sink = await startEmailSink();
  const kafka = newKafka(`demo-driver-${run}`);
  const admin = kafka.admin();
  await admin.connect();
  await createTopics(admin, names);

  const fleet = new Fleet(exampleDir, logDir, {
    DEMO_RUN: run,
    PROVIDER_URL: provider.url,
    EMAIL_SINK_URL: sink.url,
    BLOB_DIR: blobDir,
  });
  process.once('SIGINT', () => {
    fleet.killAll();
    process.exit(130);
  });
  const progress = new Progress(total);
  const rabbitTap = new RabbitTap(names);
  const kafkaTap = new KafkaTap(kafka, names);
  let exitCode = 1;
  let poll: NodeJS.Timeout | undefined;
  try {
    progress.update({ phase: 'starting services' });
    // B declares its queues; the exchange binding needs them, and A needs the binding.
    await Promise.all([
      fleet.start('billing'),
      fleet.start('billing'),
      fleet.start('notification'),
      fleet.start('notification'),
    ]);
    await bindOrderQueues(names);
    rabbitTap.start();
    await kafkaTap.start();
    const order = await fleet.start('order');
    progress.event(`started ${fleet.instances.map((i) => i.name).join(', ')} (logs in ${logDir})`);

    const killBillingAt = Math.floor(total * 0.3);
    const killNotificationAt = quick ? undefined : Math.floor(total * 0.6);
    const restartAt = quick ? undefined : Math.floor(total * 0.45);
    const plans = planOrders({ run, orders: total, seed, killBillingAt, killNotificationAt });
    for (const p of plans) {
      if (p.providerFault)
        await postJson(`${provider.url}/admin/faults`, { requestId: p.key, fault: p.providerFault });
      if (p.emailFault) await postJson(`${sink.url}/admin/faults`, { requestId: p.key, fault: p.emailFault });
      if (p.killBilling)
        await postJson(`${provider.url}/admin/faults`, { requestId: p.key, fault: 'stall', stallMs: 20_000 });
      if (p.killNotification)
        await postJson(`${sink.url}/admin/faults`, { requestId: p.key, fault: 'stall', stallMs: 20_000 });
    }

    let placed = 0;
    poll = setInterval(async () => {
      try {
        await fleet.pollStats();
        const p = await getJson<ProviderState>(`${provider.url}/admin/state`);
        const s = await getJson<SinkState>(`${sink.url}/admin/state`);
        progress.update({ placed, charges: p.stats.charges, emails: s.stats.emails });
      } catch {
        // the next tick tries again
      }
    }, 500);

    const injected = { rabbitDuplicates: 0, kafkaDuplicates: 0, tamperedRabbit: 0, tamperedKafka: 0 };
    const killed = { billing: 0, notification: 0 };
    const killedWorkers = new Set<string>();
    /** Retries `attempt` until it reports success (the tap may not have the message yet). */
    const eventually = async (what: string, attempt: () => Promise<boolean>) => {
      for (const deadline = Date.now() + 90_000; Date.now() < deadline; await sleep(200)) {
        if (await attempt().catch(() => false)) return true;
      }
      progress.event(`gave up: ${what}`);
      return false;
    };
    const killWhenHeld = async (service: ServiceName, requestId: string) => {
      const url = service === 'billing' ? provider.url : sink.url;
      let by: string | undefined;
      await eventually(`${service} stall of ${requestId}`, async () => {
        const state = await getJson<{ stalled: { requestId: string; by: string }[] }>(`${url}/admin/state`);
        by = state.stalled.find((h) => h.requestId === requestId)?.by;
        return by !== undefined;
      });
      const victim = by ? fleet.byName(by) : undefined;
      if (!victim?.alive) return;
      const peer = service === 'billing' ? 'the payment provider' : 'the email API';
      progress.event(`SIGKILL ${victim.name}: ${peer} acted on ${requestId}, its answer never arrives`);
      await fleet.kill(victim);
      killed[service as 'billing' | 'notification']++;
      killedWorkers.add(victim.name);
      const replacement = await fleet.start(service);
      progress.event(`started ${replacement.name} in its place`);
    };

    progress.update({ phase: 'placing orders' });
    const client = new OrderClient(() => `http://127.0.0.1:${order.port}`);
    const results: OrderResult[] = [];
    const background: Promise<unknown>[] = [];
    const interval = quick ? 300 : 250;
    const sendStart = Date.now();
    for (const plan of plans) {
      await sleep(Math.max(0, sendStart + plan.index * interval - Date.now()));
      if (plan.index === restartAt) {
        background.push(
          (async () => {
            progress.event('restarting RabbitMQ: scripts/infra.sh down rabbitmq && up rabbitmq');
            const ms = await restartRabbit(repoRoot, join(logDir, 'rabbitmq-restart.log'));
            progress.event(`RabbitMQ is back after ${(ms / 1000).toFixed(1)} s`);
          })(),
        );
      }
      if (plan.killBilling) background.push(killWhenHeld('billing', plan.key));
      if (plan.killNotification) background.push(killWhenHeld('notification', plan.key));
      background.push(
        client
          .run(plan)
          .catch(
            (error: unknown): OrderResult => ({
              plan,
              requests: 0,
              problems: [String(error)],
              replayed: 0,
              rejected422: 0,
            }),
          )
          .then(async (result) => {
            results[plan.index] = result;
            placed++;
            if (!result.orderId) return;
            if (
              plan.rabbitDuplicate &&
              (await eventually(`copy of ${plan.key}`, () => rabbitTap.republish(plan.key)))
            ) {
              injected.rabbitDuplicates++;
            }
            if (
              plan.kafkaDuplicate &&
              (await eventually(`copy of ${plan.key}`, () => kafkaTap.reproduce(plan.key)))
            ) {
              injected.kafkaDuplicates++;
            }
          }),
      );
    }
    const missingKey = { sent: 2, rejected400: 0 };
    for (let i = 0; i < missingKey.sent; i++) {
      if ((await client.post(undefined, plans[0]?.body)).status === 400) missingKey.rejected400++;
    }
    await Promise.all(background);
    progress.update({ phase: 'draining' });

    // Tampered copies: the same idempotency key with another amount must be dead-lettered by B
    // and C, never processed. Only for orders that are done, so the original is what counts.
    const sinkState = () => getJson<SinkState>(`${sink.url}/admin/state`);
    const tamperCount = quick ? 1 : 2;
    const emailed = new Set((await sinkState()).emails.map((e) => e.requestId));
    const bump = (b: Record<string, unknown>) => {
      b.amountCents = Number(b.amountCents) + 1;
    };
    for (const r of results.filter((x) => x.orderId && emailed.has(x.plan.key)).slice(0, tamperCount)) {
      if (await eventually('tampered copy', () => rabbitTap.republish(r.plan.key, bump)))
        injected.tamperedRabbit++;
      if (await eventually('tampered copy', () => kafkaTap.reproduce(r.plan.key, bump)))
        injected.tamperedKafka++;
      progress.event(`published tampered copies of ${r.plan.key} (amount + 1, same key) to B and C`);
    }

    const accepted = results.filter((r) => r.orderId).length;
    const drained = async () => {
      await fleet.pollStats();
      const dl = await deadLetterCounts(admin, names);
      const b = fleet.outcomes('billing');
      return (
        (await sinkState()).emails.length >= accepted &&
        dl.billing >= injected.tamperedRabbit &&
        dl.notification >= injected.tamperedKafka &&
        (b.duplicate ?? 0) >= injected.rabbitDuplicates &&
        (fleet.outcomes('notification').duplicate ?? 0) >= injected.kafkaDuplicates
      );
    };
    for (const deadline = Date.now() + (quick ? 90_000 : 180_000); Date.now() < deadline; await sleep(500)) {
      if (await drained().catch(() => false)) break;
    }
    await sleep(1_500); // stragglers: a late duplicate would show up in the counts below
    clearInterval(poll);
    progress.update({ phase: 'stopping services' });
    await fleet.stopAll();
    progress.stop();

    // Which workers made each order's charges and emails: a run's spans can die with its worker.
    const charges = (await getJson<ProviderState>(`${provider.url}/admin/state`)).charges;
    const emails = (await sinkState()).emails;
    const onlyOnKilled = (made: { requestId: string; by: string }[], requestId: string) => {
      const by = made.filter((m) => m.requestId === requestId).map((m) => m.by);
      return by.length > 0 && by.every((worker) => killedWorkers.has(worker));
    };
    const traces = await checkTraces(
      servers.jaegerQueryUrl,
      results
        .filter((r) => r.orderId)
        .map((r) => ({
          requestId: r.plan.key,
          billingDuplicate: r.plan.rabbitDuplicate,
          notificationDuplicate: r.plan.kafkaDuplicate,
          replayed: r.replayed > 0,
          ranOnlyOnKilled: [
            ...(onlyOnKilled(charges, r.plan.key) ? (['billing'] as const) : []),
            ...(onlyOnKilled(emails, r.plan.key) ? (['notification'] as const) : []),
          ],
        })),
      started - 60_000,
    );
    const rows = await buildTable({
      results,
      missingKey,
      provider: await getJson<ProviderState>(`${provider.url}/admin/state`),
      sink: await sinkState(),
      deadLetters: await deadLetterCounts(admin, names),
      outcomes: {
        order: fleet.outcomes('order'),
        billing: fleet.outcomes('billing'),
        notification: fleet.outcomes('notification'),
      },
      injected,
      killed,
      completedTwice: traces.completedTwice,
      blobDir,
      crashes: fleet.crashes,
    });
    console.log(`\nverification (run ${run}, ${((Date.now() - started) / 1000).toFixed(0)} s)`);
    printTable(rows);
    for (const s of ['order', 'billing', 'notification'] as const) {
      const o = Object.entries(fleet.outcomes(s)).map(([k, v]) => `${k} ${v}`);
      console.log(`  outcomes of ${s.padEnd(12)} ${o.join(', ')}`);
    }
    for (const c of fleet.crashes) console.log(`  crash: ${c}`);
    await printTraces(results, traces, started - 60_000);
    exitCode = rows.every((r) => r.ok !== false) && traces.problems.length === 0 ? 0 : 1;
  } finally {
    clearInterval(poll);
    progress.stop();
    fleet.killAll();
    await rabbitTap.stop();
    await kafkaTap.stop();
    if (!opts.keep) await cleanup(admin, names);
    await admin.disconnect();
    await provider.close();
    await sink.close();
  }
  if (exitCode === 0 && !opts.keep) rmSync(workDir, { recursive: true, force: true });
  else console.log(`\nlogs: ${logDir}`);
  console.log(exitCode === 0 ? '\nPASS: every order charged once and emailed once' : '\nFAIL');
  return exitCode;
}

/** The trace summary, one order's span tree, and how to open any order's trace. */
async function printTraces(results: OrderResult[], report: TraceReport, since: number): Promise<void> {
  console.log(
    `\ntraces: ${report.complete}/${report.checked} orders are one trace from order's POST /orders through ` +
      `billing and notification; ${report.withCopies} of them also hold the injected copies, settled as ` +
      `duplicates; ${report.replayed} have replayed requests linked to them`,
  );
  for (const p of report.problems.slice(0, 10)) console.log(`  FAIL ${p}`);
  // Not a failure: the run's effect is counted above; its spans were in the killed worker's exporter.
  for (const l of report.lostWithKill) console.log(`  spans lost with a SIGKILLed worker: ${l}`);
  const sample = results.find((r) => r.plan.killBilling && r.orderId) ?? results.find((r) => r.orderId);
  if (!sample) return;
  const tags = { 'exactly_once.request_id': sample.plan.key };
  const [t] = await findTraces(servers.jaegerQueryUrl, 'billing', tags, since);
  if (t) {
    const why = sample.plan.killBilling ? ' (its billing worker was SIGKILLed)' : '';
    console.log(`\ntrace of ${sample.plan.key}${why}:`);
    for (const line of renderTree(t)) console.log(`  ${line}`);
    console.log(`\nthe same trace in Zipkin's UI:\n  ${zipkinTraceUrl(t.traceID)}`);
  }
  console.log(
    `\nopen any order's trace by request id:\n  npm run -w @exactly-once-examples/three-services trace -- ${sample.plan.key}\n` +
      `  ${servers.jaegerQueryUrl}/api/traces?service=billing&tags=${encodeURIComponent(JSON.stringify(tags))}`,
  );
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    console.error(`logs: ${logDir}`);
    process.exit(1);
  },
);
