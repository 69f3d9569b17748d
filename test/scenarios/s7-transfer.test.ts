/**
 * S7, a bank transfer over two payment services (examples/scenarios/s7-transfer): a two-phase
 * coordinator consuming TransferRequested from RabbitMQ, its steps journaled in Redis and
 * reconciled by asking the participants by transfer id. Injected: the coordinator process
 * SIGKILLed four times right after a participant applied a call (the answer never reaches it;
 * the broker redelivers), PS-2 dropping every other commit answer, transfers PS-1 or PS-2
 * refuses, and PS-2 down right after it voted. Counted from the participants' own ledgers.
 */
import { describe, expect, it } from 'vitest';
import { runParticipantDown, runTransfers } from '../../examples/scenarios/s7-transfer/scenario.js';

describe('S7: transfers through a coordinator that crashes and a participant that does not answer', () => {
  it('conserves money and applies every transfer exactly once or not at all, across 4 SIGKILLs', async () => {
    const r = await runTransfers({ transfers: 40, log: (line) => console.log(line) });
    console.log(
      `committed ${r.committed}, aborted ${r.aborted}, kills ${r.kills}, dropped commit answers ${r.droppedCommitAnswers}, ` +
        `status questions ${r.statusQuestions}, money ${r.before.total} -> ${r.after.total}`,
    );

    expect(r.kills).toBe(r.plannedKills);
    expect(r.droppedCommitAnswers).toBeGreaterThan(0);
    expect(r.statusQuestions).toBeGreaterThan(0);
    // Every transfer: committed at both with one movement each, or released at both with none.
    expect(r.transfers.filter((t) => !t.consistent)).toEqual([]);
    expect(r.committed + r.aborted).toBe(40);
    // The four PS-1 or PS-2 must refuse (too large for A, or to an account PS-2 does not have).
    const refused = r.transfers.filter((t) => t.amount === 1_000_000 || t.ps2 === 'refused');
    expect(refused).toHaveLength(4);
    for (const t of refused) expect(t.coordinator).toBe('aborted');
    // Money: conserved in total, and A and B moved by exactly the committed transfers.
    expect(r.after.total).toBe(r.before.total);
    expect(r.after.held).toBe(0);
    expect(r.after.pendingCredits).toBe(0);
    expect({ a: r.after.a, b: r.after.b }).toEqual(r.expected);
    // Nothing stuck, nothing dead-lettered.
    expect(r.stuck).toEqual([]);
    expect(r.deadLetters).toBe(0);
  }, 300_000);

  it('PS-1 committed and PS-2 is down: the step stays in doubt and alerts, then completes by asking', async () => {
    const d = await runParticipantDown({ log: (line) => console.log(line) });

    expect(d.duringOutage.ps1).toBe('committed');
    expect(d.duringOutage.ps2).toBe('prepared');
    expect(d.duringOutage.stepAlerts[0]).toMatch(/^alert: step commit:PS-2 /);
    expect(d.duringOutage.stuck.map((e) => e.key)).toEqual([`default:transfers:${d.transferId}`]);
    // In flight meanwhile: debited at PS-1, not yet credited at PS-2.
    expect(d.before.total - d.duringOutage.money.total).toBe(d.after.amount);

    expect(d.after).toMatchObject({
      coordinator: 'committed',
      ps1: 'committed',
      ps2: 'committed',
      consistent: true,
    });
    expect(d.money.total).toBe(d.before.total);
    expect(d.stuckAfter).toBe(0);
  }, 120_000);
});
