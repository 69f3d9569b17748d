/**
 * Settles the deliveries of one channel. Acks made within one event-loop turn go out together:
 * one `multiple` ack for the longest run of the channel's oldest outstanding deliveries that are
 * all being acked, and single acks for the rest. A `multiple` ack acknowledges every unsettled
 * delivery up to its tag, so it is only sent when every one of those is being acked: the channel
 * tracks its outstanding tags for that.
 */
import type { ConfirmChannel, ConsumeMessage } from 'amqplib';

export interface Settler {
  /** Notes a delivery as outstanding; call it first thing for every delivery. */
  received(msg: ConsumeMessage): void;
  /**
   * Acks, coalesced with the other acks of this turn; `sent` is called once the ack was written
   * to the channel (never, when the channel closed first and the broker redelivers).
   */
  ack(msg: ConsumeMessage, sent?: () => void): void;
  /** Nacks (requeue) at once. */
  requeue(msg: ConsumeMessage): void;
  /** Sends the acks of this turn now (before the channel is closed). */
  flush(): void;
}

/** An ack waiting for the end of the turn, and who to tell once it is written. */
interface Acking {
  readonly msg: ConsumeMessage;
  readonly sent: (() => void) | undefined;
}

export function createSettler(channel: ConfirmChannel): Settler {
  // Delivery tags grow by one per delivery on a channel, so arrival order is tag order.
  const outstanding: number[] = [];
  let head = 0;
  const pending = new Map<number, Acking>();
  let scheduled = false;

  const forget = (tag: number) => {
    const i = outstanding.indexOf(tag, head);
    if (i >= 0) outstanding.splice(i, 1);
  };

  const flush = () => {
    scheduled = false;
    if (pending.size === 0) return;
    let last: ConsumeMessage | undefined;
    const covered: ((() => void) | undefined)[] = [];
    while (head < outstanding.length && pending.has(outstanding[head] as number)) {
      const tag = outstanding[head] as number;
      const entry = pending.get(tag) as Acking;
      last = entry.msg;
      covered.push(entry.sent);
      pending.delete(tag);
      head++;
    }
    // Compact now and then, so the array does not grow with every delivery ever received.
    if (head > 1024) {
      outstanding.splice(0, head);
      head = 0;
    }
    const rest = [...pending];
    pending.clear();
    if (last) {
      channel.ack(last, covered.length > 1);
      for (const sent of covered) sent?.();
    }
    for (const [tag, { msg, sent }] of rest) {
      forget(tag);
      channel.ack(msg);
      sent?.();
    }
  };

  return {
    received(msg) {
      outstanding.push(msg.fields.deliveryTag);
    },
    ack(msg, sent) {
      pending.set(msg.fields.deliveryTag, { msg, sent });
      if (!scheduled) {
        scheduled = true;
        setImmediate(() => this.flush());
      }
    },
    requeue(msg) {
      forget(msg.fields.deliveryTag);
      channel.nack(msg, false, true);
    },
    flush() {
      try {
        flush();
      } catch {
        // closed: the broker requeues what was not acked
      }
    },
  };
}
