#!/usr/bin/env bash
# libiscsi's conformance suite (iscsi-test-cu, every test) against Pinion and
# against tgtd (Debian's `tgt`), side by side, on the same kind of backing:
# a file of the same size on /dev/shm, two LUNs each. Pinion runs the suite
# twice, with 4096-byte blocks (its default) and with 512-byte blocks; tgtd
# runs it once with its 512-byte blocks.
#
#   tests/iscsi-conformance.sh [PINION_BIN]
#
# Prints passed / failed / skipped per target and block size (a test that
# prints "[SKIPPED]" counts as skipped, not passed, although CUnit calls it
# passed) and the names of failing tests, and exits non-zero if Pinion fails
# any test at either block size or, at either, really passes fewer tests than
# tgtd.  Needs root for tgtd (run scripts/install-test-deps.sh first:
# libiscsi-bin, tgt).
#
# environment: CONF_OUT (default build/iscsi-conformance), PINION_PORT
#   (3272), TGTD_PORT (3261), TGTD_CONTROL_PORT (1), LUN_SIZE (default 128M),
#   SKIP_TGTD=1 (Pinion only; the comparison is then skipped),
#   BLOCK_SIZE (run Pinion at this block size only; default: 4096, then 512),
#   TEST_FILTER (a -t expression instead of ALL, for debugging),
#   VOLUMES_TOML (a file with Pinion's two [[volume]] tables, lun0 and lun1,
#   instead of the /dev/shm files: tests/rbd.sh runs the suite on RBD images)
#
# Results go to $CONF_OUT: per Pinion run pinion-bsN.{log,counts,failed,
# skipped,notes} and pinion-bsN-server.log, for tgtd tgtd.*; pinion.counts /
# pinion.failed sum Pinion's runs (failed tests prefixed with their block
# size), pinion.log / pinion-server.log hold their logs one after the other.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [[ -z $BIN ]]; then
  for b in "$REPO/build/cargo/release/pinion" "$REPO/build/cargo/debug/pinion"; do
    [[ -x $b ]] && { BIN=$b; break; }
  done
fi
[[ -n $BIN && -x $BIN ]] || { echo "iscsi-conformance: no pinion binary (build it first)" >&2; exit 2; }
command -v iscsi-test-cu >/dev/null || { echo "iscsi-conformance: iscsi-test-cu missing (apt-get install libiscsi-bin)" >&2; exit 2; }

OUT=${CONF_OUT:-$REPO/build/iscsi-conformance}
PPORT=${PINION_PORT:-3272}
TPORT=${TGTD_PORT:-3261}
TCTL=${TGTD_CONTROL_PORT:-1}
SIZE=${LUN_SIZE:-128M}
IQN=iqn.2026-11.io.pinion:conformance
TIQN=iqn.2026-11.io.tgt:conformance
SHM=/dev/shm/pinion-conformance.$$
mkdir -p "$OUT" "$SHM"

pinion_pid= tgtd_pid=
wait_port() { # wait_port PORT SECONDS
  local n=$(($2 * 10))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1
  done
}
stop_pid() { # TERM, wait up to 10 s, then KILL; only our own PIDs
  local pid=$1 n=100
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && ((n-- > 0)); do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_tgtd() {
  [[ -n $tgtd_pid ]] || return 0
  # tgtd ignores SIGTERM while it has targets: take them down first
  tgtadm -C "$TCTL" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
  tgtadm -C "$TCTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  tgtadm -C "$TCTL" --op delete --mode system >/dev/null 2>&1 || true
  stop_pid "$tgtd_pid"
  tgtd_pid=
}
cleanup() {
  [[ -n $pinion_pid ]] && stop_pid "$pinion_pid"
  stop_tgtd
  rm -rf "$SHM"
}
trap cleanup EXIT

# run_suite NAME URL -> $OUT/NAME.log, $OUT/NAME.counts, $OUT/NAME.failed
run_suite() {
  local name=$1 url=$2 filter=${TEST_FILTER:-ALL}
  echo "== iscsi-test-cu on $name: $url ($filter)"
  local t=$SECONDS
  # -d: destructive tests allowed; -S: SANITIZE tests; the second URL (same
  # LU) drives the multipath tests; timeout bounds a hung target
  timeout -k 10 1500 iscsi-test-cu -d -S -t "$filter" "$url" "$url" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc, $((SECONDS - t)) s, log $OUT/$name.log"
  python3 - "$OUT/$name.log" "$OUT/$name" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
out = sys.argv[2]
suite, results, notes = None, [], []
# "Suite: X" starts a suite; "  Test: Y ..." a test whose verdict
# ("passed" / "FAILED") follows, possibly after [SKIPPED] notes
for block in re.split(r"(?m)^(?=Suite: |  Test: )", text):
    m = re.match(r"Suite: (\S+)", block)
    if m:
        suite = m.group(1)
        continue
    m = re.match(r"  Test: (\S+) \.\.\.", block)
    if not m:
        continue
    body = block[m.end():]
    # CUnit's verdict is the first bare "passed"/"FAILED"; libiscsi's own
    # messages are bracketed ("[FAILED] ...", "[SKIPPED] ..."), and the
    # ones after the verdict come from suite teardown
    vm = re.search(r"(?<!\[)\b(passed|FAILED)\b(?!\])", body)
    if vm is None:
        v = "failed"  # no verdict: the run died in this test
    elif vm.group(1) == "FAILED":
        v = "failed"
    elif "[SKIPPED]" in body[:vm.start()]:
        v = "skipped"
    else:
        v = "passed"
    if vm is not None and "[FAILED]" in body[vm.end():]:
        notes.append("%s.%s: after the verdict: %s" % (suite, m.group(1), body[vm.end():].strip().splitlines()[0]))
    results.append((f"{suite}.{m.group(1)}", v))
count = {k: sum(1 for _, v in results if v == k) for k in ("passed", "failed", "skipped")}
open(out + ".counts", "w").write("%d %d %d\n" % (count["passed"], count["failed"], count["skipped"]))
open(out + ".failed", "w").write("".join(n + "\n" for n, v in results if v == "failed"))
open(out + ".notes", "w").write("".join(n + "\n" for n in notes))
open(out + ".skipped", "w").write("".join(n + "\n" for n, v in results if v == "skipped"))
print("   %s: %d tests: %d passed, %d failed, %d skipped" % (out.rsplit("/", 1)[-1], len(results), count["passed"], count["failed"], count["skipped"]))
EOF
}

# ---- Pinion ----------------------------------------------------------------
# run_pinion BS: Pinion with both LUNs at BS-byte blocks -> $OUT/pinion-bsBS.*
run_pinion() {
  local bs=$1 name=pinion-bs$1
  rm -f "$SHM"/pinion-lun*.img
  if [[ -n ${VOLUMES_TOML:-} ]]; then
    # the caller's two [[volume]] tables "lun0" and "lun1" (e.g. RBD images,
    # tests/rbd.sh); block_size is theirs
    { printf '[nvme_tcp]\nlisten = []\n[iscsi]\nlisten = ["127.0.0.1:%s"]\n[log]\nlevel = "info"\n' "$PPORT"
      cat "$VOLUMES_TOML"
      printf '[[iscsi_target]]\niqn = "%s"\nluns = ["lun0", "lun1"]\n' "$IQN"; } >"$OUT/$name.toml"
  else
  cat >"$OUT/$name.toml" <<EOF
[nvme_tcp]
listen = []
[iscsi]
listen = ["127.0.0.1:$PPORT"]
[log]
level = "info"
[[volume]]
name = "lun0"
backend = "file"
path = "$SHM/pinion-lun0.img"
size = "$SIZE"
block_size = $bs
io_mode = "buffered"
[[volume]]
name = "lun1"
backend = "file"
path = "$SHM/pinion-lun1.img"
size = "$SIZE"
block_size = $bs
io_mode = "buffered"
[[iscsi_target]]
iqn = "$IQN"
luns = ["lun0", "lun1"]
EOF
  fi
  setsid "$BIN" serve --config "$OUT/$name.toml" >"$OUT/$name-server.log" 2>&1 </dev/null &
  pinion_pid=$!
  wait_port "$PPORT" 30 || { echo "pinion did not listen on $PPORT"; tail -n 30 "$OUT/$name-server.log"; exit 1; }
  run_suite "$name" "iscsi://127.0.0.1:$PPORT/$IQN/0"
  if ! kill -0 "$pinion_pid" 2>/dev/null; then
    echo "pinion died during the suite ($bs-byte blocks):"; tail -n 50 "$OUT/$name-server.log"; exit 1
  fi
  stop_pid "$pinion_pid"; pinion_pid=
  if grep -q 'panicked' "$OUT/$name-server.log"; then
    echo "pinion panicked ($bs-byte blocks):"; grep -A5 panicked "$OUT/$name-server.log" | head -n 40; exit 1
  fi
}

BLOCK_SIZES=${BLOCK_SIZE:-4096 512}
for bs in $BLOCK_SIZES; do run_pinion "$bs"; done
# summed over the block sizes, for callers that read one set of counts
: >"$OUT/pinion.failed"
sp=0 sf=0 ss=0
for bs in $BLOCK_SIZES; do
  read -r p f k <"$OUT/pinion-bs$bs.counts"
  sp=$((sp + p)) sf=$((sf + f)) ss=$((ss + k))
  sed "s/^/bs$bs: /" "$OUT/pinion-bs$bs.failed" >>"$OUT/pinion.failed"
done
echo "$sp $sf $ss" >"$OUT/pinion.counts"
# and the runs' logs one after the other under the names of one run
for bs in $BLOCK_SIZES; do cat "$OUT/pinion-bs$bs.log"; done >"$OUT/pinion.log"
for bs in $BLOCK_SIZES; do cat "$OUT/pinion-bs$bs-server.log"; done >"$OUT/pinion-server.log"

# ---- tgtd ------------------------------------------------------------------
if [[ ${SKIP_TGTD:-} != 1 ]]; then
  truncate -s "$SIZE" "$SHM/tgt-lun1.img" "$SHM/tgt-lun2.img"
  mkdir -p /run/tgtd /var/run/tgtd 2>/dev/null || true
  setsid tgtd -f --iscsi "portal=127.0.0.1:$TPORT" -C "$TCTL" >"$OUT/tgtd-server.log" 2>&1 </dev/null &
  tgtd_pid=$!
  n=200; until tgtadm -C "$TCTL" --op show --mode sys >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || { cat "$OUT/tgtd-server.log"; exit 1; }; sleep 0.1; done
  tgtadm -C "$TCTL" --lld iscsi --op new --mode target --tid 1 -T "$TIQN"
  # tgtd's LUN 0 is its controller LUN; disks are LUN 1 and 2
  tgtadm -C "$TCTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$SHM/tgt-lun1.img"
  tgtadm -C "$TCTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 -b "$SHM/tgt-lun2.img"
  tgtadm -C "$TCTL" --lld iscsi --op bind --mode target --tid 1 -I ALL
  wait_port "$TPORT" 30 || { echo "tgtd did not listen on $TPORT"; exit 1; }
  run_suite tgtd "iscsi://127.0.0.1:$TPORT/$TIQN/1"
  stop_tgtd
fi

# ---- verdict -----------------------------------------------------------------
echo
printf '%-12s %8s %8s %8s\n' target passed failed skipped
rc=0 tp=
if [[ -f $OUT/tgtd.counts && ${SKIP_TGTD:-} != 1 ]]; then
  read -r tp tf ts <"$OUT/tgtd.counts"
fi
for bs in $BLOCK_SIZES; do
  read -r pp pf ps <"$OUT/pinion-bs$bs.counts"
  printf '%-12s %8d %8d %8d\n' "pinion/$bs" "$pp" "$pf" "$ps"
  if [[ -n $tp ]] && ((pp < tp)); then echo "FAIL: Pinion at $bs-byte blocks passes fewer tests ($pp) than tgtd ($tp)"; rc=1; fi
  if ((pf > 0)); then
    echo "FAIL: Pinion at $bs-byte blocks failed $pf test(s):"; sed 's/^/  /' "$OUT/pinion-bs$bs.failed"; rc=1
  fi
  ((pp > 0)) || { echo "FAIL: no test passed on Pinion at $bs-byte blocks (did the suite run?)"; rc=1; }
done
if [[ -n $tp ]]; then
  printf '%-12s %8d %8d %8d\n' tgtd/512 "$tp" "$tf" "$ts"
  echo "tgtd failed: $(tr '\n' ' ' <"$OUT/tgtd.failed")"
fi
((rc == 0)) && echo "ISCSI-CONFORMANCE: PASS"
exit $rc
