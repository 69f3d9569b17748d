/** The `exactly-once` command line: parses with commander and maps every failure to an exit code. */
import { createRequire } from 'node:module';
import { Command, CommanderError, Option } from 'commander';
import { orphans } from './commands/blobs.js';
import {
  capacity,
  MARKER_BYTES,
  MONGO_RECORD_BYTES,
  RECORD_BYTES,
  RECORD_WITH_INDEX_BYTES,
} from './commands/capacity.js';
import { dlqList, dlqReplay, dlqShow } from './commands/dlq.js';
import { inspect } from './commands/inspect.js';
import { outboxPending } from './commands/outbox.js';
import { stuck } from './commands/stuck.js';
import { trace } from './commands/trace.js';
import { CliError, describeError, UsageError } from './errors.js';
import { type Io, processIo, terminalSafe } from './output.js';
import {
  collectName,
  parseCodes,
  parseDays,
  parseDuration,
  parseJsonString,
  parseNamespace,
  parseNumber,
} from './parse.js';
import { blobStoreOptions, storeOptions } from './stores.js';

const { version } = createRequire(import.meta.url)('../package.json') as { version: string };

const integer =
  (option: string, min = 0) =>
  (value: string) =>
    parseNumber(option, value, { integer: true, min });

/** `--code` of `dlq list` and `dlq replay`. */
const codeOption = () =>
  new Option(
    '--code <codes>',
    'only letters with these codes, comma-separated (e.g. ATTEMPTS_EXHAUSTED, PREVIOUSLY_FAILED/PERMANENT)',
  ).argParser((v) => parseCodes('--code', v));

/** `--json-id` of `dlq show` and `dlq replay`: ids as `list --json` prints them. */
const jsonIdOption = () =>
  new Option(
    '--json-id',
    'read each <id> as a JSON string ("order\\u000042"), as list --json prints ids: for a NUL or control characters',
  );

function buildProgram(io: Io): Command {
  const program = new Command()
    .name('exactly-once')
    .description(
      'Operator tools for exactly-once: records, stuck work, dead letters, traces, storage sizing.',
    )
    .version(version)
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .showHelpAfterError('(add --help for usage)');

  blobStoreOptions(
    storeOptions(
      program
        .command('inspect')
        .description("a record's state, attempts, fence, lease, result size, outgoing messages and steps")
        .argument('<consumer>', 'the consumer name (store keys are namespace:consumer:key)')
        .argument('<key>', 'the idempotency key (x-idempotency-key) as sent'),
    ),
    'where --result and --result-to read a result stored by reference',
  )
    .option('--namespace <name>', 'the consumer namespace', parseNamespace, 'default')
    .option(
      '--key-for <name>',
      'print ctx.keyFor(name), the key the handler gave a provider under that name (repeatable; also for a FAILED record, which keeps no steps)',
      collectName('--key-for'),
    )
    .option(
      '--json-key',
      'read <key> as a JSON string ("a\\u0000b"), as --json output prints keys: for a NUL or control characters',
    )
    .option(
      '--result',
      'also the stored result itself (the JSON the handler returned): inline, or from the blob store given',
    )
    .option(
      '--result-to <file>',
      "write the stored result's bytes to a file (a stream result's too; a blob result needs its blob store)",
    )
    .option(
      '--history',
      'also the states the record went through, each attempt as it was left (the MongoDB store keeps them until the record is swept; Redis keeps the current state only)',
    )
    .option('--json', 'print JSON')
    .action(async (consumer: string, key: string, options) => {
      await inspect(io, consumer, options.jsonKey ? parseJsonString(key) : key, options);
    });

  storeOptions(
    program
      .command('stuck')
      .description('records IN_PROGRESS for longer than a threshold (steps in doubt shown), oldest first'),
  )
    .requiredOption('--older-than <duration>', 'e.g. 30s, 5m, 2h, 1d', (v) =>
      parseDuration('--older-than', v),
    )
    .option('--consumer <name>', 'one consumer only (default: every consumer in the store)')
    .option(
      '--namespace <name>',
      "the consumer's namespace (default: 'default' with --consumer, else all)",
      parseNamespace,
    )
    .option('--limit <n>', 'at most this many records', integer('--limit', 1), 1000)
    .option('--json', 'print JSON')
    .action(async (options) => {
      await stuck(io, { ...options, olderThanMs: options.olderThan });
    });

  const dlq = program
    .command('dlq')
    .description('dead letters of a RabbitMQ queue or a Kafka topic: list, show one, replay');
  const broker = (c: Command) =>
    c
      .option('--amqp <url>', 'RabbitMQ: amqp://user:password@host:port[/vhost]')
      .option('--kafka <brokers>', 'Kafka: host:port,host:port');
  broker(dlq.command('list').description('dead letters with their reason headers, oldest first'))
    .argument('<source>', 'the dead-letter queue or topic (e.g. orders.dlq)')
    .option('--limit <n>', 'read at most this many', integer('--limit', 1), 100)
    .addOption(codeOption())
    .option('--json', 'print JSON')
    .option('--bodies', "with --json: each letter's headers and body too, as dlq show gives them")
    .action(async (source: string, options) => {
      await dlqList(io, source, options);
    });
  broker(dlq.command('show').description('one dead letter: reason, headers and body'))
    .argument('<source>', 'the dead-letter queue or topic')
    .argument('<id>', 'as dlq list prints it: a message id or #digest (RabbitMQ), partition:offset (Kafka)')
    .option('--limit <n>', 'RabbitMQ: look through at most this many messages', integer('--limit', 1), 10_000)
    .addOption(jsonIdOption())
    .option('--json', 'print JSON')
    .action(async (source: string, id: string, options) => {
      await dlqShow(io, source, options.jsonId ? parseJsonString(id, '--json-id', '<id>') : id, options);
    });
  storeOptions(
    broker(
      dlq
        .command('replay')
        .description('publish dead letters back to where they came from, with their original key')
        .argument('<source>', 'the dead-letter queue or topic')
        .argument(
          '[ids...]',
          'message ids or #digest ids (RabbitMQ); partition:offset, partition:from-to, partition:from- (Kafka)',
        ),
    ),
  )
    .option('--all', 'every dead letter (up to --limit)')
    .option(
      '--limit <n>',
      'with --all: at most this many (per partition on Kafka)',
      integer('--limit', 1),
      1000,
    )
    .addOption(codeOption())
    .option('--to <destination>', 'replay to this queue or topic instead of the original one')
    .option(
      '--reset-key',
      "first clear each letter's FAILED record, so the replay is processed (needs a store)",
    )
    .option('--namespace <name>', "the consumers' namespace, for --reset-key", parseNamespace, 'default')
    .addOption(jsonIdOption())
    .option('--json', 'print JSON')
    .action(async (source: string, ids: string[], options) => {
      const named = options.jsonId ? ids.map((id) => parseJsonString(id, '--json-id', '<id>')) : ids;
      await dlqReplay(io, source, named, options);
    });

  const blobs = program.command('blobs').description('blob stores: what no record names any more');
  blobStoreOptions(
    storeOptions(
      blobs
        .command('orphans')
        .description(
          "delete blobs of runs killed before complete (core's collectOrphanBlobs): a blob goes once its key's record is final and does not name it",
        ),
    ),
    'the blobs to collect',
  )
    .option(
      '--older-than <duration>',
      'only blobs stored longer ago (e.g. 30m, 1h)',
      (v) => parseDuration('--older-than', v),
      3_600_000,
    )
    .addOption(
      new Option(
        '--when-record-gone <what>',
        'a blob whose key has no record: keep it, or delete it (a blob store serving this store alone)',
      )
        .choices(['keep', 'delete'])
        .default('keep'),
    )
    .option('--dry-run', 'count what would be deleted, delete nothing')
    .option('--json', 'print JSON')
    .action(async (options) => {
      await orphans(io, { ...options, olderThanMs: options.olderThan });
    });

  const outbox = program
    .command('outbox')
    .description(
      "documents written with store-mongo's outboxFields whose events the relay has not published",
    );
  storeOptions(
    outbox
      .command('pending')
      .description(
        "count them (the relay's countPending()): a backlog growing while a broker is down, or draining",
      ),
  )
    .requiredOption('--collection <name>', 'the collection your documents and their outbox events live in')
    .option('--json', 'print JSON')
    .action(async (options) => {
      await outboxPending(io, options);
    });

  program
    .command('trace')
    .description("the span tree of a request's traces, from Jaeger's query API")
    .argument('<request-id>', 'the x-request-id (span attribute exactly_once.request_id)')
    .addOption(
      new Option('--jaeger <url>', 'Jaeger query API')
        .env('EO_JAEGER_QUERY_URL')
        .default('http://127.0.0.1:16686'),
    )
    .option('--service <name...>', 'services to search (default: every service Jaeger knows)')
    .option('--hours <n>', 'how far back to look', (v) => parseNumber('--hours', v, { min: 0 }), 24)
    .option('--json', 'print JSON')
    .action(async (requestId: string, options) => {
      await trace(io, requestId, options);
    });

  program
    .command('capacity')
    .description(
      'Redis memory for a retention: full records for a window, compaction markers for the rest (or a tiered store: --tiered-hot)',
    )
    .requiredOption('--keys-per-day <n>', 'new idempotency keys per day', (v) =>
      parseNumber('--keys-per-day', v),
    )
    .requiredOption('--retention <days>', 'how long keys answer duplicates (days, or 12h, 90d)', (v) =>
      parseDays('--retention', v),
    )
    .option('--record-window <days>', 'how long records stay whole before compaction (compactAfterMs)', (v) =>
      parseDays('--record-window', v),
    )
    .option(
      '--record-bytes <n>',
      `bytes per record (default: measured, ${RECORD_WITH_INDEX_BYTES} with compaction, ${RECORD_BYTES} without; a blob result's record more)`,
      (v) => parseNumber('--record-bytes', v, { min: 1 }),
    )
    .option(
      '--marker-bytes <n>',
      `bytes per marker, flat (default: measured, ${MARKER_BYTES} + bucket overhead)`,
      (v) => parseNumber('--marker-bytes', v, { min: 1 }),
    )
    .option(
      '--tiered-hot <days>',
      'size a tiered store instead: the hot Redis keeps records this long (hotRetentionMs), the cold MongoDB the whole retention',
      (v) => parseDays('--tiered-hot', v),
    )
    .option(
      '--cold-bytes <n>',
      `with --tiered-hot: BSON bytes per MongoDB record (default: measured, ${MONGO_RECORD_BYTES})`,
      (v) => parseNumber('--cold-bytes', v, { min: 1 }),
    )
    .option('--json', 'print JSON')
    .action((options) => {
      if (options.tieredHot !== undefined) {
        // A tiered hot Redis keeps whole records (no compaction): window and markers do not apply.
        if (options.recordWindow !== undefined || options.markerBytes !== undefined) {
          throw new UsageError(
            '--tiered-hot sizes a tiered store: --record-window and --marker-bytes do not apply',
          );
        }
        capacity(
          io,
          {
            keysPerDay: options.keysPerDay,
            retentionDays: options.retention,
            hotDays: options.tieredHot,
            ...(options.recordBytes === undefined ? {} : { recordBytes: options.recordBytes }),
            ...(options.coldBytes === undefined ? {} : { coldBytes: options.coldBytes }),
          },
          options,
        );
        return;
      }
      if (options.coldBytes !== undefined) throw new UsageError('--cold-bytes needs --tiered-hot');
      capacity(
        io,
        {
          keysPerDay: options.keysPerDay,
          retentionDays: options.retention,
          ...(options.recordWindow === undefined ? {} : { recordWindowDays: options.recordWindow }),
          ...(options.recordBytes === undefined ? {} : { recordBytes: options.recordBytes }),
          ...(options.markerBytes === undefined ? {} : { markerBytes: options.markerBytes }),
        },
        options,
      );
    });

  return program;
}

/**
 * Runs the CLI on `argv` (as `process.argv`: node, script, arguments) and resolves with the exit
 * code: 0 done, 1 failed (unreachable server, bad URL, unknown record, replay not done), 2 usage.
 */
export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...argv]);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // commander printed its message (and help) already.
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' ? 0 : 2;
    }
    if (error instanceof UsageError) {
      io.err(`exactly-once: ${terminalSafe(error.message)} (add --help for usage)\n`);
      return error.exitCode;
    }
    if (error instanceof CliError) {
      io.err(`exactly-once: ${terminalSafe(error.message)}\n`);
      return error.exitCode;
    }
    const stack = String((error as Error)?.stack ?? '')
      .split('\n')
      .map(terminalSafe)
      .join('\n');
    io.err(`exactly-once: unexpected error: ${terminalSafe(describeError(error))}\n${stack}\n`);
    return 1;
  }
}
