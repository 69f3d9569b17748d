/** Attribute and metric names: OpenTelemetry messaging conventions plus the product's own. */
export const ATTR_MESSAGING_SYSTEM = 'messaging.system';
export const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
export const ATTR_MESSAGING_OPERATION_NAME = 'messaging.operation.name';
export const ATTR_MESSAGING_DESTINATION_NAME = 'messaging.destination.name';
export const ATTR_MESSAGING_CONSUMER_GROUP_NAME = 'messaging.consumer.group.name';
export const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
export const ATTR_MESSAGING_BODY_SIZE = 'messaging.message.body.size';

export const ATTR_EO_KEY = 'exactly_once.key';
export const ATTR_EO_REQUEST_ID = 'exactly_once.request_id';
export const ATTR_EO_OUTCOME = 'exactly_once.outcome';
export const ATTR_EO_ATTEMPT = 'exactly_once.attempt';
export const ATTR_EO_FENCE = 'exactly_once.fence';
export const ATTR_EO_CONSUMER = 'exactly_once.consumer';
export const ATTR_EO_ACTION = 'exactly_once.action';
export const ATTR_EO_STEP = 'exactly_once.step';
export const ATTR_EO_STEP_REPLAYED = 'exactly_once.step.replayed';
export const ATTR_EO_BLOB_SIZE = 'exactly_once.blob.size';
/** Set (true) on a run whose payload fingerprint another key claimed within `payloadGuard.windowMs`. */
export const ATTR_EO_PAYLOAD_REUSE = 'exactly_once.payload_reuse';
export const ATTR_EO_PAYLOAD_REUSE_FIRST_KEY = 'exactly_once.payload_reuse.first_key';

/**
 * Attributes whose values are idempotency keys or business keys: the message id (publishers set
 * it to the key), a Kafka message key, the key itself and a payload guard's first key. They are
 * recorded only with `recordKeys: true`; adapters' delivery attributes are filtered by this list.
 */
export const KEY_ATTRIBUTES: readonly string[] = Object.freeze([
  ATTR_MESSAGING_MESSAGE_ID,
  'messaging.kafka.message.key',
  ATTR_EO_KEY,
  ATTR_EO_PAYLOAD_REUSE_FIRST_KEY,
]);

/** Baggage entry carrying the request id, so downstream spans can be found by it. */
export const BAGGAGE_REQUEST_ID = 'exactly_once.request_id';

export const METRIC_DELIVERIES = 'exactly_once.deliveries';
export const METRIC_PROCESS_DURATION = 'exactly_once.process.duration';
export const METRIC_HANDLER_DURATION = 'exactly_once.handler.duration';
export const METRIC_PAYLOAD_REUSE = 'exactly_once.payload_reuse';
