/*
 * exactly-once.pml: the record protocol of the exactly-once SDK (DESIGN.md sections 2, 4 and 5)
 * as a Promela model for Spin. README.md maps each transition here to the Lua script or the
 * TypeScript function it stands for, and says what is left out and why that is sound.
 *
 * Actors
 *   Worker(w)  three of them: the ack-last pipeline of packages/core/src (processor.ts, failure.ts,
 *              publish.ts), one delivery at a time, settled as settle.ts settles it. A worker
 *              may die before any of its steps (crash()); the broker then redelivers its message.
 *   Faults     bad luck, at most FAULTS times per run (crashes included): a live lease holder
 *              stalls until its lease runs out under it, or the broker takes a delivery back from
 *              a live worker (dead channel, rebalance) and redelivers it.
 *   Clock      time passing: the lease of a holder that is gone runs out.
 * The store is rec[]: each store operation is one d_step, as each Lua script is one atomic call.
 * The broker is mst[]: a message leaves only by an ack; an unacked message whose delivery died
 * is READY again (redelivered).
 *
 * Properties (model/check.sh runs them)
 *   (1) at most one COMPLETED per key: complete_2_lua never succeeds twice    assert, (1)
 *   (2) ack last: a message is acked only once its key's terminal record is durable (COMPLETED
 *       and its outgoing message confirmed; FAILED and its dead-letter copy confirmed) or a
 *       confirmed retry copy carries it on; and no ack leaves a key without a terminal record
 *       and without an unacked message                                          assert, (2)
 *   (3) no write with a stale fence is accepted: every fenced operation that succeeds is made
 *       with the newest fence ever granted on the key                           assert, (3)
 *   (4) every message is eventually acked (dead-lettered ones after their copy) and every key
 *       ends COMPLETED or FAILED: LTL `eventually_settled`, under weak fairness (-DLIVENESS)
 *   and: a step journaled by an earlier attempt is never run again (step_effect); when nothing
 *   can move any more, every message is settled and every key is terminal (Clock's timeout).
 *
 * Switches (-D on the spin command line)
 *   NK=1|2      keys: key 0 is sent twice (the producer retried), key 1 once. Default 1.
 *   FAULTS=n    fault budget of a run: crashes + stalls + revocations. Default 3.
 *   LIVENESS    add the LTL property, and let a fair Faults process stop injecting.
 *   MUTANT_COMPLETE_NO_FENCE  completeOne.lua without its fence check: Spin must find (3) broken.
 *   MUTANT_NO_LEASE_EXPIRY    the lease of a dead holder never runs out: (4) must fail.
 */

#ifndef NK
#define NK 1
#endif
#ifndef FAULTS
#define FAULTS 3
#endif

/* retry.maxAttempts. 2 reaches every branch: a retryable error at attempt 1 releases and is
 * retried, one at attempt 2 is exhausted and fails, a takeover to attempt 3 fails at once. */
#define MAXATT 2
/* maxTakeoverAttempts: the code's own bound for takeovers (default 20); here the same as MAXATT,
 * which reaches every branch: the properties hold for any bound, and a larger one only repeats
 * the takeover stage. */
#define MAXTAKE MAXATT
#define NW 3

/* ---------------------------------------------------------------- the store: one record a key */
#define ABSENT    0
#define INPROG    1   /* s = 'I' */
#define COMPLETED 2   /* s = 'C' */
#define FAILED    3   /* s = 'F' */
/* field l (leaseUntil) against the store clock, as abstract time */
#define LIVE      1   /* leaseUntil > now */
#define EXPIRED   2   /* 0 < leaseUntil <= now */
#define RELEASED  3   /* leaseUntil = 0 (release-1.lua) */

typedef Record {
  byte st;      /* s */
  byte fence;   /* n */
  byte att;     /* a */
  byte lease;   /* l */
  byte owner;   /* w */
  byte stepBy;  /* 'S'..name, the one journaled step: 0 = none, else the fence that saved it */
  bit  pub;     /* p1: the one outgoing message is flagged published (markPublished) */
};
Record rec[NK];

/* ghosts: what the properties talk about; the protocol never reads them */
byte granted[NK];      /* newest fence begin granted on the key */
byte completions[NK];  /* successful complete_2_lua calls */
bit  sent[NK];         /* the outgoing message was published with a broker confirm */
bit  dlq[NK];          /* a dead-letter copy was published with a broker confirm */

/* ---------------------------------------------------------------- the broker: message slots */
#define NONE   0
#define READY  1   /* queued: to be delivered or redelivered */
#define INFL   2   /* delivered, not acked */
#define ACKED  3
/* slot 0: key 0; slot 1: key 0 again (producer retry); slot 2: key 0's retry copy;
 * slot 3: key 1; slot 4: key 1's retry copy */
#if NK > 1
#define NS 5
#else
#define NS 3
#endif
#define KEY(s)    ((s) < 3 -> 0 : 1)
#define RETRY(k)  ((k) == 0 -> 2 : 4)
byte mst[NS];
byte mholder[NS];  /* 1 + id of the worker whose delivery holds it; 0 = none */

/* ---------------------------------------------------------------- workers, faults */
byte wf[NW];       /* fence a worker's run got from begin (0 = none), read by Clock and Faults */
bit  wbusy[NW];
byte budget = FAULTS;

/* the record's holder is running (it has the fence of the record): its lease runs out only
 * if it stalls (a fault); a holder that is gone loses it by time alone (Clock) */
#define holderAlive(k) (wf[rec[k].owner] == rec[k].fence)
#define terminal(k)    (rec[k].st == COMPLETED || rec[k].st == FAILED)
#define settled(s)     (mst[s] == NONE || mst[s] == ACKED)
#define open(s)        (mst[s] == READY || mst[s] == INFL)
#if NK > 1
#define unacked(k)  ((k) == 0 -> (open(0) || open(1) || open(2)) : (open(3) || open(4)))
#define done        (settled(0) && settled(1) && settled(2) && settled(3) && settled(4))
#define allTerminal (terminal(0) && terminal(1))
#else
#define unacked(k)  (open(0) || open(1) || open(2))
#define done        (settled(0) && settled(1) && settled(2))
#define allTerminal (terminal(0))
#endif

/* words of the narration printed along a trail */
mtype = { retry, takeover, accepted, lost };

/* begin answers */
#define ACQUIRED  1
#define BUSY      2
#define DUPLICATE 3
#define PFAILED   4

/* ================================================================ store operations (Lua) */

/* begin-2.lua + includes/beginOne.lua. (No 'M' mismatch: all copies of a key carry one payload;
 * no 'K'/'X': nothing is compacted.) */
inline begin_2_lua() {
  d_step {
    if
    :: rec[k].st == ABSENT ->
         /* 'N' new: fence = max(now, previous fence + 1), attempt 1 */
         rec[k].st = INPROG; rec[k].fence = granted[k] + 1; rec[k].att = 1;
         rec[k].lease = LIVE; rec[k].owner = w; rec[k].stepBy = 0;
         res = ACQUIRED;
         printf("@@ w%d begin_2_lua(key %d) -> acquired new: fence %d attempt 1\n", w, k, rec[k].fence)
    :: rec[k].st == INPROG && rec[k].lease == LIVE ->
         res = BUSY   /* 'B' */
    :: rec[k].st == INPROG && rec[k].lease != LIVE ->
         /* 'R' retry (released) or 'T' takeover (lapsed): fence + 1, attempt + 1, steps kept */
         printf("@@ w%d begin_2_lua(key %d) -> acquired %e: fence %d attempt %d\n", w, k,
                (rec[k].lease == RELEASED -> retry : takeover), rec[k].fence + 1, rec[k].att + 1);
         rec[k].fence++; rec[k].att++; rec[k].lease = LIVE; rec[k].owner = w;
         res = ACQUIRED
    :: rec[k].st == COMPLETED ->
         res = DUPLICATE; wf[w] = rec[k].fence;   /* 'D', the record and its fence */
         printf("@@ w%d begin_2_lua(key %d) -> duplicate\n", w, k)
    :: rec[k].st == FAILED ->
         res = PFAILED;   /* 'F' */
         printf("@@ w%d begin_2_lua(key %d) -> failed\n", w, k)
    fi;
    if
    :: res == ACQUIRED ->
         granted[k] = rec[k].fence; wf[w] = rec[k].fence; a = rec[k].att;
         replay = (rec[k].stepBy != 0)
    :: else
    fi
  }
}

/* extend-1.lua: the heartbeat */
inline extend_1_lua() {
  d_step {
    if
    :: rec[k].st == INPROG && rec[k].fence == wf[w] ->
         assert(wf[w] == granted[k]);                                 /* (3) */
         rec[k].lease = LIVE; ok = 1
    :: else -> ok = 0
    fi;
    printf("@@ w%d extend_1_lua(key %d, fence %d) -> %e\n", w, k, wf[w], (ok -> accepted : lost))
  }
}

/* saveStep-1.lua: journal the step's result under the record held by the fence */
inline saveStep_1_lua() {
  d_step {
    if
    :: rec[k].st == INPROG && rec[k].fence == wf[w] ->
         assert(wf[w] == granted[k]);                                 /* (3) */
         rec[k].stepBy = wf[w]; ok = 1
    :: else -> ok = 0
    fi;
    printf("@@ w%d saveStep_1_lua(key %d, fence %d) -> %e\n", w, k, wf[w], (ok -> accepted : lost))
  }
}

/* completeMany-n.lua + includes/completeOne.lua: IN_PROGRESS(fence) -> COMPLETED with the outgoing
 * message (unpublished) in the same write; the new hash has no lease and no steps */
inline complete_2_lua() {
  d_step {
    if
#ifdef MUTANT_COMPLETE_NO_FENCE
    :: rec[k].st == INPROG ->
#else
    :: rec[k].st == INPROG && rec[k].fence == wf[w] ->
#endif
         printf("@@ w%d complete_2_lua(key %d, fence %d) -> ok (record fence %d, newest granted %d)\n",
                w, k, wf[w], rec[k].fence, granted[k]);
         assert(wf[w] == granted[k]);                                 /* (3) */
         completions[k]++;
         assert(completions[k] <= 1);                                 /* (1) */
         rec[k].st = COMPLETED; rec[k].lease = 0; rec[k].owner = 0; rec[k].stepBy = 0;
         rec[k].pub = 0; ok = 1
    :: else -> ok = 0;
         printf("@@ w%d complete_2_lua(key %d, fence %d) -> lost\n", w, k, wf[w])
    fi
  }
}

/* release-1.lua: after a retryable error; leaseUntil = 0, the attempt and steps stay */
inline release_1_lua() {
  d_step {
    if
    :: rec[k].st == INPROG && rec[k].fence == wf[w] ->
         assert(wf[w] == granted[k]);                                 /* (3) */
         rec[k].lease = RELEASED; ok = 1
    :: else -> ok = 0
    fi;
    printf("@@ w%d release_1_lua(key %d, fence %d) -> %e\n", w, k, wf[w], (ok -> accepted : lost))
  }
}

/* fail-1.lua: IN_PROGRESS(fence) -> FAILED; the new hash has no lease and no steps */
inline fail_1_lua() {
  d_step {
    if
    :: rec[k].st == INPROG && rec[k].fence == wf[w] ->
         assert(wf[w] == granted[k]);                                 /* (3) */
         rec[k].st = FAILED; rec[k].lease = 0; rec[k].owner = 0; rec[k].stepBy = 0; ok = 1
    :: else -> ok = 0
    fi;
    printf("@@ w%d fail_1_lua(key %d, fence %d) -> %e\n", w, k, wf[w], (ok -> accepted : lost))
  }
}

/* markPublished-1.lua: flag the outgoing message of the COMPLETED record completed under the
 * fence; anything else flags nothing */
inline markPublished_1_lua() {
  d_step {
    if
    :: rec[k].st == COMPLETED && rec[k].fence == wf[w] ->
         assert(wf[w] == granted[k]);                                 /* (3) */
         rec[k].pub = 1
    :: else
    fi;
    printf("@@ w%d markPublished_1_lua(key %d, fence %d)\n", w, k, wf[w])
  }
}

/* ================================================================ broker and effects */

/* the broker delivers a READY message to worker w; prepare() reads its key */
inline deliver() {
  atomic {
    if
    :: mst[0] == READY -> m = 0
    :: mst[1] == READY -> m = 1
    :: mst[2] == READY -> m = 2
#if NK > 1
    :: mst[3] == READY -> m = 3
    :: mst[4] == READY -> m = 4
#endif
    fi;
    mst[m] = INFL; mholder[m] = w + 1; wbusy[w] = 1; k = KEY(m);
    printf("@@ w%d <- message %d (key %d)\n", w, m, k)
  }
}

/* settle with an ack. (2) is checked when the worker acks; the broker removes the message only
 * if this delivery still holds it (an ack on a dead channel, or after a rebalance, does nothing) */
inline ack() {
  d_step {
    printf("@@ w%d ack message %d (key %d: record state %d)\n", w, m, k, rec[k].st);
    assert(copied ||                                                  /* (2) */
           (rec[k].st == COMPLETED && sent[k]) ||
           (rec[k].st == FAILED && dl && dlq[k]));
    if
    :: mst[m] == INFL && mholder[m] == w + 1 -> mst[m] = ACKED; mholder[m] = 0
    :: else
    fi;
    assert(terminal(k) || unacked(k))                                 /* (2) */
  }
}

/* publish the outgoing message, with a broker confirm (publish.ts publishThenAck) */
inline publish_outgoing() {
  d_step { sent[k] = 1; printf("@@ w%d publish outgoing of key %d (confirmed)\n", w, k) }
}

/* publish the dead-letter copy with its reason, confirmed (adapter settle, dead-letter) */
inline dead_letter() {
  d_step { dlq[k] = 1; dl = 1; printf("@@ w%d dead-letter message %d (confirmed)\n", w, m) }
}

/* publish the retry copy to the retry queue / topic, confirmed (adapter settle, retry) */
inline schedule_retry() {
  d_step {
    assert(mst[RETRY(k)] == NONE);   /* one release per key (attempt 1 < MAXATT): one slot */
    mst[RETRY(k)] = READY; copied = 1;
    printf("@@ w%d retry copy of key %d -> message %d (confirmed)\n", w, k, RETRY(k))
  }
}

/* the journaled step's function runs (ctx.step's fn: an effect on another system) */
inline step_effect() {
  d_step {
    printf("@@ w%d step fn runs (key %d, fence %d)\n", w, k, wf[w]);
    /* a step journaled by an earlier attempt (stepBy < fence) is replayed, never run again */
    assert(rec[k].stepBy == 0 || rec[k].stepBy > wf[w])
  }
}

/* ================================================================ the pipeline */

/* The worker dies before its next step: its connection drops, the broker redelivers its unacked
 * message, and what it knew is gone (its next incarnation starts idle). Its lease, if it holds
 * one, is left to run out (Clock). */
inline crash() {
  d_step {
    budget > 0;
    budget--;
    printf("@@ w%d CRASH (message %d back to the queue)\n", w, m);
    if
    :: mst[m] == INFL && mholder[m] == w + 1 -> mst[m] = READY; mholder[m] = 0
    :: else
    fi;
    wf[w] = 0; wbusy[w] = 0;
    m = 0; k = 0; a = 0; res = 0; replay = 0; ok = 0; copied = 0; dl = 0
  };
  goto end_idle
}

/* Every step is written `if :: step :: crash() fi`: the worker may die before any step. */
proctype Worker(byte w) {
  byte m, k, a, res;
  bit replay, ok, copied, dl;

end_idle:
  deliver();
again:
  if :: begin_2_lua() :: crash() fi;
  if
  :: res == BUSY ->
       /* defer, no ack, run again in place (RabbitMQ keeps the delivery; Kafka waits) */
       res = 0; goto again
  :: res == DUPLICATE ->
       /* finishCompleted: publish what is unconfirmed, markPublished, ack */
       res = 0;
       if
       :: !rec[k].pub ->
            if :: publish_outgoing() :: crash() fi;
            if :: markPublished_1_lua() :: crash() fi
       :: else
       fi;
       if :: ack() :: crash() fi;
       goto finished
  :: res == PFAILED ->
       /* previously failed: dead-letter, ack */
       res = 0;
       if :: dead_letter() :: crash() fi;
       if :: ack() :: crash() fi;
       goto finished
  :: res == ACQUIRED ->
       res = 0;
       if
       :: a > MAXTAKE -> goto failing                /* AttemptsExhaustedError (takeovers) */
       :: else
       fi
  fi;

  /* the handler, under the heartbeat: one journaled step (ctx.step) */
  if
  :: replay -> replay = 0                            /* journaled earlier: its result replays */
  :: else ->
       if :: step_effect() :: crash() fi;
       if :: saveStep_1_lua() :: crash() fi;
       if :: !ok -> goto lease_lost :: else -> ok = 0 fi   /* LeaseLostError */
  fi;
  if
  :: skip
  :: if :: extend_1_lua() :: crash() fi;             /* a heartbeat of the lease board */
     if :: !ok -> goto lease_lost :: else -> ok = 0 fi    /* keeper.lost */
  fi;

  /* the handler's outcome */
  if
  :: if :: complete_2_lua() :: crash() fi;          /* returned: complete(result + outgoing) */
     if :: !ok -> goto lease_lost :: else -> ok = 0 fi;
     if :: publish_outgoing() :: crash() fi;
     if
     :: if :: markPublished_1_lua() :: crash() fi
     :: skip                                          /* store error: logged, acked anyway */
     fi;
     if :: ack() :: crash() fi;
     goto finished
  :: a < MAXATT ->                                   /* retryable error: handleFailure */
     if :: release_1_lua() :: crash() fi;
     if :: !ok -> goto lease_lost :: else -> ok = 0 fi;
     if
     :: if :: schedule_retry() :: crash() fi;        /* retry queue / retryTopic, then ack */
        if :: ack() :: crash() fi;
        goto finished
     :: goto again                                   /* Kafka without retryTopic: in place */
     fi
  :: goto failing                                    /* permanent error, or attempts exhausted */
  fi;

failing:
  if :: fail_1_lua() :: crash() fi;                  /* failAndDeadLetter */
  if :: !ok -> goto lease_lost :: else -> ok = 0 fi;
  if :: dead_letter() :: crash() fi;
  if :: ack() :: crash() fi;
  goto finished;

lease_lost:
  /* leaseLost: defer, no ack; the delivery runs again in place */
  ok = 0; goto again;

finished:
  atomic {
    wf[w] = 0; wbusy[w] = 0;
    m = 0; k = 0; a = 0; res = 0; replay = 0; ok = 0; copied = 0; dl = 0
  };
  goto end_idle
}

/* stalls and revocations, while the budget lasts (crashes take from it too) */
active proctype Faults() {
end_faults:
  do
  /* stall: a live holder stops heartbeating until its lease has run out */
  :: atomic { budget > 0 && rec[0].st == INPROG && rec[0].lease == LIVE && holderAlive(0) ->
              rec[0].lease = EXPIRED; budget--;
              printf("@@ STALL of w%d: lease of key 0 (fence %d) runs out\n", rec[0].owner, rec[0].fence) }
#if NK > 1
  :: atomic { budget > 0 && rec[1].st == INPROG && rec[1].lease == LIVE && holderAlive(1) ->
              rec[1].lease = EXPIRED; budget--;
              printf("@@ STALL of w%d: lease of key 1 (fence %d) runs out\n", rec[1].owner, rec[1].fence) }
#endif
  /* revoke: the broker takes a delivery back from a live worker and will redeliver it */
  :: atomic { budget > 0 && mst[0] == INFL -> mst[0] = READY; mholder[0] = 0; budget--;
              printf("@@ REVOKE message 0\n") }
  :: atomic { budget > 0 && mst[1] == INFL -> mst[1] = READY; mholder[1] = 0; budget--;
              printf("@@ REVOKE message 1\n") }
  :: atomic { budget > 0 && mst[2] == INFL -> mst[2] = READY; mholder[2] = 0; budget--;
              printf("@@ REVOKE message 2\n") }
#if NK > 1
  :: atomic { budget > 0 && mst[3] == INFL -> mst[3] = READY; mholder[3] = 0; budget--;
              printf("@@ REVOKE message 3\n") }
  :: atomic { budget > 0 && mst[4] == INFL -> mst[4] = READY; mholder[4] = 0; budget--;
              printf("@@ REVOKE message 4\n") }
#endif
#ifdef LIVENESS
  /* faults happen finitely often: a fair Faults process may also stop for good */
  :: budget > 0 -> budget = 0
#endif
  od
}

/* time passes: the lease of a holder that is gone runs out */
active proctype Clock() {
end_clock:
  do
#ifndef MUTANT_NO_LEASE_EXPIRY
  :: atomic { rec[0].st == INPROG && rec[0].lease == LIVE && !holderAlive(0) ->
              rec[0].lease = EXPIRED; printf("@@ lease of key 0 (fence %d) runs out\n", rec[0].fence) }
#if NK > 1
  :: atomic { rec[1].st == INPROG && rec[1].lease == LIVE && !holderAlive(1) ->
              rec[1].lease = EXPIRED; printf("@@ lease of key 1 (fence %d) runs out\n", rec[1].fence) }
#endif
#endif
  :: timeout ->
       /* nothing can move any more: every message settled, every key terminal */
       assert(done && allTerminal); break
  od
}

init {
  atomic {
    mst[0] = READY;   /* key 0 */
    mst[1] = READY;   /* key 0 again: the producer timed out and sent it twice */
#if NK > 1
    mst[3] = READY;   /* key 1 */
#endif
    run Worker(0); run Worker(1); run Worker(2)
  }
}

#ifdef LIVENESS
/* (4) every message is eventually acked (dead-lettered ones after their dead-letter copy), and
 * every key ends COMPLETED or FAILED */
ltl eventually_settled { <> (done && allTerminal) }
#endif
