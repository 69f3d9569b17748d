/**
 * The order client and the traffic plan. A client that wants its order placed once does what
 * Stripe's SDKs do: one Idempotency-Key per order, the same key on every retry (timeouts, 409,
 * 5xx), until it gets an answer that settles it.
 */

/** What the seeded plan does with one order. */
export interface OrderPlan {
  index: number;
  /** The client's Idempotency-Key, which is also the request id everywhere downstream. */
  key: string;
  body: {
    customerId: string;
    email: string;
    amountCents: number;
    currency: string;
    items: { sku: string; quantity: number }[];
    receipt: 'summary' | 'itemized';
  };
  /** Re-send after success: must get the stored answer back, flagged `Idempotent-Replayed`. */
  replay: boolean;
  /** First attempt as 3 identical requests at once. */
  concurrent: boolean;
  /** First attempt abandoned by the client after a few ms (its answer is lost); then retried. */
  clientTimeout: boolean;
  /** After success, the same key with another amount: must be rejected with 422. */
  conflict: boolean;
  providerFault?: 'drop' | 'error';
  emailFault?: 'error';
  /** Exact copies published straight into B's queue / C's topic. */
  rabbitDuplicate: boolean;
  kafkaDuplicate: boolean;
  /** Held at the provider / email API while the driver SIGKILLs the instance waiting for it. */
  killBilling: boolean;
  killNotification: boolean;
}

export interface OrderResult {
  plan: OrderPlan;
  orderId?: string;
  response?: unknown;
  /** HTTP requests made for this order (retries, replays and concurrent copies included). */
  requests: number;
  problems: string[];
  replayed: number;
  rejected422: number;
}

/** mulberry32: a small seeded generator, so `--seed` reproduces a run's plan. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function planOrders(options: {
  run: string;
  orders: number;
  seed: number;
  killBillingAt?: number;
  killNotificationAt?: number;
}): OrderPlan[] {
  const random = rng(options.seed);
  const chance = (p: number) => random() < p;
  const plans: OrderPlan[] = [];
  for (let index = 0; index < options.orders; index++) {
    const items = Array.from({ length: 1 + Math.floor(random() * 3) }, () => ({
      sku: `SKU-${Math.floor(random() * 90_000) + 10_000}`,
      quantity: 1 + Math.floor(random() * 4),
    }));
    const kill = index === options.killBillingAt || index === options.killNotificationAt;
    // A killed order's stall is its only fault, so the crash is what its retries are about.
    const fault = kill ? 1 : random();
    const emailFault = !kill && chance(0.05);
    plans.push({
      index,
      key: `${options.run}-order-${String(index).padStart(4, '0')}`,
      body: {
        customerId: `cus_${Math.floor(random() * 1e6)}`,
        email: `customer${index}@example.test`,
        amountCents: 500 + Math.floor(random() * 20_000),
        currency: 'EUR',
        items,
        receipt: chance(0.1) ? 'itemized' : 'summary',
      },
      replay: chance(0.15),
      concurrent: chance(0.08),
      clientTimeout: chance(0.08),
      conflict: chance(0.04),
      ...(fault < 0.06
        ? { providerFault: 'drop' as const }
        : fault < 0.12
          ? { providerFault: 'error' as const }
          : {}),
      ...(emailFault ? { emailFault: 'error' as const } : {}),
      rabbitDuplicate: chance(0.06),
      kafkaDuplicate: chance(0.06),
      killBilling: index === options.killBillingAt,
      killNotification: index === options.killNotificationAt,
    });
  }
  // Every run shows each behaviour at least once.
  const pick = (f: (p: OrderPlan) => void) => f(plans[Math.floor(random() * plans.length)] as OrderPlan);
  if (!plans.some((p) => p.conflict)) pick((p) => (p.conflict = true));
  if (!plans.some((p) => p.replay)) pick((p) => (p.replay = true));
  if (!plans.some((p) => p.rabbitDuplicate)) pick((p) => (p.rabbitDuplicate = true));
  if (!plans.some((p) => p.kafkaDuplicate)) pick((p) => (p.kafkaDuplicate = true));
  if (!plans.some((p) => p.body.receipt === 'itemized')) pick((p) => (p.body.receipt = 'itemized'));
  return plans;
}

interface HttpAnswer {
  status: number;
  headers: Headers;
  body: unknown;
}

export class OrderClient {
  constructor(
    private readonly baseUrl: () => string,
    private readonly deadlineMs = 120_000,
  ) {}

  async post(key: string | undefined, body: unknown, timeoutMs = 5_000): Promise<HttpAnswer> {
    const res = await fetch(`${this.baseUrl()}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    return { status: res.status, headers: res.headers, body: await res.json() };
  }

  /** Retries with the same key until the answer settles the order (2xx or a 4xx other than 409). */
  async place(key: string, body: unknown, count: () => void): Promise<HttpAnswer> {
    const deadline = Date.now() + this.deadlineMs;
    for (let attempt = 1; ; attempt++) {
      let wait = Math.min(2_000, 100 * 2 ** Math.min(attempt, 5));
      try {
        count();
        const answer = await this.post(key, body);
        if (answer.status < 500 && answer.status !== 409) return answer;
        const retryAfter = Number(answer.headers.get('retry-after'));
        // Honour Retry-After, capped: the demo wants the answer soon after the other run ends.
        if (retryAfter > 0) wait = Math.min(wait, retryAfter * 1000);
      } catch {
        // connection refused, reset or timed out: the same key makes the retry safe
      }
      if (Date.now() + wait > deadline) throw new Error(`no answer for ${key} within ${this.deadlineMs} ms`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /** Runs one order's whole plan and checks every answer it gets. */
  async run(plan: OrderPlan): Promise<OrderResult> {
    const result: OrderResult = { plan, requests: 0, problems: [], replayed: 0, rejected422: 0 };
    const count = () => result.requests++;
    if (plan.clientTimeout) {
      count();
      // The request reaches the API; the client gives up before the answer.
      await this.post(plan.key, plan.body, 5 + Math.floor(Math.random() * 20)).catch(() => {});
    }
    const first = plan.concurrent ? 3 : 1;
    const answers = await Promise.all(
      Array.from({ length: first }, () => this.place(plan.key, plan.body, count)),
    );
    const ok = answers.filter((a) => a.status === 201);
    if (ok.length !== answers.length) {
      result.problems.push(`answers ${answers.map((a) => a.status).join(',')}, expected 201`);
      return result;
    }
    const ids = new Set(ok.map((a) => (a.body as { orderId: string }).orderId));
    if (ids.size !== 1) result.problems.push(`one key, ${ids.size} different orders: ${[...ids].join(', ')}`);
    result.orderId = [...ids][0];
    result.response = ok[0]?.body;
    result.replayed += ok.filter((a) => a.headers.get('idempotent-replayed') === 'true').length;
    if (plan.replay) {
      const again = await this.place(plan.key, plan.body, count);
      if (again.status !== 201 || again.headers.get('idempotent-replayed') !== 'true') {
        result.problems.push(`replay answered ${again.status} without Idempotent-Replayed`);
      } else if (JSON.stringify(again.body) !== JSON.stringify(result.response)) {
        result.problems.push('replay answered a different body');
      } else {
        result.replayed++;
      }
    }
    if (plan.conflict) {
      const other = { ...plan.body, amountCents: plan.body.amountCents + 1 };
      const answer = await this.place(plan.key, other, count);
      if (answer.status === 422) result.rejected422++;
      else result.problems.push(`same key, different body answered ${answer.status}, expected 422`);
    }
    return result;
  }
}
