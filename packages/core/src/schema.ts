/**
 * Validation by a schema library: any that implements Standard Schema (https://standardschema.dev:
 * Zod 3.24+, Valibot 1, ArkType 2, Effect Schema...). The interface is the spec's own, copied as
 * the spec asks libraries to do, so core depends on none of them. The schema's output is the
 * payload the handler gets, and its type is the consumer's `T`.
 */
import { MalformedMessageError } from './errors.js';

/** The Standard Schema v1 interface (types only). */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (
      value: unknown,
    ) => StandardSchemaV1.Result<Output> | Promise<StandardSchemaV1.Result<Output>>;
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

export declare namespace StandardSchemaV1 {
  type Result<Output> = { readonly value: Output; readonly issues?: undefined } | FailureResult;
  interface FailureResult {
    readonly issues: readonly Issue[];
  }
  interface Issue {
    readonly message: string;
    readonly path?: readonly (PropertyKey | { readonly key: PropertyKey })[] | undefined;
  }
}

/** Issues named in a dead letter's reason; the rest are counted. */
const SHOWN_ISSUES = 5;

/**
 * The schema's output for `payload`, or the MalformedMessageError it is dead-lettered with; a
 * promise only for a schema that answers asynchronously (an async refinement).
 */
export function parseWith<T>(schema: StandardSchemaV1<unknown, T>, payload: unknown): T | Promise<T> {
  const result = schema['~standard'].validate(payload);
  return result instanceof Promise ? result.then(outputOf) : outputOf(result);
}

function outputOf<T>(result: StandardSchemaV1.Result<T>): T {
  if (result.issues === undefined) return result.value;
  const issues = result.issues;
  const shown = issues.slice(0, SHOWN_ISSUES).map(describeIssue);
  const more = issues.length > SHOWN_ISSUES ? ` (and ${issues.length - SHOWN_ISSUES} more)` : '';
  throw new MalformedMessageError(`message failed validation: ${shown.join('; ')}${more}`);
}

function describeIssue(issue: StandardSchemaV1.Issue): string {
  if (!issue.path || issue.path.length === 0) return issue.message;
  const path = issue.path
    .map((segment) => (typeof segment === 'object' ? segment.key : segment))
    .map((key) => (typeof key === 'number' ? `[${key}]` : `.${String(key)}`))
    .join('');
  return `${path.replace(/^\./, '')}: ${issue.message}`;
}
