/** Shared helpers of the conformance suites. */
import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import type {
  BeginResult,
  CompletedRecord,
  FencedResult,
  OutgoingMessage,
  ProcessedRecord,
  StoredResult,
} from '../store/types.js';

export const HOSTILE_KEYS: readonly string[] = [
  ...['*', '{', '}', '{tag}', '$gt', '{"$gt":""}', '..', 'a.b', '\u0000', 'a\u0000b', 'k:with:colons'],
  ...['?[a-z]', 'ключ-🔑', 'x'.repeat(10 * 1024)],
];

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function ok(result: Promise<FencedResult>): Promise<void> {
  expect(await result).toBe('ok');
}

export async function lost(result: Promise<FencedResult>): Promise<void> {
  expect(await result).toBe('lost');
}

export function expectStatus<S extends BeginResult['status']>(
  result: BeginResult,
  status: S,
): Extract<BeginResult, { status: S }> {
  expect(result.status).toBe(status);
  return result as Extract<BeginResult, { status: S }>;
}

export function inState<S extends ProcessedRecord['state']>(
  record: ProcessedRecord | undefined,
  state: S,
): Extract<ProcessedRecord, { state: S }> {
  expect(record?.state).toBe(state);
  return record as Extract<ProcessedRecord, { state: S }>;
}

export function expectNow(at: number): void {
  expect(Math.abs(at - Date.now()), `timestamp ${at} is not near now`).toBeLessThan(5000);
}

export function message(id: string): OutgoingMessage {
  return { id, destination: 'out', body: bytes([1]), headers: { 'x-idempotency-key': id } };
}

export function inline(data: number[] | Uint8Array): StoredResult {
  return { kind: 'inline', data: data instanceof Uint8Array ? data : bytes(data) };
}

export function bytes(values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

export function allBytes(): Uint8Array {
  return Uint8Array.from({ length: 256 }, (_, i) => i);
}

/** Stores may hand back Buffers; compare contents, not classes. */
export function plain(data: Uint8Array): number[];
export function plain(data: Uint8Array | undefined): number[] | undefined;
export function plain(data: Uint8Array | undefined): number[] | undefined {
  return data === undefined ? undefined : Array.from(data);
}

export function inlineData(record: CompletedRecord): number[] | undefined {
  return record.result?.kind === 'inline' ? plain(record.result.data) : undefined;
}

export async function* iterate(chunks: readonly Uint8Array[]): AsyncGenerator<Uint8Array> {
  yield* chunks;
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
