#!/usr/bin/env bash
# Runs one fuzz target, or every target, for a bounded time each.
#
#   scripts/fuzz.sh TARGET [SECONDS]       e.g. scripts/fuzz.sh nvme_tcp_pdu 600
#   scripts/fuzz.sh all [SECONDS]          every target in fuzz/Cargo.toml, SECONDS each
#
# Installs cargo-fuzz from crates.io when missing. Uses the nightly toolchain
# with AddressSanitizer when rustup has one, else the stable toolchain without
# a sanitizer (Rust's own bounds and overflow checks still apply; the fuzz
# build enables debug assertions). Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS]}
secs=${2:-60}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
tc=() san=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  tc=(+nightly)
else
  san=(--sanitizer none)
fi
export CARGO_TARGET_DIR=$REPO/build/fuzz
cd "$REPO/fuzz"
if [[ $target == all ]]; then
  targets=$(cargo "${tc[@]}" fuzz list)
else
  targets=$target
fi
rc=0
for t in $targets; do
  corpus=$REPO/build/fuzz-corpus/$t
  mkdir -p "$corpus"
  echo "=== fuzz $t (${secs} s)"
  if ! cargo "${tc[@]}" fuzz run "${san[@]}" "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1; then
    echo "=== fuzz $t: FAILED (crash inputs in fuzz/artifacts/$t/)"
    rc=1
  else
    echo "=== fuzz $t: ok"
  fi
done
exit $rc
