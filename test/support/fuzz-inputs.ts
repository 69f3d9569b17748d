/**
 * Generated bad (and some good) inputs for the adapter fuzz tests (test/rabbitmq/fuzz.test.ts,
 * test/kafka/fuzz.test.ts). Each case carries the outcome the pipeline must reach, decided here by
 * construction (not by calling core): `processed`, or the error code of its dead letter.
 *
 * Core's order (packages/core/src/prepare.ts): decode/validate/fingerprint the body
 * (MALFORMED_MESSAGE), then the key (`x-idempotency-key`: ambiguous or not a string ->
 * INVALID_KEY, absent or empty -> KEY_MISSING), then the request id (INVALID_KEY), then the
 * handler (PERMANENT, HANDLER_FAILED, ATTEMPTS_EXHAUSTED on the fuzz handler's request).
 *
 * Valid keys get `#<index>` appended, so no two cases share a key: a valid case must be processed
 * exactly once, by its own key.
 */
import { ErrorCode } from '@exactly-once/core';
import fc from 'fast-check';

export type Transport = 'amqp' | 'kafka';

/** What a case must end as. */
export type Expected = 'processed' | ErrorCode;

/** The header (a plain string on every case) that names the case; never fuzzed. */
export const FUZZ_ID = 'x-fuzz-id';

/** Body the fuzz consumers accept: `validate` checks `fuzz === 'ok'` and a numeric `n`. */
export interface FuzzPayload {
  fuzz: 'ok';
  n: number;
  /** What the handler does: nothing (success), or fail in one of three ways. */
  action?: 'permanent' | 'non-retryable' | 'retryable';
  [extra: string]: unknown;
}

export interface FuzzCase {
  readonly index: number;
  readonly id: string;
  /** What was generated, e.g. `key:amqp-number`, `body:deep-bad`, `rid:repeat`. */
  readonly labels: readonly string[];
  /** AMQP field table (amqplib encodes it), or kafkajs `IHeaders`. */
  readonly headers: Record<string, unknown>;
  /** `null`: a Kafka tombstone. */
  readonly body: Buffer | null;
  /** Kafka record key. */
  readonly recordKey: Buffer | string | null;
  /** AMQP properties besides the headers. */
  readonly properties: { messageId?: string; contentType?: string; contentEncoding?: string; type?: string };
  readonly expected: Expected;
}

/** Validation of the fuzz consumers: the right shape, and nothing about finiteness (core checks). */
export function validateFuzzPayload(p: unknown): asserts p is FuzzPayload {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) throw new TypeError('not an object');
  const o = p as Record<string, unknown>;
  if (o.fuzz !== 'ok') throw new TypeError('fuzz must be "ok"');
  if (typeof o.n !== 'number') throw new TypeError('n must be a number');
}

type Verdict = 'ok' | 'missing' | 'invalid';
interface Gen<V> {
  label: string;
  value: V;
  verdict: Verdict;
}

// ---------------------------------------------------------------- bodies

interface BodyGen {
  label: string;
  body: Buffer | null;
  expected: Expected;
}

const json = (v: unknown) => Buffer.from(JSON.stringify(v));
const MiB = 1 << 20;

function bodyArb(t: Transport): fc.Arbitrary<BodyGen> {
  const n = fc.integer();
  const valid = (
    label: string,
    extra: fc.Arbitrary<Record<string, unknown>>,
    expected: Expected = 'processed',
  ) =>
    fc
      .tuple(n, extra)
      .map(([k, e]): BodyGen => ({ label, body: json({ ...e, fuzz: 'ok', n: k }), expected }));
  const nested = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;
  const arbs: fc.WeightedArbitrary<BodyGen>[] = [
    { weight: 30, arbitrary: valid('body:ok', fc.constant({})) },
    {
      weight: 10,
      arbitrary: valid(
        'body:ok-extra',
        fc.dictionary(
          fc
            .string({ maxLength: 12, unit: 'binary' })
            .filter((k) => k !== 'fuzz' && k !== 'n' && k !== 'action'),
          fc.jsonValue({ maxDepth: 4 }),
          { maxKeys: 6, noNullPrototype: true },
        ),
      ),
    },
    {
      weight: 3,
      arbitrary: fc.integer().map((k) => ({
        label: 'body:ok-proto',
        body: Buffer.from(
          `{"fuzz":"ok","n":${k},"__proto__":{"fuzz":"no","polluted":true},"constructor":{}}`,
        ),
        expected: 'processed' as const,
      })),
    },
    {
      weight: 3,
      arbitrary: fc.integer().map((k) => ({
        label: 'body:ok-bom',
        // TextDecoder strips a UTF-8 byte-order mark: still valid JSON for core.
        body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), json({ fuzz: 'ok', n: k })]),
        expected: 'processed' as const,
      })),
    },
    {
      weight: 3,
      arbitrary: fc.integer({ min: 1, max: 900 }).map((d) => ({
        label: 'body:deep-ok',
        body: Buffer.from(`{"fuzz":"ok","n":${d},"nested":${nested(d)}}`),
        expected: 'processed' as const,
      })),
    },
    {
      weight: 3,
      arbitrary: fc.integer({ min: 1100, max: 50_000 }).map((d) => ({
        label: 'body:deep-bad',
        body: Buffer.from(`{"fuzz":"ok","n":${d},"nested":${nested(d)}}`),
        expected: ErrorCode.Malformed,
      })),
    },
    {
      weight: 2,
      arbitrary: fc.constantFrom('1e400', '-1e999').map((big) => ({
        label: 'body:infinite-n',
        // JSON.parse gives Infinity: validate passes, the fingerprint refuses it.
        body: Buffer.from(`{"fuzz":"ok","n":${big}}`),
        expected: ErrorCode.Malformed,
      })),
    },
    {
      weight: 4,
      arbitrary: fc.constant({ label: 'body:empty', body: Buffer.alloc(0), expected: ErrorCode.Malformed }),
    },
    {
      weight: 6,
      arbitrary: fc
        .string({ unit: 'binary', maxLength: 200 })
        .filter((s) => !parses(s))
        .map((s) => ({ label: 'body:not-json', body: Buffer.from(s), expected: ErrorCode.Malformed })),
    },
    {
      weight: 5,
      arbitrary: fc.uint8Array({ minLength: 0, maxLength: 200 }).map((b) => ({
        label: 'body:not-utf8',
        // 0xff never occurs in UTF-8.
        body: Buffer.concat([Buffer.from(b), Buffer.from([0xff])]),
        expected: ErrorCode.Malformed,
      })),
    },
    {
      weight: 8,
      arbitrary: fc
        .jsonValue({ maxDepth: 5 })
        .filter((v) => !isValidShape(v))
        .map((v) => ({ label: 'body:wrong-shape', body: json(v), expected: ErrorCode.Malformed })),
    },
    {
      weight: 2,
      arbitrary: fc.integer().map((k) => ({
        label: 'body:utf16',
        body: Buffer.from(JSON.stringify({ fuzz: 'ok', n: k }), 'utf16le'),
        expected: ErrorCode.Malformed,
      })),
    },
    {
      weight: 1,
      arbitrary: fc.integer().map((k) => ({
        label: 'body:1MiB-ok',
        body: json({ fuzz: 'ok', n: k, pad: 'x'.repeat(MiB) }),
        expected: 'processed' as const,
      })),
    },
    {
      weight: 1,
      arbitrary: fc.integer({ min: 0, max: 255 }).map((b) => ({
        label: 'body:1MiB-bad',
        body: Buffer.concat([Buffer.from('{"fuzz":"ok","n":'), Buffer.alloc(MiB, b)]),
        expected: ErrorCode.Malformed,
      })),
    },
    {
      weight: 2,
      arbitrary: valid('body:permanent', fc.constant({ action: 'permanent' }), ErrorCode.Permanent),
    },
    {
      weight: 2,
      arbitrary: valid(
        'body:non-retryable',
        fc.constant({ action: 'non-retryable' }),
        ErrorCode.HandlerFailed,
      ),
    },
    {
      weight: 1,
      arbitrary: valid('body:retryable', fc.constant({ action: 'retryable' }), ErrorCode.AttemptsExhausted),
    },
  ];
  if (t === 'kafka') {
    arbs.push({
      weight: 3,
      arbitrary: fc.constant({ label: 'body:tombstone', body: null, expected: ErrorCode.Malformed }),
    });
  }
  return fc.oneof(...arbs);
}

function parses(s: string): boolean {
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
}

function isValidShape(v: unknown): boolean {
  try {
    validateFuzzPayload(v);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- identity header values

/** Text that is not empty: any code points (lone surrogates become U+FFFD on the wire), NULs. */
const text = fc.oneof(
  fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }),
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 20 }),
  fc.constantFrom(
    ' ',
    '\u0000',
    '\u0000\u0000key',
    '\t\n',
    'sha256:abc',
    'ü',
    '🙂',
    '\ufeffbom',
    'a'.repeat(255),
  ),
);
const huge = fc.oneof(
  fc.integer({ min: 257, max: 2_000 }).map((n) => 'k'.repeat(n)),
  fc.constant('h'.repeat(10 * 1024)),
  fc.string({ unit: 'binary', minLength: 300, maxLength: 600 }),
);
/** Bytes that are not UTF-8 (a lone continuation byte, an overlong form, 0xff, a surrogate). */
const notUtf8 = fc
  .tuple(
    // ASCII before the bad bytes, so they cannot complete a sequence the prefix began.
    fc.uint8Array({ max: 0x7f, maxLength: 20 }),
    fc.constantFrom(
      [0x80],
      [0xc0, 0x80],
      [0xff],
      [0xed, 0xa0, 0x80],
      [0xf8, 0x88, 0x80, 0x80, 0x80],
      [0xe2, 0x82],
    ),
  )
  .map(([a, bad]) => Buffer.concat([Buffer.from(a), Buffer.from(bad)]));

/**
 * A double amqplib can encode and RabbitMQ can parse: an integral value is sent as an int64, so it
 * stays in range, and RabbitMQ 3.10 closes the connection (541 INTERNAL_ERROR, its table parser
 * has no clause for them) on an infinite or NaN double, so there are none.
 */
const amqpDouble = fc.oneof(
  fc.double({ noNaN: true, min: -1e15, max: 1e15 }),
  fc.constantFrom(0.1, -0, 5e-324),
);

/** A key of a nested AMQP table: amqplib reads a table with a `!` key as a typed value. */
const tableKey = fc.string({ minLength: 1, maxLength: 8 }).filter((k) => k !== '!');

/** A value the strict reader takes: a non-empty string or UTF-8 bytes. */
function validValue(): fc.Arbitrary<Gen<string | Buffer>> {
  return fc.oneof(
    {
      weight: 6,
      arbitrary: text.map((v) => ({ label: 'text', value: v as string | Buffer, verdict: 'ok' as const })),
    },
    { weight: 2, arbitrary: huge.map((v) => ({ label: 'huge', value: v, verdict: 'ok' as const })) },
    {
      weight: 2,
      arbitrary: text.map((v) => ({ label: 'utf8-bytes', value: Buffer.from(v), verdict: 'ok' as const })),
    },
  );
}

/**
 * One identity header value, as the transport can carry it. `repeat` (Kafka only) is a list of
 * values kafkajs sends as the header repeated; an AMQP list is an `A` array.
 */
function identityValue(t: Transport): fc.Arbitrary<Gen<unknown>> {
  const common: fc.WeightedArbitrary<Gen<unknown>>[] = [
    { weight: 20, arbitrary: validValue() },
    { weight: 3, arbitrary: fc.constant({ label: 'empty', value: '', verdict: 'missing' }) },
    {
      weight: 2,
      arbitrary: fc.constant({ label: 'empty-bytes', value: Buffer.alloc(0), verdict: 'missing' }),
    },
    { weight: 4, arbitrary: notUtf8.map((v) => ({ label: 'not-utf8', value: v, verdict: 'invalid' })) },
  ];
  const anyScalar = fc.oneof(text, notUtf8, fc.integer(), fc.boolean(), amqpDouble);
  if (t === 'amqp') {
    common.push(
      { weight: 2, arbitrary: fc.constant({ label: 'amqp-void', value: null, verdict: 'missing' }) },
      {
        weight: 3,
        arbitrary: fc
          .oneof(fc.integer(), fc.integer({ min: -128, max: 127 }), fc.maxSafeInteger(), amqpDouble)
          .map((v) => ({ label: 'amqp-number', value: v, verdict: 'invalid' })),
      },
      {
        weight: 2,
        arbitrary: fc.boolean().map((v) => ({ label: 'amqp-boolean', value: v, verdict: 'invalid' })),
      },
      {
        weight: 4,
        arbitrary: fc
          .array(fc.oneof(text, notUtf8, fc.integer(), fc.boolean()), { maxLength: 4 })
          .map((v) => ({ label: 'amqp-array', value: v, verdict: 'invalid' })),
      },
      {
        weight: 3,
        arbitrary: fc
          .dictionary(fc.string({ minLength: 1, maxLength: 8 }), anyScalar, {
            maxKeys: 4,
            noNullPrototype: true,
          })
          .map((v) => ({ label: 'amqp-table', value: v, verdict: 'invalid' })),
      },
      {
        weight: 2,
        arbitrary: fc
          .oneof(
            fc.nat().map((v) => ({ '!': 'timestamp', value: v })),
            fc.nat({ max: 0xffff_ffff }).map((digits) => ({ '!': 'decimal', value: { places: 2, digits } })),
            fc.float({ noNaN: true, noDefaultInfinity: true }).map((v) => ({ '!': 'float', value: v })),
            fc.integer({ min: 0, max: 255 }).map((v) => ({ '!': 'uint8', value: v })),
            fc.integer({ min: 0, max: 0xffff }).map((v) => ({ '!': 'uint16', value: v })),
            fc.nat().map((v) => ({ '!': 'uint32', value: v })),
          )
          .map((v) => ({ label: `amqp-typed-${v['!']}`, value: v, verdict: 'invalid' })),
      },
    );
  } else {
    common.push(
      {
        weight: 5,
        arbitrary: fc
          .array(fc.oneof(text, notUtf8, fc.constant('')), { minLength: 2, maxLength: 4 })
          .map((v) => ({ label: 'kafka-repeat', value: v, verdict: 'invalid' })),
      },
      {
        weight: 2,
        // A one-element list is one header on the wire: kafkajs hands back a single value.
        arbitrary: validValue().map((g) => ({
          label: `kafka-list1-${g.label}`,
          value: [g.value],
          verdict: 'ok',
        })),
      },
    );
  }
  return fc.oneof(...common);
}

/** The whole identity header: absent, one value under some letter case, or the name twice. */
function identityHeader(
  t: Transport,
  name: string,
): fc.Arbitrary<{ label: string; headers: Record<string, unknown>; verdict: Verdict }> {
  const cased = fc.constantFrom(
    name,
    name.toUpperCase(),
    name.replace(/(^|-)x/g, '$1X').replace(/-([a-z])/g, (m) => m.toUpperCase()),
  );
  return fc.oneof(
    { weight: 3, arbitrary: fc.constant({ label: 'absent', headers: {}, verdict: 'missing' as Verdict }) },
    {
      weight: 20,
      arbitrary: fc.tuple(cased, identityValue(t)).map(([n, g]) => ({
        label: n === name ? g.label : `${g.label}@${n}`,
        headers: { [n]: g.value },
        verdict: g.verdict,
      })),
    },
    {
      weight: 3,
      arbitrary: fc.tuple(identityValue(t), identityValue(t)).map(([a, b]) => ({
        label: 'twice-in-case',
        headers: { [name]: a.value, [name.toUpperCase()]: b.value },
        verdict: 'invalid' as Verdict,
      })),
    },
  );
}

// ---------------------------------------------------------------- other headers

const FORGED = [
  'x-eo-attempt',
  'x-eo-attempts',
  'x-eo-error-class',
  'x-eo-error-code',
  'x-eo-error-message',
  'x-eo-original-destination',
  'x-eo-consumer',
  'x-eo-failed-at',
  'x-eo-outcome',
  'X-EO-ERROR-CLASS',
  'X-Eo-Error-Code',
  'x-eo-original-exchange',
  'x-eo-original-routing-key',
  'x-eo-original-topic',
  'x-eo-original-partition',
  'x-eo-original-offset',
  'x-eo-original-timestamp',
  'x-eo-retry-at',
  'x-eo-broker-id',
  'x-death',
  'message-id',
];

const forgedText = fc.oneof(
  fc.constantFrom(
    '0',
    '-1',
    '999999999',
    'NaN',
    'Infinity',
    '1e309',
    '',
    'PermanentError',
    'PERMANENT',
    'ExactlyOnceError',
    'KeyMissingError',
    '__proto__',
    'null',
    '9'.repeat(400),
  ),
  fc.string({ unit: 'binary', maxLength: 60 }),
);

const TRACE = ['traceparent', 'tracestate', 'baggage', 'Traceparent', 'BAGGAGE'];
const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`));
const traceGarbage = fc.oneof(
  fc.tuple(hex(32), hex(16), fc.constantFrom('00', '01', 'ff', 'zz')).map(([t, s, f]) => `00-${t}-${s}-${f}`),
  fc.constantFrom(
    '00-00000000000000000000000000000000-0000000000000000-01',
    'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
    'a=%zz,b=%E0%A4%A',
    '%',
    '=;=;=',
    ',,,,',
    'k=v;prop=%ff',
    'x'.repeat(9000),
    `${'a=b,'.repeat(500)}c=d`,
  ),
  fc.string({ unit: 'binary', maxLength: 80 }),
);

/** Names that are not the identity headers or the fuzz id, in any letter case. */
const RESERVED = new Set(['x-idempotency-key', 'x-request-id', FUZZ_ID]);
const noiseName = fc
  .string({ unit: 'binary', minLength: 1, maxLength: 30 })
  .filter((n) => !RESERVED.has(n.toLowerCase()));

function noiseValue(t: Transport): fc.Arbitrary<unknown> {
  if (t === 'kafka') {
    const one = fc.oneof(
      forgedText,
      notUtf8,
      fc.uint8Array({ maxLength: 30 }).map((b) => Buffer.from(b)),
    );
    return fc.oneof(
      { weight: 4, arbitrary: one },
      { weight: 1, arbitrary: fc.array(one, { minLength: 2, maxLength: 3 }) },
    );
  }
  const scalar = fc.oneof(
    forgedText,
    notUtf8,
    fc.integer(),
    amqpDouble,
    fc.boolean(),
    fc.constant(null),
    fc.nat().map((v) => ({ '!': 'timestamp', value: v })),
  );
  return fc.oneof(
    { weight: 5, arbitrary: scalar },
    { weight: 1, arbitrary: fc.array(scalar, { maxLength: 4 }) },
    { weight: 1, arbitrary: fc.dictionary(tableKey, scalar, { maxKeys: 3, noNullPrototype: true }) },
  );
}

function otherHeaders(t: Transport): fc.Arbitrary<{ labels: string[]; headers: Record<string, unknown> }> {
  const forged = fc.dictionary(fc.constantFrom(...FORGED), noiseValue(t), {
    maxKeys: 5,
    noNullPrototype: true,
  });
  const trace = fc.dictionary(fc.constantFrom(...TRACE), traceGarbage, { maxKeys: 3, noNullPrototype: true });
  const noise = fc.dictionary(noiseName, noiseValue(t), { maxKeys: 4, noNullPrototype: true });
  return fc.tuple(forged, trace, noise).map(([f, tr, no]) => ({
    labels: [
      ...Object.keys(f).map((k) => `forged:${k.toLowerCase()}`),
      ...Object.keys(tr).map((k) => `trace:${k.toLowerCase()}`),
      ...(Object.keys(no).length > 0 ? ['noise'] : []),
    ],
    // Forged x-eo-* and trace names never collide with the identity headers or the fuzz id.
    headers: { ...no, ...tr, ...f },
  }));
}

// ---------------------------------------------------------------- cases

const recordKey = fc.oneof(
  fc.constant(null),
  fc.constant(''),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
  fc.constant('r'.repeat(10 * 1024)),
);
const shortText = fc.string({ unit: 'binary', maxLength: 50 });
const properties = fc.record(
  { messageId: shortText, contentType: shortText, contentEncoding: shortText, type: shortText },
  { requiredKeys: [], noNullPrototype: true },
);

const caseArb = (t: Transport) =>
  fc.record({
    body: bodyArb(t),
    key: identityHeader(t, 'x-idempotency-key'),
    rid: identityHeader(t, 'x-request-id'),
    other: otherHeaders(t),
    recordKey,
    properties,
  });

/** Makes a valid key unique to its case (`#<index>` appended to its text or bytes). */
function uniquify(headers: Record<string, unknown>, index: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(headers)) {
    const tag = `#${index}`;
    if (typeof v === 'string') out[name] = v + tag;
    else if (Buffer.isBuffer(v)) out[name] = Buffer.concat([v, Buffer.from(tag)]);
    else if (Array.isArray(v) && v.length === 1) out[name] = uniquify({ x: v[0] }, index).x;
    else out[name] = v;
  }
  return out;
}

/**
 * `count` cases from `seed`: the same seed gives the same cases. The oracle (`expected`) follows
 * core's order of checks.
 */
export function fuzzCases(t: Transport, seed: number, count: number, runId: string): FuzzCase[] {
  const samples = fc.sample(caseArb(t), { seed, numRuns: count });
  return samples.map((s, index): FuzzCase => {
    const id = `${runId}-${index}`;
    const keyHeaders = s.key.verdict === 'ok' ? uniquify(s.key.headers, index) : s.key.headers;
    let expected: Expected;
    if (s.body.expected === ErrorCode.Malformed) expected = ErrorCode.Malformed;
    else if (s.key.verdict === 'invalid') expected = ErrorCode.InvalidKey;
    else if (s.key.verdict === 'missing') expected = ErrorCode.KeyMissing;
    else if (s.rid.verdict === 'invalid') expected = ErrorCode.InvalidKey;
    else expected = s.body.expected;
    return {
      index,
      id,
      labels: [s.body.label, `key:${s.key.label}`, `rid:${s.rid.label}`, ...s.other.labels],
      headers: { ...s.other.headers, ...s.rid.headers, ...keyHeaders, [FUZZ_ID]: id },
      body: s.body.body,
      recordKey: s.recordKey,
      properties: s.properties,
      expected,
    };
  });
}

/** `x-eo-error-code` -> the class core names in `x-eo-error-class`. */
export const ERROR_CLASS_OF_CODE: Readonly<Partial<Record<ErrorCode, string>>> = {
  [ErrorCode.Malformed]: 'MalformedMessageError',
  [ErrorCode.KeyMissing]: 'KeyMissingError',
  [ErrorCode.InvalidKey]: 'InvalidKeyError',
  [ErrorCode.Permanent]: 'PermanentError',
  [ErrorCode.HandlerFailed]: 'HandlerFailedError',
  [ErrorCode.AttemptsExhausted]: 'AttemptsExhaustedError',
};

/** Counts of cases (or outcomes) by a label, for the printed summary. */
export function tally<T>(items: readonly T[], by: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const i of items) out[by(i)] = (out[by(i)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}
