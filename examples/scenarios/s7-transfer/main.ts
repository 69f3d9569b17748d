/**
 * S7, a bank transfer over two payment services: `npm run scenario -- s7-transfer`.
 */
import { runParticipantDown, runTransfers } from './scenario.js';

const log = (line: string) => console.log(`- ${line}`);
console.log(
  'S7 part 1: 40 transfers PS-1:A -> PS-2:B, the coordinator SIGKILLed 4 times, PS-2 dropping every other commit answer',
);
const r = await runTransfers({ log });
const inconsistent = r.transfers.filter((t) => !t.consistent);
console.log(`
transfers                          ${r.transfers.length}: committed ${r.committed}, aborted ${r.aborted}, inconsistent ${inconsistent.length}
coordinator SIGKILLs               ${r.kills} (planned ${r.plannedKills})
commit answers PS-2 dropped        ${r.droppedCommitAnswers}; status questions asked ${r.statusQuestions}
money before / after (A+held+B)    ${r.before.total} / ${r.after.total}  (held ${r.after.held}, pending credits ${r.after.pendingCredits})
A, B from the ledgers / expected   ${r.after.a}, ${r.after.b} / ${r.expected.a}, ${r.expected.b}
stuck transfers, dead letters      ${r.stuck.length}, ${r.deadLetters}`);
for (const t of inconsistent) console.log('  inconsistent:', t);

console.log('\nS7 part 2: PS-1 acknowledged the commit, PS-2 does not answer (down)');
const d = await runParticipantDown({ log });
console.log(`
during the outage                  PS-1 ${d.duringOutage.ps1}, PS-2 ${d.duringOutage.ps2}, in flight ${d.before.total - d.duringOutage.money.total}
alerts                             ${d.duringOutage.stepAlerts.length} step alert(s), ${d.duringOutage.stuck.length} stuck record(s)
after PS-2 came back               coordinator ${d.after.coordinator}, PS-1 ${d.after.ps1}, PS-2 ${d.after.ps2}; money ${d.before.total} -> ${d.money.total}; stuck ${d.stuckAfter}`);

const ok =
  inconsistent.length === 0 &&
  r.kills === r.plannedKills &&
  r.after.total === r.before.total &&
  r.after.a === r.expected.a &&
  r.after.b === r.expected.b &&
  r.stuck.length === 0 &&
  d.after.consistent &&
  d.money.total === d.before.total &&
  d.stuckAfter === 0;
console.log(
  ok ? '\nOK: money conserved, every transfer applied once or released, nothing stuck' : '\nNOT OK',
);
process.exitCode = ok ? 0 : 1;
