#!/usr/bin/env bash
# Model-checks model/exactly-once.pml with Spin (see model/README.md).
#
#   model/check.sh [check...]      default: all of them, in this order
#
#   safety           NK=1, FAULTS=3: assertions (1) (2) (3), the step replay, invalid end states;
#                    exhaustive (no bitstate); also fails if a Worker branch became unreachable
#   safety-2keys     NK=2, FAULTS=0: two keys sharing the three workers, exhaustive
#   liveness         NK=1, FAULTS=2: LTL eventually_settled under weak fairness (pan -a -f)
#   mutant           completeOne.lua without its fence check: Spin must find a counterexample,
#                    printed as a trimmed `spin -t -p` trail
#   liveness-mutant  a dead holder's lease never runs out: the LTL property must fail
#
# Needs spin and a C compiler (scripts/infra.sh installs both with apt). Exits 0 when every
# property holds and every mutant is caught, 1 otherwise, 2 when Spin is missing.
# Overrides: EO_SPIN_FAULTS (safety, default 3), EO_SPIN_LIVE_FAULTS (liveness, default 2),
# EO_SPIN_MEMLIM (MB per verifier, default 2048).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="$HERE/exactly-once.pml"
FAULTS="${EO_SPIN_FAULTS:-3}"
LIVE_FAULTS="${EO_SPIN_LIVE_FAULTS:-2}"
MEMLIM="${EO_SPIN_MEMLIM:-2048}"
CC="${CC:-cc}"

command -v spin >/dev/null 2>&1 || {
  echo "check.sh: spin is not installed (apt-get install -y spin; scripts/infra.sh install does it)" >&2
  exit 2
}
command -v "$CC" >/dev/null 2>&1 || {
  echo "check.sh: no C compiler ($CC) for Spin's verifiers (apt-get install -y gcc)" >&2
  exit 2
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/eo-spin.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp "$MODEL" "$WORK/exactly-once.pml"
cd "$WORK"

failed=0
say() { printf '%s\n' "$*"; }

# build <spin -D flags> -- <cc -D flags>: generates and compiles the verifier ./pan.
build() {
  local spin_flags=() cc_flags=()
  while (($#)) && [[ $1 != -- ]]; do spin_flags+=("$1"); shift; done
  shift
  cc_flags=("$@")
  rm -f pan pan.* _spin_nvr.tmp exactly-once.pml.trail
  spin "${spin_flags[@]}" -a exactly-once.pml >spin.out 2>&1 || { cat spin.out >&2; return 1; }
  "$CC" -O2 -w -DMEMLIM="$MEMLIM" "${cc_flags[@]}" -o pan pan.c 2>cc.out || { cat cc.out >&2; return 1; }
}

# stats <pan output file>: one line with the size of the search.
stats() {
  local f=$1 stored depth secs
  stored=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$f" | head -n1)
  depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$f" | head -n1)
  secs=$(sed -n 's/^pan: elapsed time \([0-9.e+]*\) seconds.*/\1/p' "$f" | head -n1)
  printf 'states stored %s, depth %s, %s s' "${stored:-?}" "${depth:-?}" "${secs:-?}"
}

# complete <pan output file>: the search ran to its end (exhaustive), with no error.
clean_and_complete() {
  local f=$1
  grep -q 'errors: 0' "$f" &&
    ! grep -qE 'Search not completed|reached -DMEMLIM bound|max search depth too small|out of memory' "$f"
}

# trail <spin -D flags...>: the counterexample as `spin -t -p` prints it, trimmed to the
# narrated steps (one line each: step, process, source line, what happened) and the violation.
trail() {
  spin "$@" -T -t -p exactly-once.pml 2>&1 | awk '
    /^@@ / { note = substr($0, 4); next }
    note != "" && /^ *[0-9]+:\t+proc/ {
      split($0, f, "\t"); step = f[1]; gsub(/ /, "", step)
      proc = f[2]; sub(/ *\(state [0-9]+\)$/, "", proc); sub(/^proc +/, "proc ", proc)
      printf "  %5s %-34s %s\n", step, proc, note; note = ""; next
    }
    /Error: assertion violated|text of failed assertion|START OF CYCLE|acceptance cycle/ { print "  " $0 }
  '
}

check_safety() {
  say "== safety: NK=1 (key 0 sent twice), 3 workers, FAULTS=$FAULTS, exhaustive"
  build -DNK=1 -DFAULTS="$FAULTS" -- -DSAFETY -DCOLLAPSE
  ./pan -m200000 -w24 >pan.out 2>&1 || true
  # Anti-vacuity: every statement of Worker is reached but its "-end-" (it never terminates).
  if clean_and_complete pan.out &&
    awk '/^unreached in proctype Worker/ { on = 1; next } on && /^unreached in/ { on = 0 } on' pan.out |
    grep -q '^[[:space:]]*(1 of '; then
    say "PASS safety: $(stats pan.out)"
  else
    sed -n '/errors:/,$p' pan.out | head -n 40
    grep -E 'violated|Search not completed|MEMLIM|depth too small' pan.out || true
    say "FAIL safety: $(stats pan.out)"
    failed=1
  fi
}

check_safety_2keys() {
  say "== safety-2keys: NK=2, 3 workers, FAULTS=0, exhaustive"
  build -DNK=2 -DFAULTS=0 -- -DSAFETY -DCOLLAPSE
  ./pan -m200000 -w24 >pan.out 2>&1 || true
  if clean_and_complete pan.out; then
    say "PASS safety-2keys: $(stats pan.out)"
  else
    grep -E 'violated|errors:|Search not completed|MEMLIM' pan.out || true
    say "FAIL safety-2keys: $(stats pan.out)"
    failed=1
  fi
}

check_liveness() {
  say "== liveness: NK=1, 3 workers, FAULTS=$LIVE_FAULTS, <> (done && allTerminal), weak fairness"
  build -DNK=1 -DFAULTS="$LIVE_FAULTS" -DLIVENESS -- -DCOLLAPSE -DNFAIR=3
  ./pan -m200000 -w24 -a -f >pan.out 2>&1 || true
  if clean_and_complete pan.out; then
    say "PASS liveness: $(stats pan.out)"
  else
    grep -E 'acceptance cycle|violated|errors:|Search not completed|MEMLIM' pan.out || true
    [[ -f exactly-once.pml.trail ]] && trail -DNK=1 -DFAULTS="$LIVE_FAULTS" -DLIVENESS
    say "FAIL liveness: $(stats pan.out)"
    failed=1
  fi
}

check_mutant() {
  say "== mutant: completeOne.lua without its fence check (MUTANT_COMPLETE_NO_FENCE), FAULTS=$FAULTS"
  # Breadth-first: the shortest counterexample.
  build -DNK=1 -DFAULTS="$FAULTS" -DMUTANT_COMPLETE_NO_FENCE -- -DSAFETY -DBFS
  ./pan >pan.out 2>&1 || true
  if grep -q 'assertion violated (wf\[w\]==granted\[k\])' pan.out && [[ -f exactly-once.pml.trail ]]; then
    say "CAUGHT mutant: $(grep -m1 'assertion violated' pan.out) ($(stats pan.out))"
    say "counterexample (spin -t -p, trimmed):"
    trail -DNK=1 -DFAULTS="$FAULTS" -DMUTANT_COMPLETE_NO_FENCE
  else
    grep -E 'violated|errors:' pan.out || true
    say "NOT CAUGHT mutant: Spin found no stale-fence write"
    failed=1
  fi
}

check_liveness_mutant() {
  say "== liveness-mutant: a dead holder's lease never runs out (MUTANT_NO_LEASE_EXPIRY)"
  build -DNK=1 -DFAULTS=1 -DLIVENESS -DMUTANT_NO_LEASE_EXPIRY -- -DCOLLAPSE -DNFAIR=3
  ./pan -m200000 -w22 -a -f >pan.out 2>&1 || true
  if grep -q 'acceptance cycle' pan.out && [[ -f exactly-once.pml.trail ]]; then
    say "CAUGHT liveness-mutant: $(grep -m1 'acceptance cycle' pan.out) ($(stats pan.out))"
    trail -DNK=1 -DFAULTS=1 -DLIVENESS -DMUTANT_NO_LEASE_EXPIRY | tail -n 12
  else
    grep -E 'errors:' pan.out || true
    say "NOT CAUGHT liveness-mutant"
    failed=1
  fi
}

checks=("$@")
((${#checks[@]})) || checks=(safety safety-2keys liveness mutant liveness-mutant)
say "spin: $(spin -V)"
for c in "${checks[@]}"; do
  case $c in
    safety) check_safety ;;
    safety-2keys) check_safety_2keys ;;
    liveness) check_liveness ;;
    mutant) check_mutant ;;
    liveness-mutant) check_liveness_mutant ;;
    *) echo "check.sh: unknown check '$c' (safety safety-2keys liveness mutant liveness-mutant)" >&2; exit 2 ;;
  esac
done
exit "$failed"
