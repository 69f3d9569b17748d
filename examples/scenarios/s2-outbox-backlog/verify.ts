/**
 * Reads the whole topic back with a plain kafkajs consumer (outside the SDK) and checks: every
 * order's two events present, OrderCreated before OrderPriced, and how many copies were sent twice.
 */
import type { Kafka } from 'kafkajs';

export interface TopicCheck {
  readonly records: number;
  readonly orders: number;
  readonly missing: number;
  readonly outOfOrder: number;
  readonly duplicates: number;
}

export async function checkTopic(
  kafka: Kafka,
  topic: string,
  orderIds: readonly string[],
  stallMs = 120_000,
): Promise<TopicCheck> {
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const remaining = new Map(ends.map((p) => [p.partition, Number(p.high)]));
  const total = [...remaining.values()].reduce((a, b) => a + b, 0);
  const seen = new Map<string, string[]>();
  let records = 0;
  const consumer = kafka.consumer({ groupId: `verify-${topic}-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let stall: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve, reject) => {
    if (total === 0) return resolve();
    // Fails, saying how far it got, when no record arrives for `stallMs`.
    const watch = (at: number) => {
      stall = setTimeout(() => {
        if (records === at)
          reject(
            new Error(`reading ${topic} back: ${records} of ${total} records, none for ${stallMs / 1000} s`),
          );
        else watch(records);
      }, stallMs);
    };
    watch(0);
    consumer
      .run({
        eachMessage: async ({ message }) => {
          records++;
          const event = JSON.parse(String(message.value)) as {
            type: string;
            order?: { id: string };
            orderId?: string;
          };
          const id = event.order?.id ?? event.orderId ?? '?';
          const list = seen.get(id) ?? [];
          seen.set(id, list);
          list.push(event.type);
          if (records >= total) resolve();
        },
      })
      .catch(reject);
  }).finally(() => clearTimeout(stall));
  await consumer.disconnect();
  let missing = 0;
  let outOfOrder = 0;
  let duplicates = 0;
  for (const id of orderIds) {
    const events = seen.get(id) ?? [];
    if (!events.includes('OrderCreated') || !events.includes('OrderPriced')) missing++;
    // A re-sent pair repeats the sequence; an OrderPriced before the first OrderCreated is a reorder.
    if (events.indexOf('OrderPriced') < events.indexOf('OrderCreated')) outOfOrder++;
    duplicates += Math.max(0, events.length - 2);
  }
  return { records, orders: seen.size, missing, outOfOrder, duplicates };
}
