/**
 * `target[key] = value` as an own data member, also for the name `__proto__`, which an assignment
 * takes for the prototype (and drops): JSON.parse and kafkajs hand over such names as own members,
 * and they must stay members (in a fingerprint, among headers).
 */
export function setOwn<V>(target: Record<string, V>, key: string, value: V): void {
  if (key === '__proto__') {
    Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  } else target[key] = value;
}

/** `T` built field by field: its optional fields set only when they have a value (not spread in). */
export type Writable<T> = { -readonly [K in keyof T]: T[K] };
