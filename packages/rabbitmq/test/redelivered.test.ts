import { describe, expect, it } from 'vitest';
import { redeliveryGate } from '../src/redelivered.js';

/** Deliveries through the gate, as the consumer runs them: each records its start and end. */
function through(gate = redeliveryGate()) {
  const log: string[] = [];
  const enders = new Map<string, () => void>();
  const run = async (name: string, redelivered: boolean) => {
    const turn = gate.enter(redelivered);
    if (turn) await turn;
    log.push(`start ${name}`);
    await new Promise<void>((resolve) => enders.set(name, resolve));
    log.push(`end ${name}`);
    gate.leave(redelivered);
    return name;
  };
  const end = async (name: string) => {
    enders.get(name)?.();
    await new Promise((r) => setImmediate(r));
  };
  return { log, run, end };
}

describe('redelivered deliveries run alone', () => {
  it('ordinary deliveries run side by side, without waiting', async () => {
    const gate = redeliveryGate();
    expect(gate.enter(false)).toBeUndefined();
    expect(gate.enter(false)).toBeUndefined();
    gate.leave(false);
    gate.leave(false);
    expect(gate.enter(true)).toBeUndefined();
  });

  it('a redelivered one waits for the runs under way, runs alone, and those after it wait for it', async () => {
    const { log, run, end } = through();
    const done = [
      run('a', false),
      run('r1', true),
      run('b', false),
      run('r2', true),
      run('c', false),
      run('d', false),
    ];
    await new Promise((r) => setImmediate(r));
    expect(log).toEqual(['start a']);
    await end('a');
    expect(log.slice(-1)).toEqual(['start r1']);
    await end('r1');
    expect(log.slice(-1)).toEqual(['start b']);
    await end('b');
    expect(log.slice(-1)).toEqual(['start r2']);
    await end('r2');
    expect(log.slice(-2)).toEqual(['start c', 'start d']);
    await end('d');
    await end('c');
    expect(await Promise.all(done)).toEqual(['a', 'r1', 'b', 'r2', 'c', 'd']);
  });
});
