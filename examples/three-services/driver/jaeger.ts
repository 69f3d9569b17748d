/**
 * Reading traces back from Jaeger's query API (`/api/traces`), checking that every order's
 * request is one trace across the three services, and printing a trace as a span tree.
 */

export interface JaegerSpan {
  traceID: string;
  spanID: string;
  operationName: string;
  references: { refType: 'CHILD_OF' | 'FOLLOWS_FROM'; traceID: string; spanID: string }[];
  startTime: number; // µs since epoch
  duration: number; // µs
  tags: { key: string; value: unknown }[];
  processID: string;
}

export interface JaegerTrace {
  traceID: string;
  spans: JaegerSpan[];
  processes: Record<string, { serviceName: string }>;
}

export const tagOf = (span: JaegerSpan, key: string): unknown => span.tags.find((t) => t.key === key)?.value;
export const serviceOf = (trace: JaegerTrace, span: JaegerSpan): string =>
  trace.processes[span.processID]?.serviceName ?? '?';

/** Traces with a span of `service` carrying all `tags`; Jaeger returns each trace whole. */
export async function findTraces(
  base: string,
  service: string,
  tags: Record<string, string>,
  sinceMs = Date.now() - 24 * 3600_000,
): Promise<JaegerTrace[]> {
  const q = new URLSearchParams({
    service,
    tags: JSON.stringify(tags),
    start: String(sinceMs * 1000),
    end: String((Date.now() + 60_000) * 1000),
    limit: '100',
  });
  const res = await fetch(`${base}/api/traces?${q}`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`Jaeger answered ${res.status} to ${res.url}`);
  return ((await res.json()) as { data: JaegerTrace[] | null }).data ?? [];
}

export interface TraceExpectation {
  requestId: string;
  /** An exact copy was published to B's queue / C's topic: a `duplicate` process span must show. */
  billingDuplicate: boolean;
  notificationDuplicate: boolean;
  /** The client got the stored answer back at least once: A's `duplicate` span must link here. */
  replayed: boolean;
  /**
   * Consumers whose every run of this order was on a worker the driver then SIGKILLed: spans a
   * run ended shortly before (still in that worker's exporter, sent every 100 ms) died with it.
   */
  ranOnlyOnKilled: Service[];
}

export interface TraceCheck {
  /** What is wrong with the order's trace; empty when it is complete. */
  problems: string[];
  /** The consumers whose spans are missing because the worker that ran the order was SIGKILLed. */
  lostWithKill: Service[];
  /** Consumers whose processing of the order was acked more than once (not as a duplicate). */
  completedTwice: Service[];
}

export type Service = 'billing' | 'notification';

/** Checks one order's trace: one trace, all three services, the expected duplicates. */
export async function checkTrace(base: string, e: TraceExpectation, sinceMs: number): Promise<TraceCheck> {
  const tags = { 'exactly_once.request_id': e.requestId };
  // The trace is found by billing's spans, or by order's when billing's died with its worker.
  const lostBilling = e.ranOnlyOnKilled.includes('billing');
  let traces = await findTraces(base, 'billing', tags, sinceMs);
  let foundBy = 'billing spans';
  if (traces.length === 0 && lostBilling) {
    // Every replay of the order is a trace of its own with the same request id: the order's
    // trace is the one whose run created the order (and so published OrderCreated).
    traces = (await findTraces(base, 'order', tags, sinceMs)).filter((t) => ranOrder(t, e.requestId));
    foundBy = "order's run";
  }
  if (traces.length !== 1) {
    return {
      problems: [`${e.requestId}: ${foundBy} in ${traces.length} traces, expected 1`],
      lostWithKill: [],
      completedTwice: [],
    };
  }
  const trace = traces[0] as JaegerTrace;
  const problems: string[] = [];
  const lostWithKill: Service[] = [];
  const completedTwice: Service[] = [];
  const where = `${e.requestId} (trace ${trace.traceID})`;
  const services = new Set(trace.spans.map((s) => serviceOf(trace, s)));
  for (const s of ['order', 'billing', 'notification'] as const) {
    if (services.has(s)) continue;
    if (s !== 'order' && e.ranOnlyOnKilled.includes(s)) lostWithKill.push(s);
    else problems.push(`${where}: no ${s} span`);
  }
  const isStart = (s: JaegerSpan) =>
    s.references.length === 0 && s.operationName === 'POST /orders' && serviceOf(trace, s) === 'order';
  if (!trace.spans.some(isStart)) problems.push(`${where}: does not start at order's POST /orders`);
  // Process spans that settled a delivery with an ack: the original run, then duplicates.
  const acked = (service: string) =>
    trace.spans.filter((s) => serviceOf(trace, s) === service && tagOf(s, 'exactly_once.action') === 'ack');
  for (const service of ['billing', 'notification'] as const) {
    const runs = acked(service).filter((s) => tagOf(s, 'exactly_once.outcome') !== 'duplicate');
    if (runs.length > 1) {
      problems.push(`${where}: ${service} completed the key ${runs.length} times`);
      completedTwice.push(service);
    }
    const expected = service === 'billing' ? e.billingDuplicate : e.notificationDuplicate;
    const hasDuplicate = acked(service).some((s) => tagOf(s, 'exactly_once.outcome') === 'duplicate');
    // The injected copy must be in the trace, settled as a duplicate.
    if (expected && !hasDuplicate) {
      problems.push(`${where}: no ${service} duplicate`);
    }
  }
  if (e.replayed) {
    // A replay is a new HTTP request, so a new trace; its process span links to the first run.
    const replays = await findTraces(
      base,
      'order',
      { ...tags, 'exactly_once.outcome': 'duplicate' },
      sinceMs,
    );
    const linked = replays.some((t) =>
      t.spans.some((s) =>
        s.references.some((r) => r.refType === 'FOLLOWS_FROM' && r.traceID === trace.traceID),
      ),
    );
    if (!linked) problems.push(`${where}: no replay links to it`);
  }
  return { problems, lostWithKill, completedTwice };
}

/** Whether `trace` holds the order service's run of the request (not a replay answered from the store). */
export function ranOrder(trace: JaegerTrace, requestId: string): boolean {
  return trace.spans.some(
    (s) =>
      serviceOf(trace, s) === 'order' &&
      tagOf(s, 'exactly_once.request_id') === requestId &&
      RAN.has(String(tagOf(s, 'exactly_once.outcome'))),
  );
}

/** The outcomes of a process span whose handler ran. */
const RAN = new Set(['acquired', 'takeover']);

export interface TraceReport {
  checked: number;
  complete: number;
  withCopies: number;
  replayed: number;
  problems: string[];
  /** `<request id>: <consumer>` whose spans died with a SIGKILLed worker (see TraceExpectation). */
  lostWithKill: string[];
  /** Orders whose trace shows a consumer completing the key twice, per consumer. */
  completedTwice: Record<Service, number>;
}

/** Checks every order's trace, asking again for the ones whose spans may still be on the way. */
export async function checkTraces(
  base: string,
  expectations: TraceExpectation[],
  sinceMs: number,
): Promise<TraceReport> {
  let failing = expectations;
  let problems: string[] = [];
  const last = new Map<TraceExpectation, TraceCheck>();
  for (let round = 0; round < 10 && failing.length > 0; round++) {
    if (round > 0) await new Promise((r) => setTimeout(r, 2_000));
    const found = new Map<TraceExpectation, TraceCheck>();
    for (let i = 0; i < failing.length; i += 8) {
      await Promise.all(
        failing.slice(i, i + 8).map(async (e) => {
          const check = await checkTrace(base, e, sinceMs).catch(
            (err): TraceCheck => ({ problems: [String(err)], lostWithKill: [], completedTwice: [] }),
          );
          found.set(e, check);
          last.set(e, check);
        }),
      );
    }
    failing = failing.filter((e) => (found.get(e)?.problems.length ?? 0) > 0);
    problems = failing.flatMap((e) => found.get(e)?.problems ?? []);
  }
  return {
    checked: expectations.length,
    complete: expectations.length - failing.length,
    withCopies: expectations.filter((e) => e.billingDuplicate || e.notificationDuplicate).length,
    replayed: expectations.filter((e) => e.replayed).length,
    problems,
    lostWithKill: [...last].flatMap(([e, c]) =>
      c.lostWithKill.map((service) => `${e.requestId}: ${service}`),
    ),
    completedTwice: {
      billing: [...last.values()].filter((c) => c.completedTwice.includes('billing')).length,
      notification: [...last.values()].filter((c) => c.completedTwice.includes('notification')).length,
    },
  };
}

/** The span tree of a trace: offset, duration, service, name and pipeline outcome per span. */
export function renderTree(trace: JaegerTrace): string[] {
  const byId = new Map(trace.spans.map((s) => [s.spanID, s]));
  const children = new Map<string, JaegerSpan[]>();
  const roots: JaegerSpan[] = [];
  for (const s of trace.spans) {
    // Jaeger keeps one reference per span: when a span also links to its own parent (core links
    // a process span to the producer's span, which for A is the server span) the parent can come
    // back as FOLLOWS_FROM. Either kind within the trace places the span, as Jaeger's UI does.
    const inTrace = s.references.filter((r) => byId.has(r.spanID));
    const parent = inTrace.find((r) => r.refType === 'CHILD_OF') ?? inTrace[0];
    if (parent) children.set(parent.spanID, [...(children.get(parent.spanID) ?? []), s]);
    else roots.push(s);
  }
  const t0 = Math.min(...trace.spans.map((s) => s.startTime));
  const ms = (us: number) => `${(us / 1000).toFixed(1)} ms`.padStart(10);
  const lines: string[] = [];
  const walk = (s: JaegerSpan, prefix: string, last: boolean, depth: number, repeats = 1) => {
    const outcome = tagOf(s, 'exactly_once.outcome');
    const status = tagOf(s, 'http.response.status_code');
    const detail = [
      outcome === undefined ? '' : `[${String(outcome)}]`,
      status === undefined ? '' : `[${String(status)}]`,
      tagOf(s, 'exactly_once.step.replayed') === true ? '[replayed from the journal]' : '',
      tagOf(s, 'http.response.header.idempotent-replayed') === undefined
        ? ''
        : '[answered from its key store]',
      // Its parent never reached Jaeger: it was still open when its process was SIGKILLed.
      depth === 0 && s.references.length > 0 ? '(parent span lost: process killed)' : '',
      tagOf(s, 'otel.status_code') === 'ERROR' ? '(error)' : '',
      repeats > 1 ? `x${repeats}: waited for the key's lease` : '',
    ]
      .filter(Boolean)
      .join(' ');
    const branch = depth === 0 ? '' : last ? '└─ ' : '├─ ';
    lines.push(
      `${ms(s.startTime - t0)} ${ms(s.duration)}  ${serviceOf(trace, s).padEnd(13)} ${prefix}${branch}${s.operationName}${detail ? `  ${detail}` : ''}`,
    );
    if (repeats > 1) return;
    const sorted = (children.get(s.spanID) ?? []).sort((a, b) => a.startTime - b.startTime);
    // A delivery that polls a key another worker holds makes one `busy` span per poll; one line
    // for each run of them keeps the tree readable.
    const kids: [JaegerSpan, number][] = [];
    for (const k of sorted) {
      const prev = kids.at(-1);
      const busy = tagOf(k, 'exactly_once.outcome') === 'busy';
      if (
        busy &&
        prev &&
        prev[0].operationName === k.operationName &&
        tagOf(prev[0], 'exactly_once.outcome') === 'busy'
      ) {
        prev[1]++;
      } else {
        kids.push([k, 1]);
      }
    }
    const next = depth === 0 ? prefix : prefix + (last ? '   ' : '│  ');
    kids.forEach(([k, n], i) => {
      walk(k, next, i === kids.length - 1, depth + 1, n);
    });
  };
  for (const r of roots.sort((a, b) => a.startTime - b.startTime)) walk(r, '', true, 0);
  return [`    offset   duration  service       span`, ...lines];
}
