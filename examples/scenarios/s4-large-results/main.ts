/**
 * S4, 1 GB results: `npm run scenario -- s4-large-results [bytes]` (default 1 GiB).
 * A video-encoding RabbitMQ consumer returns a 1 GiB stream; the pipeline stores it by reference,
 * a duplicate job is answered with the pointer, and the worker's memory stays flat.
 */
import { formatReport, runInChild } from './scenario.js';

const bytes = Number(process.argv[2] ?? 1024 ** 3);
console.log(`S4: encoding a ${bytes}-byte video in a worker process, then the same job again...`);
const report = await runInChild({ bytes });
console.log(formatReport(report));
const ok =
  report.encodes === 1 &&
  report.duplicates === 1 &&
  report.readSha256 === report.expectedSha256 &&
  report.pointer.sha256 === report.expectedSha256 &&
  report.corrupted.error === 'BlobIntegrityError';
console.log(ok ? 'OK: encoded once, answered by pointer, verified on read' : 'NOT OK');
process.exitCode = ok ? 0 : 1;
