/**
 * A kafkajs `socketFactory` that can lose the broker's answer to one produce request: the request
 * reaches the broker, which appends it, and the answer never reaches the client, which times out
 * and sends the request again (a reply lost on the network). Requests and answers are read as
 * Kafka frames: a 4-byte size, then (request) api key, api version and correlation id, or
 * (answer) the correlation id.
 */
import { connect, type Socket } from 'node:net';

const PRODUCE = 0;

export interface LossyKafkaSockets {
  socketFactory(options: { host: string; port: number; onConnect: () => void }): Socket;
  /** The next produce request's answer is dropped. */
  loseNextProduceAnswer(): void;
  /** Answers dropped so far. */
  readonly lost: number;
}

export function lossyKafkaSockets(): LossyKafkaSockets {
  let armed = false;
  let lost = 0;
  return {
    socketFactory({ host, port, onConnect }) {
      const socket = connect({ host, port }, onConnect);
      const dropping = new Set<number>();
      const write = socket.write.bind(socket) as (chunk: Buffer, ...rest: unknown[]) => boolean;
      // kafkajs writes each request as one buffer.
      socket.write = ((chunk: Buffer, ...rest: unknown[]) => {
        if (armed && Buffer.isBuffer(chunk) && chunk.length >= 12 && chunk.readInt16BE(4) === PRODUCE) {
          armed = false;
          dropping.add(chunk.readInt32BE(8));
        }
        return write(chunk, ...rest);
      }) as typeof socket.write;
      let pending = Buffer.alloc(0);
      const emit = socket.emit.bind(socket) as (event: string | symbol, ...args: unknown[]) => boolean;
      socket.emit = ((event: string | symbol, ...args: unknown[]) => {
        if (event !== 'data' || dropping.size === 0) return emit(event, ...args);
        pending = Buffer.concat([pending, args[0] as Buffer]);
        const kept: Buffer[] = [];
        while (pending.length >= 8 && pending.length >= 4 + pending.readInt32BE(0)) {
          const end = 4 + pending.readInt32BE(0);
          const frame = pending.subarray(0, end);
          pending = pending.subarray(end);
          if (dropping.delete(frame.readInt32BE(4))) lost++;
          else kept.push(frame);
        }
        // A frame still incomplete stays in `pending`; once nothing is dropped any more it goes
        // out before the next chunk.
        if (dropping.size === 0 && pending.length > 0) {
          kept.push(pending);
          pending = Buffer.alloc(0);
        }
        return kept.length > 0 ? emit('data', Buffer.concat(kept)) : true;
      }) as typeof socket.emit;
      return socket;
    },
    loseNextProduceAnswer() {
      armed = true;
    },
    get lost() {
      return lost;
    },
  };
}
