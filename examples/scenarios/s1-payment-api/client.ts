/**
 * The mobile app's side: one idempotency key per payment, made once and reused on every retry.
 * A broken connection, a 409 (the first request still runs) or a 503 is retried with the same
 * key and the same body.
 */
import { request } from 'node:http';

export interface HttpAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

/** One `POST /payments`; rejects when the connection breaks before the answer is read. */
export function postPayment(baseUrl: string, key: string, body: unknown): Promise<HttpAnswer> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      `${baseUrl}/payments`,
      {
        method: 'POST',
        agent: false, // one connection per attempt, as after a mobile network timeout
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
          'idempotency-key': key,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: text ? JSON.parse(text) : undefined,
          });
        });
      },
    );
    req.on('error', reject);
    // Bytes, not a string: node writes the headers with the first string chunk in that chunk's
    // encoding (UTF-8), which would re-encode a header value's latin1 bytes.
    req.end(Buffer.from(payload));
  });
}

export interface PayOutcome {
  answer: HttpAnswer;
  /** What each attempt saw: `lost` (connection broken), or the status code. */
  attempts: (number | 'lost')[];
}

/** Sends a payment until it gets a final answer, always with the same key. */
export async function payWithRetry(
  baseUrl: string,
  key: string,
  body: unknown,
  options: { maxAttempts?: number; maxWaitMs?: number } = {},
): Promise<PayOutcome> {
  const { maxAttempts = 5, maxWaitMs = 1_000 } = options;
  const attempts: (number | 'lost')[] = [];
  for (;;) {
    let wait = 50;
    try {
      const answer = await postPayment(baseUrl, key, body);
      attempts.push(answer.status);
      if (answer.status !== 409 && answer.status !== 503) return { answer, attempts };
      wait = Number(answer.headers['retry-after'] ?? 1) * 1000;
      if (attempts.length >= maxAttempts) return { answer, attempts };
    } catch (error) {
      attempts.push('lost');
      if (attempts.length >= maxAttempts) throw error;
    }
    await new Promise((r) => setTimeout(r, Math.min(wait, maxWaitMs)));
  }
}
