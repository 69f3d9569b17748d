/**
 * Keeping idempotency keys and payloads out of telemetry. Keys are customer data (order ids,
 * emails): unless `recordKeys` is set, spans and log lines never carry them, and error messages
 * that quote a key (or, like `JSON.parse`, quote the payload) have it replaced by
 * {@link REDACTED} before they reach a span status, an exception event or a log line. Records and
 * dead-letter headers keep the full messages: they are data, not telemetry.
 */

/** What replaces a key or a payload fragment in telemetry. */
export const REDACTED = '[redacted]';

/** Turns a text that may quote a key or a payload into one that does not. */
export type Scrub = (text: string) => string;

export const noScrub: Scrub = (text) => text;

/** Below this length a key is replaced only where a message quotes it (`"42"`), not inside words. */
const MIN_BARE_LENGTH = 6;
/** Quoted fragments of the payload shorter than this are left alone (`"id"`, `"a"`). */
const MIN_FRAGMENT_LENGTH = 4;
// Error messages shorten long keys to 77 characters and `...` (errors.ts `truncate`).
const TRUNCATED_AT = 77;

/**
 * A scrub that replaces every given secret (keys, store keys) and, with `payload`, every quoted
 * fragment of the payload's text, in any text it is given. Secrets may be added later with
 * {@link Scrubber.add} (the key is known only once the delivery was read).
 */
export interface Scrubber {
  readonly scrub: Scrub;
  /** Up to two at a time (a key and its store key): no array made for every delivery. */
  add(secret: string | undefined, also?: string): void;
}

export function createScrubber(payload?: Uint8Array): Scrubber {
  return new SecretScrubber(payload);
}

/**
 * Made for every delivery but used only when something is reported: the payload's text and the
 * scrub function are made on first use.
 */
class SecretScrubber implements Scrubber {
  private readonly secrets: string[] = [];
  private payloadText: string | undefined;
  private bound: Scrub | undefined;

  constructor(private readonly payload: Uint8Array | undefined) {}

  get scrub(): Scrub {
    this.bound ??= (input) => this.apply(input);
    return this.bound;
  }

  add(secret: string | undefined, also?: string): void {
    this.addOne(secret);
    this.addOne(also);
  }

  private addOne(value: string | undefined): void {
    if (typeof value !== 'string' || value.length === 0) return;
    this.secrets.push(value);
  }

  private text(): string | undefined {
    const payload = this.payload;
    if (this.payloadText === undefined && payload !== undefined && payload.byteLength > 0) {
      this.payloadText = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8');
    }
    return this.payloadText;
  }

  private apply(input: string): string {
    if (typeof input !== 'string' || input.length === 0) return input;
    let out = input;
    // A long secret also as error messages shorten it; made here, not for every delivery.
    const secrets = new Set<string>();
    for (const secret of this.secrets) {
      secrets.add(secret);
      if (secret.length > TRUNCATED_AT + 3) secrets.add(`${secret.slice(0, TRUNCATED_AT)}...`);
    }
    // Longest first, so a store key (`ns:consumer:key`) goes whole before its key part.
    for (const secret of [...secrets].sort((a, b) => b.length - a.length)) {
      out =
        secret.length >= MIN_BARE_LENGTH
          ? out.split(secret).join(REDACTED)
          : out.split(`"${secret}"`).join(`"${REDACTED}"`);
    }
    const body = this.text();
    if (body !== undefined) {
      // `JSON.parse` and most decoders quote the input they choke on, shortened with `...`.
      out = out.replace(/"((?:[^"\\]|\\.)*)"/g, (quoted, inner: string) => {
        const fragment = inner.replace(/^\.\.\./, '').replace(/\.\.\.$/, '');
        return fragment.length >= MIN_FRAGMENT_LENGTH && body.includes(fragment) ? `"${REDACTED}"` : quoted;
      });
    }
    return out;
  }
}
