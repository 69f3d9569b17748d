/**
 * The relay's spans: one `outbox publish <destination>` PRODUCER span per message, a child of the
 * trace context the message was written with, ended when the broker confirmed (or refused) its
 * round. The message goes out with the span's context, so the consumer's span is the relay span's
 * child and a trace shows how long the event waited in the outbox. Nothing is done when no tracer
 * provider is registered, or for a message whose span is not recorded (its headers stay as written).
 */
import { type Span, SpanKind, trace } from '@opentelemetry/api';
import { Headers } from '../headers.js';
import {
  ATTR_EO_REQUEST_ID,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
} from '../semconv.js';
import type { OutgoingMessage } from '../store/types.js';
import { extractContext, injectContext, recordError, tracer, tracingEnabled } from '../tracing.js';

export interface TracedRound {
  /** The messages to publish: those with a recorded span carry its context instead of the stored one. */
  readonly messages: readonly OutgoingMessage[];
  /** Ends the round's spans, with the error that failed the round, if any. */
  end(error?: unknown): void;
}

const UNTRACED_END = () => {};

export function traceRound(messages: readonly OutgoingMessage[]): TracedRound {
  if (!tracingEnabled()) return { messages, end: UNTRACED_END };
  const spans: Span[] = [];
  const out = messages.map((m) => {
    const parent = extractContext(m.headers);
    const requestId = m.headers[Headers.RequestId];
    const span = tracer().startSpan(
      `outbox publish ${m.destination}`,
      {
        kind: SpanKind.PRODUCER,
        attributes: {
          [ATTR_MESSAGING_DESTINATION_NAME]: m.destination,
          [ATTR_MESSAGING_OPERATION_TYPE]: 'send',
          [ATTR_MESSAGING_OPERATION_NAME]: 'publish',
          ...(requestId === undefined ? {} : { [ATTR_EO_REQUEST_ID]: requestId }),
        },
      },
      parent,
    );
    if (!span.isRecording()) {
      span.end();
      return m;
    }
    spans.push(span);
    // The stored trace headers are replaced (baggage kept: it is in the extracted context).
    return { ...m, headers: injectContext(trace.setSpan(parent, span), { ...m.headers }) };
  });
  return {
    messages: out,
    end(error) {
      for (const span of spans) {
        if (error !== undefined) recordError(span, error);
        span.end();
      }
    },
  };
}
