#!/usr/bin/env bash
# libiscsi's conformance suite (iscsi-test-cu, every test) against Pinion
# three times in a row while two CPU-bound processes keep both cores busy:
# races hide on a quiet machine (a TMF answered both ways showed up only
# under load). Each run is tests/iscsi-conformance.sh with SKIP_TGTD=1.
#
#   tests/iscsi-conformance-loaded.sh [PINION_BIN]
#
# Exits non-zero if any run has a failed test (or did not run). The burners
# are bounded by `timeout` and killed by PID when the script exits.
#
# environment: RUNS (default 3), BURNERS (default 2), CONF_OUT (default
#   build/iscsi-conformance-loaded; run N writes CONF_OUT/runN), and what
#   tests/iscsi-conformance.sh takes (PINION_PORT, LUN_SIZE, TEST_FILTER).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
BURNERS=${BURNERS:-2}
OUT=${CONF_OUT:-$REPO/build/iscsi-conformance-loaded}
mkdir -p "$OUT"

burners=()
cleanup() {
  for p in "${burners[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${burners[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
# a bound even if this script is killed before its trap runs: one run takes
# a few minutes, and tests/iscsi-conformance.sh bounds each at 25 minutes
for _ in $(seq "$BURNERS"); do
  timeout $((RUNS * 1600)) sh -c 'while :; do :; done' &
  burners+=($!)
done
echo "== $BURNERS CPU burners running (PIDs ${burners[*]})"

rc=0
summary=()
for i in $(seq "$RUNS"); do
  t=$SECONDS
  CONF_OUT=$OUT/run$i SKIP_TGTD=1 "$REPO/tests/iscsi-conformance.sh" "$@" >"$OUT/run$i.out" 2>&1
  r=$?
  counts="0 0 0"
  [[ -f $OUT/run$i/pinion.counts ]] && counts=$(cat "$OUT/run$i/pinion.counts")
  read -r p f s <<<"$counts"
  line=$(printf 'run %d: %d passed, %d failed, %d skipped, rc=%d, %d s' "$i" "$p" "$f" "$s" "$r" $((SECONDS - t)))
  echo "$line"
  summary+=("$line")
  if ((r != 0 || f > 0 || p == 0)); then
    rc=1
    echo "   failed tests:"; sed 's/^/     /' "$OUT/run$i/pinion.failed" 2>/dev/null
    tail -n 15 "$OUT/run$i.out" | sed 's/^/   | /'
  fi
done
echo
for l in "${summary[@]}"; do echo "$l"; done
if ((rc == 0)); then echo "ISCSI-CONFORMANCE-LOADED: PASS ($RUNS runs under $BURNERS CPU burners)"; else echo "ISCSI-CONFORMANCE-LOADED: FAIL"; fi
exit $rc
