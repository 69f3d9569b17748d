/**
 * `npm run -w @exactly-once-examples/three-services trace -- <request-id>`: prints an order's trace as
 * a span tree, found by request id through Jaeger's query API (the request id is the client's
 * Idempotency-Key, on every process span as `exactly_once.request_id`), then its Zipkin UI link.
 * Requests that were answered from the store (retries, replays) are their own short traces; they
 * are listed after it.
 */
import { Command } from 'commander';
import { servers, zipkinTraceUrl } from '../shared/config.js';
import { findTraces, type JaegerTrace, renderTree, serviceOf, tagOf } from './jaeger.js';

const program = new Command()
  .name('trace')
  .argument('<request-id>', "the order's Idempotency-Key")
  .option('--jaeger <url>', 'Jaeger query API', servers.jaegerQueryUrl)
  .option('--hours <n>', 'how far back to look', '24')
  .parse();
const [requestId] = program.args as [string];
const { jaeger, hours } = program.opts<{ jaeger: string; hours: string }>();
const since = Date.now() - Number(hours) * 3600_000;
const tags = { 'exactly_once.request_id': requestId };

// B's process spans carry the request id and live in the order's one trace.
let traces = await findTraces(jaeger, 'billing', tags, since);
if (traces.length === 0) traces = await findTraces(jaeger, 'order', tags, since);
if (traces.length === 0) {
  console.error(`no trace with exactly_once.request_id=${requestId} in ${jaeger} (last ${hours} h)`);
  process.exit(1);
}
const main = traces[0] as JaegerTrace;
const services = [...new Set(main.spans.map((s) => serviceOf(main, s)))].join(', ');
const seconds =
  (Math.max(...main.spans.map((s) => s.startTime + s.duration)) -
    Math.min(...main.spans.map((s) => s.startTime))) /
  1e6;
console.log(
  `trace ${main.traceID}  request ${requestId}  ${main.spans.length} spans  ${services}  ${seconds.toFixed(2)} s\n`,
);
for (const line of renderTree(main)) console.log(line);
if (traces.length > 1)
  console.log(`\n(${traces.length - 1} more trace(s) with billing spans of this request id)`);

const others = (await findTraces(jaeger, 'order', tags, since)).filter((t) => t.traceID !== main.traceID);
if (others.length > 0) {
  console.log(`\n${others.length} more request(s) with this Idempotency-Key, each its own trace:`);
  for (const t of others.sort((a, b) => (a.spans[0]?.startTime ?? 0) - (b.spans[0]?.startTime ?? 0))) {
    const root = t.spans.find((s) => s.references.length === 0);
    const proc = t.spans.find((s) => tagOf(s, 'exactly_once.outcome') !== undefined);
    const linked = proc?.references.some((r) => r.refType === 'FOLLOWS_FROM' && r.traceID === main.traceID);
    console.log(
      `  ${t.traceID}  ${root?.operationName ?? '?'} [${String(tagOf(root ?? t.spans[0]!, 'http.response.status_code') ?? '?')}]` +
        `  outcome ${String(proc ? tagOf(proc, 'exactly_once.outcome') : '?')}${linked ? '  (links to the trace above)' : ''}`,
    );
  }
}
console.log(`\n${zipkinTraceUrl(main.traceID)}  (Zipkin's UI)\n${jaeger}/api/traces/${main.traceID}`);
