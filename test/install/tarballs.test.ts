/**
 * The packages as a user gets them: built, packed with `npm pack`, installed from the tarballs in
 * a project outside the workspace (with only the peers they declare, pinned to the lockfile's
 * versions), checked by publint and attw, type-checked under strict NodeNext settings with the
 * published declarations included, and the ten-line consumers at the top of the RabbitMQ and
 * Kafka READMEs compiled and run against the real servers. The README code is copied as written;
 * only server addresses and names are filled in, and one message is sent and the consumer stopped
 * after it was processed (test/install/app/drive-*.ts). The CLI's `exactly-once` bin runs from the
 * installed tarball.
 */
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopics, newKafka } from '../kafka/helpers.js';
import { env, uniqueName } from '../support/env.js';
import {
  adapt,
  appSources,
  build,
  childEnv,
  createUserProject,
  exportsProgram,
  readmeExample,
  repoRoot,
  README_OPTIONAL_PEERS,
  requiredPeers,
  resultOf,
  run,
  runOk,
  tscBin,
  type UserProject,
} from './project.js';

const bin = (name: string) => join(repoRoot, 'node_modules', '.bin', name);
const log = (line: string) => console.log(`[install] ${line}`);

let project: UserProject;
const started = performance.now();

beforeAll(async () => {
  const built = await build();
  log(`tsc -b: ${built.ms} ms`);
  project = await createUserProject();
  log(
    `npm pack: ${project.tarballs.map((t) => `${t.name}@${t.version}`).join(', ')}; ` +
      `npm install in ${project.dir} (${project.installMs} ms): ` +
      Object.entries({ ...project.dependencies, ...project.devDependencies })
        .filter(([, v]) => !v.startsWith('file:'))
        .map(([k, v]) => `${k}@${v}`)
        .join(', '),
  );
}, 720_000);

afterAll(async () => {
  if (!project) return;
  if (process.env.EO_KEEP_INSTALL_PROJECT) log(`kept ${project.dir}`);
  else await project.remove();
  log(`total ${Math.round(performance.now() - started)} ms`);
});

describe('published tarballs, installed as a user installs them', () => {
  /** The run's unique queue and topic names, and the export subpaths, set by the compile step. */
  let names: { queue: string; topic: string; invoices: string; subpaths: string[] };

  it('declare the peers the README code needs', () => {
    expect(requiredPeers(project.tarballs)).toEqual(
      expect.arrayContaining(['@opentelemetry/api', 'amqplib', 'ioredis', 'mongodb']),
    );
    // The Kafka adapter takes either client: both are optional peers.
    const kafka = project.tarballs.find((t) => t.name === '@exactly-once/kafka')?.packageJson;
    for (const peer of [...README_OPTIONAL_PEERS, '@confluentinc/kafka-javascript']) {
      expect(kafka?.peerDependencies?.[peer], peer).toBeDefined();
      expect(kafka?.peerDependenciesMeta?.[peer]?.optional, peer).toBe(true);
    }
  });

  it('publint finds no error or warning in any tarball', async () => {
    for (const t of project.tarballs) {
      const r = await run(bin('publint'), ['run', t.file, '--strict'], { cwd: project.dir });
      const messages = r.stdout
        .split('\n')
        .filter((l) => l.trim() && !/^(Running publint|Unpacking tarball|Linting\.\.\.|All good!)/.test(l));
      log(`publint ${t.name}: ${messages.length === 0 ? 'all good' : messages.join(' | ')}`);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    }
  }, 120_000);

  it('attw (esm-only profile) resolves every entry point to its types', async () => {
    for (const t of project.tarballs) {
      const r = await run(
        bin('attw'),
        [
          t.file,
          '--profile',
          'esm-only',
          '--no-definitely-typed',
          '--format',
          'ascii',
          '--no-color',
          '--no-emoji',
        ],
        { cwd: project.dir },
      );
      log(`attw ${t.name}: ${r.code === 0 ? 'no problems' : 'PROBLEMS'}`);
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    }
  }, 120_000);

  it('npm ls: every dependency and peer dependency is installed and in range', async () => {
    await runOk('npm', ['ls', '--all'], { cwd: project.dir });
  });

  it('type-checks and compiles the README consumers and an import of every export (strict NodeNext)', async () => {
    const src = join(project.dir, 'src');
    await mkdir(src, { recursive: true });
    for (const file of await readdir(appSources)) await copyFile(join(appSources, file), join(src, file));

    const queue = uniqueName('orders');
    const rabbitmq = adapt(
      'packages/rabbitmq/README.md',
      await readmeExample('packages/rabbitmq/README.md'),
      [
        ["'amqp://127.0.0.1'", JSON.stringify(env.amqpUrl)],
        ['new Redis()', `new Redis(${JSON.stringify(env.redisUrl)})`],
        ["'orders'", `'${queue}'`],
        ["'billing'", `'${uniqueName('billing')}'`],
      ],
    );
    const topic = uniqueName('orders');
    const invoices = uniqueName('invoices');
    const kafka = adapt('packages/kafka/README.md', await readmeExample('packages/kafka/README.md'), [
      ["['127.0.0.1:9092']", JSON.stringify(env.kafkaBrokers)],
      ['new Redis()', `new Redis(${JSON.stringify(env.redisUrl)})`],
      ["'billing'", `'${uniqueName('billing')}'`],
      ["'orders'", `'${topic}'`],
      ["'orders.dlq'", `'${topic}.dlq'`],
      ["'invoices'", `'${invoices}'`],
    ]);
    const header = (readme: string) =>
      `// The first code block of ${readme}, servers and unique names filled in by test/install.\n`;
    await writeFile(
      join(src, 'rabbitmq.ts'),
      `${header('packages/rabbitmq/README.md')}import { payments } from './payments.js';\n` +
        `import { runOnce } from './drive-rabbitmq.js';\n${rabbitmq}\nawait runOnce(consumer);\n`,
    );
    await writeFile(
      join(src, 'kafka.ts'),
      `${header('packages/kafka/README.md')}import { runOnce } from './drive-kafka.js';\n${kafka}\n` +
        'await runOnce(consumer);\n',
    );
    const exportsCheck = exportsProgram(project.tarballs);
    await writeFile(join(src, 'exports.ts'), exportsCheck.source);
    names = { queue, topic, invoices, subpaths: exportsCheck.subpaths };

    const r = await run(process.execPath, [tscBin, '-p', project.dir], { cwd: project.dir });
    log(`tsc (strict, NodeNext, skipLibCheck false) of the README consumers and exports: ${r.ms} ms`);
    expect(r.code, `tsc:\n${r.stdout}\n${r.stderr}`).toBe(0);
  }, 120_000);

  it('loads every export at run time', async () => {
    const r = await run(process.execPath, ['dist/exports.js'], { cwd: project.dir, timeoutMs: 30_000 });
    const counts = resultOf(r);
    log(`exports: ${JSON.stringify(counts)} (core/testing types only: its optional peer vitest)`);
    for (const specifier of names.subpaths.filter((s) => !s.endsWith('/testing'))) {
      expect(counts[specifier], specifier).toBeGreaterThan(0);
    }
  });

  it('loads every export from CommonJS too (require of an ES module: Node 20.19+, 22.12+, 24)', async () => {
    // A CommonJS service (NestJS's default) requires the packages: Node loads an ES module that
    // way unless it has top-level await somewhere in its graph (ERR_REQUIRE_ASYNC_MODULE).
    const specifiers = names.subpaths.filter((s) => !s.endsWith('/testing'));
    const program = [
      'const counts = {};',
      ...specifiers.map(
        (s) => `counts[${JSON.stringify(s)}] = Object.keys(require(${JSON.stringify(s)})).length;`,
      ),
      "console.log('EO_INSTALL_RESULT', JSON.stringify(counts));",
    ].join('\n');
    await writeFile(join(project.dir, 'require-all.cjs'), `${program}\n`);
    const r = await run(process.execPath, ['require-all.cjs'], { cwd: project.dir, timeoutMs: 30_000 });
    const counts = resultOf(r);
    log(`require: ${JSON.stringify(counts)}`);
    for (const specifier of specifiers) expect(counts[specifier], specifier).toBeGreaterThan(0);
  });

  it('runs the RabbitMQ README consumer: one order charged once, acked', async () => {
    const r = await run(process.execPath, ['dist/rabbitmq.js'], {
      cwd: project.dir,
      timeoutMs: 90_000,
      env: childEnv({ EO_AMQP_URL: env.amqpUrl, EO_INSTALL_QUEUE: names.queue }),
    });
    const result = resultOf(r) as {
      sent: { orderId: string; amount: number };
      idempotencyKey: string;
      charges: { orderId: string; amount: number; idempotencyKey: string }[];
      acked: number;
      byOutcome: Record<string, number>;
    };
    log(`rabbitmq README consumer: ${r.ms} ms, ${JSON.stringify(result)}`);
    expect(r.code, r.stderr).toBe(0);
    expect(result.charges).toEqual([
      { orderId: result.sent.orderId, amount: 42, idempotencyKey: expect.any(String) },
    ]);
    expect(result.charges[0]?.idempotencyKey).not.toBe(result.idempotencyKey);
    expect(result.acked).toBe(1);
    expect(result.byOutcome.acquired).toBe(1);
  }, 120_000);

  it('runs the Kafka README consumer: one order, one invoice, committed', async () => {
    // The README assumes its topic exists: kafkajs' subscribe fails on a topic the broker is still
    // auto-creating (UNKNOWN_TOPIC_OR_PARTITION), so it is created first, as an operator would.
    const kafkaClient = newKafka('install-test');
    const admin = kafkaClient.admin();
    await admin.connect();
    try {
      await createTopics(admin, [names.topic], 1);
    } finally {
      await admin.disconnect();
    }
    const r = await run(process.execPath, ['dist/kafka.js'], {
      cwd: project.dir,
      timeoutMs: 90_000,
      env: childEnv({
        EO_KAFKA_BROKERS: env.kafkaBrokers.join(','),
        EO_INSTALL_TOPIC: names.topic,
        EO_INSTALL_INVOICES: names.invoices,
      }),
    });
    const result = resultOf(r) as {
      invoiceRecords: number;
      acked: number;
      commits: number;
      byOutcome: Record<string, number>;
    };
    log(`kafka README consumer: ${r.ms} ms, ${JSON.stringify(result)}`);
    expect(r.code, r.stderr).toBe(0);
    expect(result.invoiceRecords).toBe(1);
    expect(result.acked).toBe(1);
    expect(result.byOutcome.acquired).toBe(1);
    expect(result.commits).toBeGreaterThanOrEqual(1);
  }, 120_000);

  it('runs the exactly-once CLI from the installed bin', async () => {
    const exe = join(project.dir, 'node_modules', '.bin', 'exactly-once');
    const help = await run(exe, ['--help'], { cwd: project.dir, timeoutMs: 30_000 });
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/Usage: exactly-once/);
    for (const command of ['inspect', 'stuck', 'dlq', 'trace', 'capacity'])
      expect(help.stdout).toContain(command);
    const r = await run(exe, ['capacity', '--keys-per-day', '1000000', '--retention', '30', '--json'], {
      cwd: project.dir,
      timeoutMs: 30_000,
    });
    log(`exactly-once capacity: ${r.ms} ms`);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      records: { count: 1_041_667 },
      markers: { count: 28_958_333 },
    });
    const usage = await run(exe, ['capacity'], { cwd: project.dir, timeoutMs: 30_000 });
    expect(usage.code).toBe(2);
  });
});
