import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { env, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

describe('smoke: RabbitMQ', () => {
  it('publishes with confirms and consumes with a manual ack', async () => {
    const conn = await amqp.connect(env.amqpUrl);
    try {
      const ch = await conn.createConfirmChannel();
      const queue = uniqueName('smoke');
      await ch.assertQueue(queue, { durable: false, autoDelete: true });
      await new Promise<void>((resolve, reject) =>
        ch.sendToQueue(queue, Buffer.from('hi'), { headers: { 'x-request-id': 'r1' } }, (err) =>
          err ? reject(err) : resolve(),
        ),
      );
      const got: amqp.ConsumeMessage[] = [];
      await ch.consume(queue, (m) => {
        if (m) {
          got.push(m);
          ch.ack(m);
        }
      });
      const m = await waitUntil(() => got[0], { message: 'a delivery' });
      expect(m.content.toString()).toBe('hi');
      expect(m.properties.headers?.['x-request-id']).toBe('r1');
      await ch.close();
    } finally {
      await conn.close();
    }
  });

  it('serves the management API', async () => {
    const url = new URL('/api/overview', env.rabbitManagementUrl);
    const auth = Buffer.from(`${url.username}:${url.password}`).toString('base64');
    const res = await fetch(`${url.origin}${url.pathname}`, { headers: { authorization: `Basic ${auth}` } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { rabbitmq_version: string }).rabbitmq_version).toMatch(/^3\./);
  });
});
