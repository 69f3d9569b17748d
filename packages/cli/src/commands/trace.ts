/**
 * `trace <request-id>`: the traces whose spans carry `exactly_once.request_id` = the request id,
 * read from Jaeger's query API (`/api/services`, `/api/traces`), each printed as a span tree.
 */
import { InvalidKeyError, normalizeRequestId } from '@exactly-once/core';
import { CliError, describeError, UsageError } from '../errors.js';
import { formatSpan, type Io, printJson, printLines } from '../output.js';
import { parseUrl } from '../parse.js';

export interface JaegerSpan {
  readonly traceID: string;
  readonly spanID: string;
  readonly operationName: string;
  readonly references: readonly { refType: 'CHILD_OF' | 'FOLLOWS_FROM'; traceID: string; spanID: string }[];
  /** µs since epoch. */
  readonly startTime: number;
  /** µs. */
  readonly duration: number;
  readonly tags: readonly { key: string; value: unknown }[];
  readonly processID: string;
}

export interface JaegerTrace {
  readonly traceID: string;
  readonly spans: readonly JaegerSpan[];
  readonly processes: Readonly<Record<string, { serviceName: string }>>;
}

export interface TraceOptions {
  readonly jaeger: string;
  readonly service?: readonly string[];
  readonly hours: number;
  readonly json?: boolean;
}

/** A span and its children, as `trace --json` prints it (times in ms from the trace's start). */
export interface SpanNode {
  readonly spanId: string;
  readonly service: string;
  readonly name: string;
  readonly offsetMs: number;
  readonly durationMs: number;
  readonly outcome?: string;
  readonly error?: boolean;
  /** Its parent span is not in the trace (never exported: e.g. its process was killed). */
  readonly parentMissing?: boolean;
  /**
   * The spans it links to (a duplicate's: the run that completed its record), in this trace or
   * another (a repeated HTTP request's first trace).
   */
  readonly links?: readonly { readonly traceId: string; readonly spanId: string }[];
  readonly attributes: Record<string, unknown>;
  readonly children: SpanNode[];
}

const REQUEST_ID_TAG = 'exactly_once.request_id';

const tagOf = (span: JaegerSpan, key: string): unknown => span.tags.find((t) => t.key === key)?.value;
const serviceOf = (trace: JaegerTrace, span: JaegerSpan): string =>
  trace.processes[span.processID]?.serviceName ?? '?';

async function getJson<T>(url: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    throw new CliError(`cannot reach Jaeger at ${new URL(url).origin}: ${describeError(error)}`);
  }
  if (!res.ok) throw new CliError(`Jaeger answered ${res.status} ${res.statusText} to ${url}`);
  try {
    return (await res.json()) as T;
  } catch {
    throw new CliError(`Jaeger's answer to ${url} is not JSON: is ${new URL(url).origin} its query API?`);
  }
}

/** Every trace (whole) with a span tagged with the request id, oldest first. */
export async function findTraces(
  base: string,
  requestId: string,
  options: TraceOptions,
): Promise<JaegerTrace[]> {
  const services =
    options.service && options.service.length > 0
      ? options.service
      : ((await getJson<{ data: string[] | null }>(`${base}/api/services`)).data ?? []).filter(
          (s) => !/^jaeger/.test(s),
        );
  const since = Date.now() - options.hours * 3_600_000;
  const traces = new Map<string, JaegerTrace>();
  for (const service of services) {
    const q = new URLSearchParams({
      service,
      tags: JSON.stringify({ [REQUEST_ID_TAG]: requestId }),
      start: String(since * 1000),
      end: String((Date.now() + 60_000) * 1000),
      limit: '100',
    });
    const found = (await getJson<{ data: JaegerTrace[] | null }>(`${base}/api/traces?${q}`)).data ?? [];
    for (const t of found) if (!traces.has(t.traceID)) traces.set(t.traceID, t);
  }
  const start = (t: JaegerTrace) => Math.min(...t.spans.map((s) => s.startTime));
  return [...traces.values()].sort((a, b) => start(a) - start(b));
}

/** The span forest of a trace, children by start time. */
export function spanTree(trace: JaegerTrace): SpanNode[] {
  const byId = new Map(trace.spans.map((s) => [s.spanID, s]));
  const children = new Map<string, JaegerSpan[]>();
  const linksOf = new Map<string, { traceId: string; spanId: string }[]>();
  const roots: JaegerSpan[] = [];
  for (const s of trace.spans) {
    // Jaeger keeps one reference per span; a span linked to its own parent can come back with
    // FOLLOWS_FROM only. Either kind inside the trace places the span, as Jaeger's UI does.
    const inTrace = s.references.filter((r) => r.traceID === trace.traceID && byId.has(r.spanID));
    const parent = inTrace.find((r) => r.refType === 'CHILD_OF') ?? inTrace[0];
    if (parent) children.set(parent.spanID, [...(children.get(parent.spanID) ?? []), s]);
    else roots.push(s);
    // Every other reference is a link (OpenTelemetry links arrive as FOLLOWS_FROM).
    const links = s.references.filter((r) => r !== parent && r.refType === 'FOLLOWS_FROM');
    if (links.length > 0)
      linksOf.set(
        s.spanID,
        links.map((r) => ({ traceId: r.traceID, spanId: r.spanID })),
      );
  }
  const t0 = Math.min(...trace.spans.map((s) => s.startTime));
  const node = (s: JaegerSpan, root = false): SpanNode => {
    const outcome = tagOf(s, 'exactly_once.outcome');
    return {
      spanId: s.spanID,
      service: serviceOf(trace, s),
      name: s.operationName,
      offsetMs: (s.startTime - t0) / 1000,
      durationMs: s.duration / 1000,
      ...(outcome === undefined ? {} : { outcome: String(outcome) }),
      ...(tagOf(s, 'otel.status_code') === 'ERROR' || tagOf(s, 'error') === true ? { error: true } : {}),
      ...(root && s.references.some((r) => r.refType === 'CHILD_OF' && r.traceID === trace.traceID)
        ? { parentMissing: true }
        : {}),
      ...(linksOf.has(s.spanID) ? { links: linksOf.get(s.spanID) } : {}),
      attributes: Object.fromEntries(s.tags.map((t) => [t.key, t.value])),
      children: (children.get(s.spanID) ?? []).sort((a, b) => a.startTime - b.startTime).map((c) => node(c)),
    };
  };
  return roots.sort((a, b) => a.startTime - b.startTime).map((r) => node(r, true));
}

/**
 * The tree as text: offset and duration, service, then the span name under box-drawing branches,
 * with the pipeline outcome, HTTP status, replay marks and links (to a span of `traceId`, or to
 * another trace). Consecutive `busy` polls of one operation collapse into one line.
 */
export function renderSpanTree(roots: readonly SpanNode[], traceId?: string): string[] {
  const ms = (v: number) => `${v.toFixed(1)} ms`.padStart(10);
  const serviceWidth = Math.max(7, ...flatten(roots).map((n) => n.service.length));
  const lines = [
    `${'offset'.padStart(10)} ${'duration'.padStart(10)}  ${'service'.padEnd(serviceWidth)}  span`,
  ];
  const walk = (n: SpanNode, prefix: string, last: boolean, depth: number, repeats: number) => {
    const status = n.attributes['http.response.status_code'];
    const detail = [
      n.outcome === undefined ? '' : `[${n.outcome}]`,
      status === undefined ? '' : `[${String(status)}]`,
      n.attributes['exactly_once.step.replayed'] === true ? '[replayed from the journal]' : '',
      n.parentMissing ? '(parent span not in the trace)' : '',
      ...(n.links ?? []).map((l) =>
        l.traceId === traceId ? `(linked to span ${l.spanId})` : `(linked to trace ${l.traceId})`,
      ),
      n.error ? '(error)' : '',
      repeats > 1 ? `x${repeats}: waited for the key's lease` : '',
    ]
      .filter(Boolean)
      .join(' ');
    const branch = depth === 0 ? '' : last ? '└─ ' : '├─ ';
    lines.push(
      `${ms(n.offsetMs)} ${ms(n.durationMs)}  ${n.service.padEnd(serviceWidth)}  ${prefix}${branch}${n.name}${detail ? `  ${detail}` : ''}`,
    );
    if (repeats > 1) return;
    const kids: [SpanNode, number][] = [];
    for (const k of n.children) {
      const prev = kids.at(-1);
      if (k.outcome === 'busy' && prev && prev[0].name === k.name && prev[0].outcome === 'busy') prev[1]++;
      else kids.push([k, 1]);
    }
    const next = depth === 0 ? prefix : prefix + (last ? '   ' : '│  ');
    kids.forEach(([k, count], i) => {
      walk(k, next, i === kids.length - 1, depth + 1, count);
    });
  };
  for (const r of roots) walk(r, '', true, 0, 1);
  return lines;
}

function flatten(nodes: readonly SpanNode[]): SpanNode[] {
  return nodes.flatMap((n) => [n, ...flatten(n.children)]);
}

export async function trace(io: Io, given: string, options: TraceOptions): Promise<void> {
  const base = parseUrl('--jaeger', options.jaeger, ['http:', 'https:']).toString().replace(/\/$/, '');
  // Spans record an id over 255 bytes as its `sha256:<hex>` form: either finds the trace.
  let requestId: string;
  try {
    requestId = normalizeRequestId(given);
  } catch (error) {
    if (error instanceof InvalidKeyError) throw new UsageError(`<request-id>: ${error.message}`);
    throw error;
  }
  const traces = await findTraces(base, requestId, options);
  if (traces.length === 0) {
    throw new CliError(`no trace with ${REQUEST_ID_TAG}=${requestId} in ${base} (last ${options.hours} h)`);
  }
  const summaries = traces.map((t) => {
    const starts = t.spans.map((s) => s.startTime);
    const ends = t.spans.map((s) => s.startTime + s.duration);
    const services = [...new Set(t.spans.map((s) => serviceOf(t, s)))];
    return {
      traceId: t.traceID,
      spans: t.spans.length,
      services,
      startedAt: new Date(Math.min(...starts) / 1000).toISOString(),
      durationMs: (Math.max(...ends) - Math.min(...starts)) / 1000,
      tree: spanTree(t),
      url: `${base}/api/traces/${t.traceID}`,
    };
  });
  if (options.json) {
    printJson(io, { requestId, traces: summaries });
    return;
  }
  const lines: string[] = [];
  summaries.forEach((s, i) => {
    if (i > 0) lines.push('');
    lines.push(
      `trace ${s.traceId}  request ${requestId}  ${s.spans} span(s)  ${s.services.join(', ')}  ` +
        `${formatSpan(s.durationMs)}  ${s.startedAt}`,
      '',
      ...renderSpanTree(s.tree, s.traceId),
      '',
      s.url,
    );
  });
  if (summaries.length > 1) {
    lines.push(
      '',
      `${summaries.length} traces carry this request id (replays and retries are traces of their own)`,
    );
  }
  printLines(io, lines);
}
