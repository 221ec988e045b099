#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
#
#   sudo ./scripts/test.sh        (root: it installs Debian packages and the
#                                   VM kernel on first use)
#
# Steps: install test dependencies; build (debug + release); clippy with
# warnings denied; unit and integration tests (the integration tests start
# the real `pinion` binary); libiscsi's iSCSI conformance suite against
# Pinion (at 4096- and at 512-byte blocks) and tgtd side by side, then
# against Pinion alone three times while two CPU burners keep the cores
# busy; the RBD backend against a throwaway single-node Ceph cluster
# (tests/rbd.sh: qemu-img, rbd export/import, pinion perf --verify, an OSD
# stopped mid-I/O, iscsi-test-cu); a bounded fuzz run of every fuzz target; the
# kernel-initiator VM tests: NVMe/TCP first against the kernel's own nvmet
# (the reference) and then against Pinion with the same script, and iSCSI
# (open-iscsi + iscsi_tcp) against Pinion, without and with CHAP; live
# reconfiguration and restarts under both kernel hosts with fio verifying; NVMe
# DH-HMAC-CHAP with the kernel host on the 6.12 kernel, against nvmet and
# Pinion with the same script; durability (Pinion killed with SIGKILL
# mid-write and restarted, then the guest loses power mid-write: every write
# the kernel hosts saw acknowledged reads back intact); `pinion perf
# --verify` against the kernel's nvmet. (Benchmarks are not tests:
# deploy/bench/run.sh is never run here.)
#
# Environment: FUZZ_SECONDS (default 40 per target; 0 skips fuzzing), SKIP_VM=1 skips
# the VM tests (for a quick local run; CI never sets it).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export CARGO_TARGET_DIR=$REPO/build/cargo
export CARGO_TERM_COLOR=never
LOG=$REPO/build/test-logs
mkdir -p "$LOG"

passed=0 failed=0 failures=()
step() { printf '\n===== %s\n' "$*"; }
ok() { passed=$((passed + ${2:-1})); printf -- '--- ok: %s\n' "$1"; }
bad() { failed=$((failed + ${2:-1})); failures+=("$1"); printf -- '--- FAILED: %s\n' "$1"; }

# A full disk fails every step at once with errors far from the cause
# (one CI run did): say so first. A build tree takes ~1.5 GiB, the fuzz
# builds and VM images a few more.
avail_kib=$(df -Pk "$REPO" | awk 'NR == 2 {print $4}')
if (( avail_kib < 8 * 1024 * 1024 )); then
  echo "WARNING: only $((avail_kib / 1024)) MiB free on $(df -P "$REPO" | awk 'NR == 2 {print $6}'); the build and the VM tests need about 8 GiB"
fi

step "install test dependencies"
if [[ $(id -u) == 0 ]]; then
  ./scripts/install-test-deps.sh || { bad "install-test-deps"; }
else
  echo "not root: skipping package installs (run with sudo to install them)"
fi

step "build"
if ! cargo build --workspace --all-targets --quiet; then bad "cargo build"; fi
if ! cargo build --release -p pinion-target --quiet; then bad "cargo build --release"; fi

step "clippy"
if cargo clippy --workspace --all-targets --quiet -- -D warnings; then ok clippy; else bad clippy; fi

step "unit and integration tests"
export PINION_BIN=$CARGO_TARGET_DIR/debug/pinion
cargo test --workspace --no-fail-fast 2>&1 | tee "$LOG/cargo-test.log"
rc=${PIPESTATUS[0]}
p=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$LOG/cargo-test.log" | awk '{s+=$4} END {print s+0}')
f=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$LOG/cargo-test.log" | awk '{s+=$6} END {print s+0}')
passed=$((passed + p)); failed=$((failed + f))
if ((rc != 0)); then
  failures+=("cargo test (rc=$rc)")
  ((f == 0)) && failed=$((failed + 1))
fi

step "iSCSI conformance: iscsi-test-cu against Pinion and tgtd"
if [[ $(id -u) == 0 ]]; then
  if tests/iscsi-conformance.sh "$CARGO_TARGET_DIR/release/pinion" >"$LOG/iscsi-conformance.out" 2>&1; then
    tail -n 9 "$LOG/iscsi-conformance.out"; ok "iscsi conformance"
  else
    tail -n 40 "$LOG/iscsi-conformance.out"; bad "iscsi conformance"
  fi
else
  echo "not root: tgtd needs root; running Pinion only"
  if SKIP_TGTD=1 tests/iscsi-conformance.sh "$CARGO_TARGET_DIR/release/pinion" >"$LOG/iscsi-conformance.out" 2>&1; then
    tail -n 6 "$LOG/iscsi-conformance.out"; ok "iscsi conformance (pinion only)"
  else
    tail -n 40 "$LOG/iscsi-conformance.out"; bad "iscsi conformance (pinion only)"
  fi
fi

step "iSCSI conformance under load: iscsi-test-cu on Pinion three times beside two CPU burners"
t0=$SECONDS
if tests/iscsi-conformance-loaded.sh "$CARGO_TARGET_DIR/release/pinion" >"$LOG/iscsi-conformance-loaded.out" 2>&1; then
  tail -n 5 "$LOG/iscsi-conformance-loaded.out"; ok "iscsi conformance under load"
else
  tail -n 40 "$LOG/iscsi-conformance-loaded.out"; bad "iscsi conformance under load"
fi
echo "(took $((SECONDS - t0)) s)"

step "RBD backend against a single-node Ceph cluster (tests/rbd.sh)"
t0=$SECONDS
if tests/rbd.sh "$CARGO_TARGET_DIR/release/pinion" "$CARGO_TARGET_DIR/debug/examples/nvme_aen" >"$LOG/rbd.out" 2>&1; then
  grep -E '^(--- |rbd: |ceph cluster)' "$LOG/rbd.out"; ok "rbd"
else
  tail -n 60 "$LOG/rbd.out"; bad "rbd"
fi
echo "(took $((SECONDS - t0)) s)"

# every [[bin]] of fuzz/Cargo.toml is a fuzz target; each gets its own run,
# starting from the corpus kept in fuzz/corpus/ (6 targets x 40 s: the same
# 4 minutes as 4 x 60 s before the nvme_cmd and nvme_auth targets came)
fuzz_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^pinion-fuzz$')
for t in $fuzz_targets; do
  step "fuzz: $t (${FUZZ_SECONDS:-40} s)"
  [[ ${FUZZ_SECONDS:-40} == 0 ]] && continue
  if ./scripts/fuzz.sh "$t" "${FUZZ_SECONDS:-40}" >"$LOG/fuzz-$t.log" 2>&1; then
    tail -n 3 "$LOG/fuzz-$t.log"; ok "fuzz $t"
  else
    tail -n 40 "$LOG/fuzz-$t.log"; bad "fuzz $t"
  fi
done

if [[ ${SKIP_VM:-} == 1 ]]; then
  step "VM tests skipped (SKIP_VM=1)"
else
  step "kernel initiator vs the kernel's nvmet (reference)"
  if tests/vm/run-e2e.sh nvmet >"$LOG/vm-nvmet.out" 2>&1; then tail -n 2 "$LOG/vm-nvmet.out"; ok "vm e2e nvmet"; else tail -n 60 "$LOG/vm-nvmet.out"; bad "vm e2e nvmet"; fi
  step "kernel initiator vs Pinion"
  if tests/vm/run-e2e.sh pinion "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-pinion.out" 2>&1; then tail -n 2 "$LOG/vm-pinion.out"; ok "vm e2e pinion"; else tail -n 80 "$LOG/vm-pinion.out"; bad "vm e2e pinion"; fi
  step "kernel iSCSI initiator (open-iscsi) vs Pinion, without and with CHAP"
  if tests/vm/run-e2e.sh iscsi "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-iscsi.out" 2>&1; then tail -n 2 "$LOG/vm-iscsi.out"; ok "vm e2e iscsi"; else tail -n 80 "$LOG/vm-iscsi.out"; bad "vm e2e iscsi"; fi
  step "reservations across NVMe/TCP and iSCSI: nvme-cli resv-*, sg_persist, a second NVMe host (VM, ~30 s)"
  if tests/vm/run-e2e.sh resv "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-resv.out" 2>&1; then tail -n 2 "$LOG/vm-resv.out"; ok "vm e2e resv"; else tail -n 80 "$LOG/vm-resv.out"; bad "vm e2e resv"; fi
  step "live reconfiguration and restarts with the kernel NVMe/TCP and iSCSI hosts (VM)"
  if tests/vm/run-e2e.sh reload "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-reload.out" 2>&1; then tail -n 2 "$LOG/vm-reload.out"; ok "vm e2e reload"; else tail -n 80 "$LOG/vm-reload.out"; bad "vm e2e reload"; fi
  step "NVMe multipath (ANA): kernel host on two listeners, path states switched by pinion reload under fio verify (VM, ~2 min)"
  if tests/vm/run-e2e.sh multipath "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-multipath.out" 2>&1; then tail -n 2 "$LOG/vm-multipath.out"; ok "vm multipath"; else tail -n 80 "$LOG/vm-multipath.out"; bad "vm multipath"; fi
  step "per-I/O read paths on the guest's 6.1 kernel (VM)"
  if tests/vm/run-e2e.sh paths "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-paths.out" 2>&1; then tail -n 2 "$LOG/vm-paths.out"; ok "vm paths"; else tail -n 60 "$LOG/vm-paths.out"; bad "vm paths"; fi
  step "NVMe/TCP TLS 1.3 with kTLS: s_client and pinion perf --tls vs Pinion (VM, ~1 min)"
  if BENCH_TIME=2 tests/vm/run-e2e.sh tls "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-tls.out" 2>&1; then tail -n 4 "$LOG/vm-tls.out"; ok "vm tls"; else tail -n 60 "$LOG/vm-tls.out"; bad "vm tls"; fi
  # NVMe DH-HMAC-CHAP needs the 6.12 kernel (6.1 has no NVMe authentication):
  # run-e2e.sh boots it from its own cache, /tmp/guest-run-cache-6.12
  step "NVMe DH-HMAC-CHAP, kernel host (6.12) vs the kernel's nvmet (reference)"
  if tests/vm/run-e2e.sh auth-nvmet >"$LOG/vm-auth-nvmet.out" 2>&1; then tail -n 2 "$LOG/vm-auth-nvmet.out"; ok "vm e2e auth-nvmet"; else tail -n 60 "$LOG/vm-auth-nvmet.out"; bad "vm e2e auth-nvmet"; fi
  step "NVMe DH-HMAC-CHAP, kernel host (6.12) vs Pinion"
  if tests/vm/run-e2e.sh auth "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-auth.out" 2>&1; then tail -n 2 "$LOG/vm-auth.out"; ok "vm e2e auth"; else tail -n 80 "$LOG/vm-auth.out"; bad "vm e2e auth"; fi
  step "durability: Pinion SIGKILLed mid-write, then a power cut of the guest; kernel hosts (NVMe/TCP, iSCSI) check every acknowledged block (VM, ~4-5 min)"
  if tests/vm/durability.sh "$CARGO_TARGET_DIR/release/pinion" "$CARGO_TARGET_DIR/debug/examples/durable_io" >"$LOG/vm-durability.out" 2>&1; then tail -n 10 "$LOG/vm-durability.out"; ok "vm durability"; else tail -n 80 "$LOG/vm-durability.out"; bad "vm durability"; fi
  step "pinion perf --verify vs the kernel's nvmet (VM)"
  if tests/vm/perf-nvmet.sh "$CARGO_TARGET_DIR/release/pinion" >"$LOG/vm-perf-nvmet.out" 2>&1; then tail -n 2 "$LOG/vm-perf-nvmet.out"; ok "vm perf nvmet"; else tail -n 60 "$LOG/vm-perf-nvmet.out"; bad "vm perf nvmet"; fi
fi

step "summary"
for f in "${failures[@]}"; do echo "failed: $f"; done
echo "tests: $passed passed, $failed failed"
((failed == 0))
