/** `dlq list|show|replay <queue|topic>` on RabbitMQ (`--amqp`) or Kafka (`--kafka`). */
import { CliError, UsageError } from '../errors.js';
import { type Io, printJson, printLines } from '../output.js';
import { hasStore, type OpenStore, openStore, type StoreOptions } from '../stores.js';
import {
  codeMatcher,
  type DeadLetter,
  letterJson,
  renderLetter,
  renderList,
  renderReplay,
  type ReplayResult,
  resetEachKeyOnce,
} from './dlq-common.js';
import { kafkaIdMatcher, openKafka, parseKafkaIds } from './dlq-kafka.js';
import { openRabbit, rabbitSelection } from './dlq-rabbitmq.js';

export interface DlqOptions extends StoreOptions {
  readonly amqp?: string;
  readonly kafka?: string;
  readonly limit: number;
  /** Only letters with these codes (`--code`, see parseCodes). */
  readonly code?: readonly string[];
  readonly json?: boolean;
  /** `dlq list --json --bodies`: each letter's headers and body too. */
  readonly bodies?: boolean;
}

export interface ReplayOptions extends DlqOptions {
  readonly all?: boolean;
  readonly to?: string;
  readonly resetKey?: boolean;
  readonly namespace?: string;
}

function transport(options: DlqOptions): 'rabbitmq' | 'kafka' {
  if (options.amqp && options.kafka) throw new UsageError('give --amqp <url> or --kafka <brokers>, not both');
  if (options.amqp) return 'rabbitmq';
  if (options.kafka) return 'kafka';
  throw new UsageError('give the broker: --amqp <url> (RabbitMQ) or --kafka <host:port,...> (Kafka)');
}

export async function dlqList(io: Io, source: string, options: DlqOptions): Promise<void> {
  if (options.bodies && !options.json)
    throw new UsageError('--bodies needs --json (dlq show prints one letter as text)');
  let read: DeadLetter[];
  let total: number;
  let description: string;
  if (transport(options) === 'rabbitmq') {
    const rabbit = await openRabbit(io, options.amqp as string, source);
    try {
      description = rabbit.description;
      total = await rabbit.count();
      read = await rabbit.list(options.limit);
    } finally {
      await rabbit.close();
    }
  } else {
    const kafka = await openKafka(io, options.kafka as string, source);
    try {
      description = kafka.description;
      const marks = await kafka.watermarks();
      total = marks.reduce((n, m) => n + (m.high - m.low), 0);
      // The oldest records of every partition, then the `limit` oldest of those by failure time.
      const ranges = marks.map((m) => ({
        partition: m.partition,
        from: m.low,
        to: Math.min(m.high, m.low + options.limit),
      }));
      read = (await kafka.read(ranges))
        .sort((a, b) => (a.reason.failedAt ?? '').localeCompare(b.reason.failedAt ?? ''))
        .slice(0, options.limit);
    } finally {
      await kafka.close();
    }
  }
  warnIfNoLetters(io, description, read);
  const letters = read.filter(codeMatcher(options.code));
  if (options.json) {
    printJson(io, {
      source: description,
      total,
      // With --code, the letters shown are those of the `read` ones that have the codes.
      ...(options.code ? { codes: options.code, read: read.length } : {}),
      letters: letters.map((l) => letterJson(l, options.bodies === true)),
    });
  } else {
    printLines(
      io,
      renderList(description, letters, total, options.code && { codes: options.code, read: read.length }),
    );
  }
}

/**
 * A warning on stderr when none of the messages read carries a dead letter's reason headers: the
 * work queue or topic was most likely named instead of its dead-letter one (a replay would copy
 * work messages back where they came from).
 */
function warnIfNoLetters(io: Io, description: string, read: readonly DeadLetter[]): void {
  if (read.length === 0 || read.some((letter) => letter.reason.errorCode !== undefined)) return;
  io.err(
    `warning: none of the ${read.length} message(s) read from ${description} carries the x-eo-* reason headers of a dead letter: is it the work queue or topic rather than its dead-letter one?\n`,
  );
}

export async function dlqShow(io: Io, source: string, id: string, options: DlqOptions): Promise<void> {
  let letter: DeadLetter | undefined;
  let description: string;
  if (transport(options) === 'rabbitmq') {
    const rabbit = await openRabbit(io, options.amqp as string, source);
    try {
      description = rabbit.description;
      letter = (await rabbit.list(options.limit)).find((l) => l.id === id);
    } finally {
      await rabbit.close();
    }
  } else {
    const kafka = await openKafka(io, options.kafka as string, source);
    try {
      description = kafka.description;
      if (!/^\d+:\d+$/.test(id))
        throw new UsageError(`a Kafka dead letter's id is <partition>:<offset> (got "${id}")`);
      const ranges = parseKafkaIds([id], await kafka.watermarks());
      letter = (await kafka.read(ranges)).find((l) => l.id === id);
    } finally {
      await kafka.close();
    }
  }
  if (!letter) throw new CliError(`${description}: no dead letter "${id}" (see dlq list)`);
  if (options.json) printJson(io, { source: description, ...letterJson(letter, true) });
  else printLines(io, renderLetter(description, letter));
}

export async function dlqReplay(
  io: Io,
  source: string,
  ids: readonly string[],
  options: ReplayOptions,
): Promise<void> {
  if (options.resetKey && !hasStore(options)) {
    throw new UsageError(
      '--reset-key needs the store: --redis <url>, --redis-cluster <nodes> or --mongo <url>',
    );
  }
  if (!options.resetKey && hasStore(options)) {
    throw new UsageError(
      'a store option without --reset-key does nothing: add --reset-key or leave the store out',
    );
  }
  if (ids.some((id) => id.trim() === '')) throw new UsageError('a dead letter id is empty (see dlq list)');
  const kind = transport(options);
  if (kind === 'rabbitmq')
    rabbitSelection(ids, options.all === true); // validates before connecting
  else if (ids.length > 0 && options.all) throw new UsageError('give ids or --all, not both');
  else if (ids.length === 0 && !options.all)
    throw new UsageError('give the ids to replay (see dlq list), or --all');

  const hasCode = codeMatcher(options.code);
  let store: OpenStore | undefined;
  let results: ReplayResult[];
  let description: string;
  let note = '';
  try {
    if (options.resetKey) store = await openStore(options);
    const namespace = options.namespace ?? 'default';
    const reset = store ? resetEachKeyOnce(store.store, namespace) : undefined;
    const replayOptions = { ...(options.to ? { to: options.to } : {}), ...(reset ? { reset } : {}) };
    if (kind === 'rabbitmq') {
      const rabbit = await openRabbit(io, options.amqp as string, source);
      try {
        description = rabbit.description;
        const limit = options.all ? options.limit : Number.MAX_SAFE_INTEGER;
        const chosen = rabbitSelection(ids, options.all === true);
        // Every letter read passes here: the ids asked for that name none of them are reported.
        const seen = new Set<string>();
        const select = (letter: DeadLetter) => {
          seen.add(letter.id);
          return chosen(letter) && hasCode(letter);
        };
        results = await rabbit.replay(limit, select, replayOptions);
        if (results.length > 0) {
          for (const id of new Set(ids)) {
            if (!seen.has(id))
              results.push({ id, replayed: false, error: 'no dead letter with this id (see dlq list)' });
          }
        }
        note =
          '; replayed letters were acked (removed); any not replayed (not chosen, or failed) stay in the queue';
      } finally {
        await rabbit.close();
      }
    } else {
      const kafka = await openKafka(io, options.kafka as string, source);
      try {
        description = kafka.description;
        const marks = await kafka.watermarks();
        const ranges = options.all
          ? marks.map((m) => ({
              partition: m.partition,
              from: m.low,
              to: Math.min(m.high, m.low + options.limit),
            }))
          : parseKafkaIds(ids, marks);
        const chosen = options.all ? () => true : kafkaIdMatcher(ids);
        const read = await kafka.read(ranges);
        warnIfNoLetters(io, description, read);
        const letters = read.filter((l) => chosen(l) && hasCode(l));
        results = await kafka.replay(letters, replayOptions);
        note = '; a Kafka topic keeps its records: these offsets stay in the dead-letter topic';
      } finally {
        await kafka.close();
      }
    }
  } finally {
    await store?.close();
  }
  if (results.length === 0) {
    const which = ids.length > 0 ? `no dead letter ${ids.join(', ')}` : 'no dead letters';
    const coded = options.code ? ` with code ${options.code.join(', ')}` : '';
    throw new CliError(`${description}: ${which}${coded} to replay`);
  }
  if (options.json) printJson(io, { source: description, results });
  else printLines(io, renderReplay(description, results, note));
  if (results.some((r) => r.reset === 'cleared')) {
    io.err(
      'note: a cleared key is processed from the start: its steps run again (a FAILED record keeps no step journal); only effects deduplicated by ctx.keyFor(name) are not repeated\n',
    );
  }
  const failed = results.filter((r) => !r.replayed);
  if (failed.length > 0) {
    throw new CliError(`${failed.length} of ${results.length} dead letter(s) not replayed`, {
      cause: failed,
    });
  }
}
