/**
 * `fetch` in a CLIENT span with the W3C trace headers injected: what an HTTP instrumentation would
 * do, kept by hand so the services depend on the OpenTelemetry SDK only. The span records whether
 * the server answered from its idempotency-key store (`Idempotent-Replayed`), which is how a
 * trace shows a repeated call that caused no second effect.
 */
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';

const tracer = trace.getTracer('three-services/http');

export async function tracedFetch(
  url: string,
  init: RequestInit & { method: string; headers: Record<string, string> },
): Promise<Response> {
  const u = new URL(url);
  const span = tracer.startSpan(`${init.method} ${u.pathname}`, {
    kind: SpanKind.CLIENT,
    attributes: {
      'http.request.method': init.method,
      'url.full': url,
      'server.address': u.hostname,
      'server.port': Number(u.port),
    },
  });
  const headers = { ...init.headers };
  propagation.inject(trace.setSpan(context.active(), span), headers);
  try {
    const res = await fetch(url, { ...init, headers });
    span.setAttribute('http.response.status_code', res.status);
    const replayed = res.headers.get('idempotent-replayed');
    if (replayed) span.setAttribute('http.response.header.idempotent-replayed', [replayed]);
    if (res.status >= 400) span.setStatus({ code: SpanStatusCode.ERROR });
    return res;
  } catch (error) {
    span.recordException(error as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
    throw error;
  } finally {
    span.end();
  }
}
