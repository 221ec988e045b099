#!/bin/bash
# `pinion perf` against the Linux kernel's nvmet-tcp target, inside the
# initiator VM (nvmet lives in the guest kernel; guest loopback only).
#
#   tests/vm/perf-nvmet.sh [PINION_BIN]     # host: boots the guest, runs itself in it
#
# In the guest: exports a 64 MiB file on tmpfs (buffered_io) as
# nqn.2026-11.io.pinion:perf on 127.0.0.1:4420, then runs pinion perf with
# --verify over every transfer path (in-capsule and R2T writes, several
# queues, header+data digests, with and without SQ flow control, i.e. with
# and without the C2HData SUCCESS flag), checks the JSON report, corrupts a
# block in the backing file and expects the run to fail naming that LBA.
# The guest runs under TCG (a few thousand IOPS): runs are bounded by --ios.
# Last line of a good run: "PERF-NVMET: PASS". Transcript:
# build/vm-e2e/perf-nvmet.log.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if [[ -z ${GUEST_RUN:-} ]]; then
  bin=${1:-}
  if [[ -z $bin ]]; then
    for b in "$REPO/build/cargo/release/pinion" "$REPO/build/cargo/debug/pinion"; do
      [[ -x $b ]] && { bin=$b; break; }
    done
  fi
  [[ -n $bin && -x $bin ]] || { echo "perf-nvmet: no pinion binary (build it, or pass its path)" >&2; exit 2; }
  bin=$(realpath -e -- "$bin")
  OUT=${VM_E2E_OUT:-$REPO/build/vm-e2e}
  mkdir -p "$OUT"
  opts=(--timeout "${VM_E2E_TIMEOUT:-600}" --cwd "$REPO" --console "$OUT/perf-nvmet.console.log")
  [[ $REPO == /tmp/* || $bin == /tmp/* ]] && opts+=(--host-tmp)
  "$HERE/guest-run" "${opts[@]}" -- "$HERE/perf-nvmet.sh" "$bin" 2>&1 | tee "$OUT/perf-nvmet.log"
  exit "${PIPESTATUS[0]}"
fi

# ---- in the guest -----------------------------------------------------------------
set -e
exec 2>&1
PINION=$1
NQN=nqn.2026-11.io.pinion:perf
PORT=4420
IMG=/dev/shm/perf-nvmet.img
NVMET=/sys/kernel/config/nvmet
URL=nvme-tcp://127.0.0.1:$PORT/$NQN/1
WORK=/dev/shm/perf-nvmet
mkdir -p "$WORK"

cleanup() {
  local rc=$?
  set +e
  rm -f "$NVMET/ports/1/subsystems/$NQN"
  rmdir "$NVMET/ports/1" 2>/dev/null
  [[ -d $NVMET/subsystems/$NQN/namespaces/1 ]] && echo 0 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
  rmdir "$NVMET/subsystems/$NQN/namespaces/1" "$NVMET/subsystems/$NQN" 2>/dev/null
  ((rc)) && echo "PERF-NVMET: FAIL (rc=$rc)"
  exit $rc
}
trap cleanup EXIT

modprobe nvmet-tcp
truncate -s 64M "$IMG"
mkdir "$NVMET/subsystems/$NQN"
echo 1 >"$NVMET/subsystems/$NQN/attr_allow_any_host"
mkdir "$NVMET/subsystems/$NQN/namespaces/1"
echo -n "$IMG" >"$NVMET/subsystems/$NQN/namespaces/1/device_path"
echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/buffered_io"
echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
mkdir "$NVMET/ports/1"
echo tcp >"$NVMET/ports/1/addr_trtype"
echo ipv4 >"$NVMET/ports/1/addr_adrfam"
echo 127.0.0.1 >"$NVMET/ports/1/addr_traddr"
echo "$PORT" >"$NVMET/ports/1/addr_trsvcid"
ln -s "$NVMET/subsystems/$NQN" "$NVMET/ports/1/subsystems/$NQN"
echo "kernel $(uname -r): nvmet-tcp exports $IMG as $NQN on 127.0.0.1:$PORT"

# perf NAME EXPECTED_RC ARGS...: runs pinion perf --json, keeps the report in $WORK/NAME.json
perf() {
  local name=$1 want=$2 rc=0; shift 2
  echo
  echo "\$ pinion perf $URL $* --json"
  timeout -k 5 240 "$PINION" perf "$URL" "$@" --json >"$WORK/$name.json" || rc=$?
  grep -E '"(target|ios|iops|mib_s|errors|fatal|mismatches|blocks_checked|p99_us)"' "$WORK/$name.json" | sed 's/^ */  /'
  if ((rc != want)); then
    echo "check: $name exit status $rc, expected $want: FAILED"
    cat "$WORK/$name.json"
    return 1
  fi
  echo "check: $name exit status $rc: ok"
}
field() { awk -v k="\"$1\":" '$1 == k {gsub(/[,"]/, "", $2); print $2; exit}' "$WORK/$2.json"; }
expect() { # expect DESCRIPTION VALUE WANTED
  if [[ $2 == "$3" ]]; then echo "check: $1 = $2: ok"; else echo "check: $1 = '$2', expected '$3': FAILED"; return 1; fi
}

perf stamp 0 --rw write --bs 128k --qd 8 --range 0-16MiB --verify --ios 128
expect "stamp: writes" "$(field write_ios stamp)" 128
perf inline 0 --rw randrw --bs 4k --qd 16 --range 0-16MiB --verify --ios 2000
perf mixed 0 --rw randrw --bs 4k-128k --qd 16 --queues 2 --range 0-16MiB --verify --ios 1500
perf digests 0 --rw randrw --bs 4k-64k --qd 8 --digest header,data --range 0-16MiB --verify --ios 1000
perf sqflow 0 --rw randrw --bs 4k-64k --qd 8 --sqflow --range 0-16MiB --verify --ios 1000
for r in inline mixed digests sqflow; do
  expect "$r: errors" "$(field errors $r)" 0
  expect "$r: mismatches" "$(field mismatches $r)" 0
done
expect "JSON protocol" "$(field protocol inline)" nvme-tcp
expect "JSON ios" "$(field ios inline)" 2000

# corrupt one block behind nvmet's back (buffered_io: the page cache is shared)
LBA_SIZE=$(field lba_size stamp)
OFF=$((3000 * 4096 + 100))
WANT=$((OFF / LBA_SIZE))
echo
echo "corrupting byte $OFF of $IMG (LBA $WANT of $LBA_SIZE bytes)"
printf '\xa5' | dd of="$IMG" bs=1 seek="$OFF" conv=notrunc status=none
perf corrupt 1 --rw read --bs 64k --qd 8 --range 0-16MiB --verify --ios 256
expect "corrupt: mismatches" "$(field mismatches corrupt)" 1
expect "corrupt: LBA reported" "$(field lba corrupt)" "$WANT"

echo
echo "PERF-NVMET: PASS"
