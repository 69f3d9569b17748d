/**
 * Vitest's file order: the files known to run longest first, the rest after them in Vitest's own
 * order. Without a cache of earlier durations (a fresh clone, as in CI) Vitest starts the largest
 * files first, and the model checker's or a conformance kit's small file, started near the end,
 * then ran alone for minutes while the other worker had nothing left. Durations from a fresh
 * clone's run of the main suite on 2 CPUs; the order matters, not the figures.
 */
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const LONGEST = [
  'test/rabbitmq/crash-matrix.test.ts', // 211 s
  'test/kafka/crash-matrix.test.ts', // 173 s
  'test/model/spin.test.ts', // 121 s
  'test/property/pipeline-real-stores.property.test.ts', // 120 s
  'test/kafka/consumer.test.ts', // 84 s
  'test/kafka/rebalance.test.ts', // 71 s
  'test/cli/inspect.test.ts', // 69 s
  'test/kafka/poison-crash.test.ts', // 63 s
  'packages/store-redis/test/markers.test.ts', // 56 s
  'test/tiered/conformance.test.ts', // 54 s
  'test/install/tarballs.test.ts', // 53 s
  'packages/store-mongo/test/conformance.test.ts', // 50 s
];

export class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (file: TestSpecification) => {
      const i = LONGEST.findIndex((path) => file.moduleId.endsWith(path));
      return i < 0 ? LONGEST.length : i;
    };
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}
