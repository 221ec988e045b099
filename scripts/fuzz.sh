#!/usr/bin/env bash
# Runs one fuzz target, or every target, for a bounded time or to a number of
# executions each.
#
#   scripts/fuzz.sh TARGET [SECONDS]         e.g. scripts/fuzz.sh nvme_tcp_pdu 600
#   scripts/fuzz.sh TARGET --runs N          until N inputs have been executed
#   scripts/fuzz.sh all [SECONDS|--runs N]   every target in fuzz/Cargo.toml
#   ... --merge                              afterwards, minimize the corpus
#                                            back into fuzz/corpus/TARGET
#
# Every run starts from the corpus kept in the repository (fuzz/corpus/TARGET,
# read only) plus the working corpus in build/fuzz-corpus/TARGET, where new
# inputs go, so a run never dirties the tree. With --merge the union of both
# is minimized (`cargo fuzz cmin`) and replaces fuzz/corpus/TARGET.
#
# Installs cargo-fuzz from crates.io when missing. Uses the nightly toolchain
# with AddressSanitizer when rustup has one, else the stable toolchain without
# a sanitizer (Rust's own bounds and overflow checks still apply; the fuzz
# build enables debug assertions); FUZZ_SANITIZER=none forces no sanitizer
# (about twice the executions per second; for safe Rust code AddressSanitizer
# finds nothing the language's own checks do not).
# Crashes land in fuzz/artifacts/TARGET/. The engine's output goes to
# build/fuzz-logs/TARGET.log as well; the last line of each run is a summary:
# executions, seconds, executions per second, working corpus size.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: scripts/fuzz.sh TARGET|all [SECONDS | --runs N] [--merge]"
target=${1:?$usage}
shift
secs=60 runs= merge=
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) runs=${2:?$usage}; shift 2 ;;
    --merge) merge=1; shift ;;
    [0-9]*) secs=$1; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
tc=() san=()
if [[ ${FUZZ_SANITIZER:-} != none ]] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  tc=(+nightly)
else
  san=(--sanitizer none)
fi
# each build kind in its own directory: switching never rebuilds the other
export CARGO_TARGET_DIR=$REPO/build/fuzz${san:+-nosan}
cd "$REPO/fuzz"
if [[ $target == all ]]; then
  targets=$(cargo "${tc[@]}" fuzz list)
else
  targets=$target
fi
if [[ -n $runs ]]; then
  bound=(-runs="$runs") what="$runs runs"
else
  bound=(-max_total_time="$secs") what="${secs} s"
fi
mkdir -p "$REPO/build/fuzz-logs"
rc=0
for t in $targets; do
  corpus=$REPO/build/fuzz-corpus/$t
  kept=$REPO/fuzz/corpus/$t
  log=$REPO/build/fuzz-logs/$t.log
  mkdir -p "$corpus"
  dirs=("$corpus")
  [[ -d $kept ]] && dirs+=("$kept")
  echo "=== fuzz $t ($what)"
  start=$(date +%s)
  if ! cargo "${tc[@]}" fuzz run "${san[@]}" "$t" "${dirs[@]}" -- "${bound[@]}" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tee "$log"; then
    echo "=== fuzz $t: FAILED (crash inputs in fuzz/artifacts/$t/)"
    rc=1
    continue
  fi
  secs_taken=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  echo "=== fuzz $t: ok: ${execs:-?} executions in ${secs_taken} s (${rate:-?}/s), working corpus $(find "$corpus" -type f | wc -l) files"
  if [[ -n $merge ]]; then
    # cmin minimizes in place: gather both corpora there first
    mkdir -p "$kept"
    cp -n "$corpus"/* "$kept"/ 2>/dev/null || true
    cargo "${tc[@]}" fuzz cmin "${san[@]}" "$t" "$kept" >>"$log" 2>&1
    echo "=== fuzz $t: fuzz/corpus/$t now $(find "$kept" -type f | wc -l) files, $(($(du -sb "$kept" | cut -f1) / 1024)) KiB"
  fi
done
exit $rc
