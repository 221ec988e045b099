#!/usr/bin/env bash
# The RBD backend against a real Ceph cluster: a one-monitor, one-OSD
# (memstore) cluster from Debian's packages is started for the run
# (scripts/ceph-up.sh) and torn down at the end. If it cannot start, the
# test FAILS (it is never skipped).
#
#   tests/rbd.sh [PINION_BIN [NVME_AEN_BIN]]   (root not needed; run it under
#                                     flock /tmp/pinion-heavy.lock: fixed ports)
#   NVME_AEN_BIN: tests/examples/nvme_aen.rs (cargo build -p pinion-tests
#   --example nvme_aen); default build/cargo/{debug,release}/examples/nvme_aen
#
# Checks, each with independent clients:
#   1. qemu-img (libiscsi driver) and qemu-io write through Pinion's iSCSI
#      LUN; `rbd export` of the image is byte-identical to what they wrote.
#   2. `rbd import` of random data; read back through Pinion by qemu-img:
#      identical; the volume is read_only and a write to it is refused.
#   3. `pinion perf --verify` over NVMe/TCP on an RBD namespace: clean.
#   4. OSD stopped mid-I/O on a volume without rbd_timeout: commands wait,
#      the connection survives, nothing fails, every block verifies.
#   5. OSD stopped mid-I/O on a volume with rbd_timeout = 3: commands fail
#      within the timeout, the connection survives, reads resume once the
#      OSD is back (Pinion's librbd request counter moves again).
#   6. the image grown with `rbd resize` while served: Pinion notices
#      (SCSI: CAPACITY DATA HAS CHANGED queued), READ CAPACITY and Identify
#      Namespace say the new size, and an NVMe host connected before the
#      resize (tests/examples/nvme_aen.rs, with an Asynchronous Event Request
#      parked) gets the Namespace Attribute Changed event and finds the
#      namespace in the Changed Namespace List.
#   7. libiscsi's iscsi-test-cu on two RBD LUNs (tests/iscsi-conformance.sh
#      with VOLUMES_TOML), at 4096- and at 512-byte blocks: 0 failures; the ZeroBlocks tests send zero-length
#      READs/WRITEs, which Pinion answers without calling librbd.
#
# environment: RBD_OUT (default build/rbd-test), RBD_PORT (iSCSI, 3275),
#   RBD_NVME_PORT (4425), RBD_METRICS_PORT (9475), SKIP_CONFORMANCE=1,
#   ONLY_CONFORMANCE=1 (step 7 alone)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [[ -z $BIN ]]; then
  for b in "$REPO/build/cargo/release/pinion" "$REPO/build/cargo/debug/pinion"; do
    [[ -x $b ]] && { BIN=$b; break; }
  done
fi
[[ -n $BIN && -x $BIN ]] || { echo "rbd: no pinion binary (build it first)" >&2; exit 2; }
AEN=${2:-}
if [[ -z $AEN ]]; then
  for b in "$REPO/build/cargo/debug/examples/nvme_aen" "$REPO/build/cargo/release/examples/nvme_aen"; do
    [[ -x $b ]] && { AEN=$b; break; }
  done
fi
[[ -n $AEN && -x $AEN ]] || { echo "rbd: no nvme_aen (cargo build -p pinion-tests --example nvme_aen)" >&2; exit 2; }
for t in qemu-img qemu-io iscsi-test-cu rbd ceph-mon ceph-osd python3 curl; do
  command -v "$t" >/dev/null || { echo "rbd: $t missing (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
done

OUT=${RBD_OUT:-$REPO/build/rbd-test}
IPORT=${RBD_PORT:-3275}
NPORT=${RBD_NVME_PORT:-4425}
MPORT=${RBD_METRICS_PORT:-9475}
IQN=iqn.2026-11.io.pinion:rbd
NQN=nqn.2026-11.io.pinion:rbd
rm -rf "$OUT"; mkdir -p "$OUT"
CEPH_DIR=$(mktemp -d /tmp/pinion-ceph.XXXXXX)
pinion_pid=
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "--- ok: $*"; }
bad() { failed=$((failed + 1)); echo "--- FAILED: $*"; }
stop_pid() {
  local pid=$1 n=100
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && ((n-- > 0)); do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  [[ -n $pinion_pid ]] && stop_pid "$pinion_pid"
  "$REPO/scripts/ceph-down.sh" "$CEPH_DIR"
}
trap cleanup EXIT
wait_port() {
  local n=$(($2 * 10))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1
  done
}

# ---- the cluster -------------------------------------------------------------
t0=$SECONDS
if ! "$REPO/scripts/ceph-up.sh" "$CEPH_DIR" rbd >"$OUT/ceph-up.out" 2>&1; then
  cat "$OUT/ceph-up.out"; echo "FAILED: the Ceph cluster did not start"; exit 1
fi
export CEPH_CONF=$CEPH_DIR/ceph.conf
echo "ceph cluster up in $((SECONDS - t0)) s ($CEPH_CONF)"
R() { timeout 120 rbd "$@" 2>>"$OUT/rbd-cli.log"; }
OSD_PID() { cat "$CEPH_DIR/run/osd.0.pid"; }
osd_stop() { local p; p=$(OSD_PID); kill -TERM "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; }
osd_start() { ceph-osd -c "$CEPH_CONF" -i 0 2>>"$OUT/osd-restart.log"; }

vol() { # vol NAME IMAGE [extra lines]
  printf '[[volume]]\nname = "%s"\nbackend = "rbd"\npool = "rbd"\nimage = "%s"\nceph_conf = "%s"\nkeyring = "%s"\nclient = "admin"\n%s\n' \
    "$1" "$2" "$CEPH_CONF" "$CEPH_DIR/keyring" "${3:-}"
}
if [[ ${ONLY_CONFORMANCE:-} != 1 ]]; then
# images: a (written by qemu), ro (imported), n (perf + OSD stop, waits),
# f (OSD stop, fails after rbd_timeout), g (grown while served)
head -c 64M /dev/urandom >"$OUT/import.bin"
R create --size 256M rbd/a && R create --size 256M rbd/n && R create --size 256M rbd/f &&
  R create --size 64M rbd/g && R import "$OUT/import.bin" rbd/ro >/dev/null ||
  { echo "FAILED: creating images"; cat "$OUT/rbd-cli.log"; exit 1; }

{
  printf '[nvme_tcp]\nlisten = ["127.0.0.1:%s"]\n[iscsi]\nlisten = ["127.0.0.1:%s"]\n' "$NPORT" "$IPORT"
  printf '[metrics]\nlisten = "127.0.0.1:%s"\n[management]\nsocket = "%s/ctl.sock"\n[log]\nlevel = "info"\n' "$MPORT" "$OUT"
  vol a a; vol ro ro 'read_only = true'; vol n n; vol f f 'rbd_timeout = 3'; vol g g
  printf '[[subsystem]]\nnqn = "%s"\nnamespaces = ["n", "f", "g"]\nhosts = ["*"]\n' "$NQN"
  printf '[[iscsi_target]]\niqn = "%s"\nluns = ["a", "ro", "f", "g"]\n' "$IQN"
} >"$OUT/pinion.toml"
setsid "$BIN" serve --config "$OUT/pinion.toml" >"$OUT/pinion.log" 2>&1 </dev/null &
pinion_pid=$!
wait_port "$IPORT" 60 && wait_port "$NPORT" 10 || { tail -n 30 "$OUT/pinion.log"; echo "FAILED: pinion did not listen"; exit 1; }
LUN() { echo "iscsi://127.0.0.1:$IPORT/$IQN/$1"; }
metric() { # metric 'NAME{labels}' -> value
  curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v k="$1" '$1 == k { print $2 }'
}
ok_reads() { # successful librbd reads of volume $1 so far
  local n e
  n=$(metric "pinion_rbd_requests_total{volume=\"$1\",op=\"read\"}")
  e=$(metric "pinion_rbd_request_errors_total{volume=\"$1\",op=\"read\"}")
  echo $((${n%.*} - ${e%.*}))
}
slow_reads() { # librbd reads of volume $1 that took more than 5 s (failed ones included)
  curl -s "http://127.0.0.1:$MPORT/metrics" >"$OUT/metrics-slow.txt"
  python3 - "$1" "$OUT/metrics-slow.txt" <<'EOF'
import re, sys
vol, le5, count = sys.argv[1], None, None
for line in open(sys.argv[2]):
    if 'volume="%s",op="read"' % vol not in line:
        continue
    if line.startswith("pinion_rbd_latency_seconds_bucket") and re.search(r'le="5(\.0)?"', line):
        le5 = float(line.split()[-1])
    if line.startswith("pinion_rbd_latency_seconds_count"):
        count = float(line.split()[-1])
print(int(count - le5) if le5 is not None and count is not None else "unknown")
EOF
}
perf_json() { # perf_json FILE KEY... -> prints fields
  python3 - "$@" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
v = d.get("verify") or {}
out = {"errors": d["errors"], "fatal": d["fatal"], "ios": d["ios"], "max_us": d["latency"]["max_us"],
       "mismatches": v.get("mismatches", 0), "checked": v.get("blocks_checked", 0)}
print(" ".join(str(out[k]) for k in sys.argv[2:]))
EOF
}

# ---- 1. qemu writes through Pinion, rbd export reads ---------------------------
head -c 8M /dev/urandom >"$OUT/w.bin"
cp "$OUT/w.bin" "$OUT/expect-a.bin"; truncate -s 256M "$OUT/expect-a.bin"
python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(100<<20); f.write(b'\xab'*(1<<20))" "$OUT/expect-a.bin"
if timeout 120 qemu-img convert -n -f raw -O raw "$OUT/w.bin" "$(LUN 0)" 2>"$OUT/qemu.err" &&
  timeout 60 qemu-io -f raw -c "write -P 0xab 100M 1M" "$(LUN 0)" >>"$OUT/qemu.err" 2>&1 &&
  R export rbd/a "$OUT/export-a.bin" >/dev/null && cmp "$OUT/export-a.bin" "$OUT/expect-a.bin"; then
  ok "qemu-img/qemu-io wrote 9 MiB through Pinion (iSCSI); rbd export is identical"
else
  bad "qemu-img write / rbd export"; tail -n 5 "$OUT/qemu.err"
fi
rm -f "$OUT/export-a.bin" "$OUT/expect-a.bin"

# ---- 2. rbd import, qemu reads through Pinion; read_only -------------------------
if timeout 120 qemu-img convert -f raw -O raw "$(LUN 1)" "$OUT/read-ro.bin" 2>"$OUT/qemu.err" && cmp "$OUT/read-ro.bin" "$OUT/import.bin"; then
  ok "rbd import'ed 64 MiB read back identically through Pinion (iSCSI, qemu-img)"
else
  bad "rbd import / read through Pinion"; tail -n 5 "$OUT/qemu.err"
fi
if timeout 60 qemu-io -f raw -c "write -P 0x11 0 4k" "$(LUN 1)" >"$OUT/qemu-ro.out" 2>&1 && ! grep -qi 'error\|fail\|denied\|protected' "$OUT/qemu-ro.out"; then
  bad "a write to the read_only RBD volume succeeded"; cat "$OUT/qemu-ro.out"
elif R export rbd/ro - 2>/dev/null | cmp -s - "$OUT/import.bin"; then
  ok "read_only: the write was refused ($(grep -oiE 'write protected|write failed.*' "$OUT/qemu-ro.out" | head -n 1)) and the image is unchanged"
else
  bad "read_only image changed"
fi
rm -f "$OUT/read-ro.bin"

# ---- 3. pinion perf --verify over NVMe/TCP --------------------------------------
NS_N="nvme-tcp://127.0.0.1:$NPORT/$NQN/1"
NS_F="nvme-tcp://127.0.0.1:$NPORT/$NQN/2"
"$BIN" perf "$NS_N" --rw randrw --bs 4k-128k --qd 16 --time 15 --verify --json >"$OUT/perf.json" 2>"$OUT/perf.err"
rc=$?
read -r e f ios mm ck < <(perf_json "$OUT/perf.json" errors fatal ios mismatches checked 2>/dev/null || echo "x x x x x")
if ((rc == 0)) && [[ $e == 0 && $f == None && $mm == 0 ]]; then
  ok "pinion perf --verify NVMe/TCP randrw 4k-128k QD16 15 s: $ios I/Os, $ck blocks verified, 0 errors"
else
  bad "pinion perf --verify (rc=$rc errors=$e fatal=$f mismatches=$mm)"; tail -n 5 "$OUT/perf.err"
fi

# ---- 4. OSD down on a volume that waits -------------------------------------------
"$BIN" perf "$NS_N" --rw randrw --bs 4k-64k --qd 8 --time 30 --verify --seed 2 --json >"$OUT/perf-wait.json" 2>"$OUT/perf-wait.err" &
perf=$!
sleep 8; osd_stop; echo "osd.0 stopped"; sleep 8; osd_start; echo "osd.0 restarted"
wait "$perf"; rc=$?
read -r e f ios mm max < <(perf_json "$OUT/perf-wait.json" errors fatal ios mismatches max_us 2>/dev/null || echo "x x x x 0")
if ((rc == 0)) && [[ $e == 0 && $f == None && $mm == 0 ]] && python3 -c "import sys; sys.exit(float(sys.argv[1]) < 5e6)" "$max"; then
  ok "OSD stopped 8 s mid-I/O, no rbd_timeout: commands waited (max latency $((${max%.*} / 1000)) ms), 0 errors, every block verifies, $ios I/Os on one connection"
else
  bad "OSD down, waiting volume (rc=$rc errors=$e fatal=$f mismatches=$mm max_us=$max)"; tail -n 5 "$OUT/perf-wait.err"
fi

# ---- 5. OSD down on a volume with rbd_timeout = 3 ---------------------------------
timeout 120 qemu-io -f raw -c "write -P 0x5a 0 64M" "$(LUN 2)" >/dev/null 2>&1 # something to read
"$BIN" perf "$NS_F" --rw randread --bs 4k --qd 8 --time 35 --range 0-64MiB --json >"$OUT/perf-fail.json" 2>"$OUT/perf-fail.err" &
perf=$!
sleep 6; osd_stop; echo "osd.0 stopped"; sleep 12; osd_start; echo "osd.0 restarted"
sleep 6; before=$(ok_reads f)
sleep 4; after=$(ok_reads f)
wait "$perf"; rc=$?
slow=$(slow_reads f)
read -r e f ios < <(perf_json "$OUT/perf-fail.json" errors fatal ios 2>/dev/null || echo "x x x")
if [[ $e != x && $e -gt 0 && $f == None && $slow == 0 ]] && ((after > before)); then
  ok "OSD stopped 12 s mid-I/O, rbd_timeout = 3: $e commands failed, none took over 5 s, the connection stayed, reads resumed ($before -> $after successful librbd reads in 4 s)"
else
  bad "OSD down, rbd_timeout volume (rc=$rc errors=$e fatal=$f reads over 5 s: $slow, successful reads $before -> $after)"; tail -n 5 "$OUT/perf-fail.err"
fi
grep -c 'rbd request' "$OUT/pinion.log" | sed 's/^/  rbd warnings in the server log: /'

# ---- 6. image growth ----------------------------------------------------------
cap() { timeout 30 iscsi-readcapacity16 "$(LUN 3)" 2>&1; }
cap >"$OUT/cap-before.out"
# an NVMe host connected before the growth, waiting for the event
"$AEN" "127.0.0.1:$NPORT" "$NQN" 3 20 >"$OUT/aen.out" 2>&1 &
aen=$!
for _ in $(seq 100); do grep -q '^ready' "$OUT/aen.out" && break; sleep 0.1; done
R resize --size 96M rbd/g >/dev/null
wait "$aen"; aen_rc=$?
# the first command after the growth gets the unit attention (libiscsi's
# tools log in afresh, so ask the server log and the new capacity)
cap >"$OUT/cap-after.out"
# NVMe: a new controller's Identify Namespace has the new size
"$BIN" perf "nvme-tcp://127.0.0.1:$NPORT/$NQN/3" --rw read --ios 16 --json >"$OUT/perf-grown.json" 2>/dev/null
nblocks=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["blocks"])' "$OUT/perf-grown.json" 2>/dev/null)
if grep -q 'RETURNED LOGICAL BLOCK ADDRESS:16383' "$OUT/cap-before.out" && grep -q 'RETURNED LOGICAL BLOCK ADDRESS:24575' "$OUT/cap-after.out" &&
  grep -q 'capacity changed' "$OUT/pinion.log" && [[ $nblocks == 24576 ]] &&
  ((aen_rc == 0)) && grep -q '^before nsze=16384$' "$OUT/aen.out" && grep -q '^aen dw0=0x00040002 changed=\[3\] nsze=24576$' "$OUT/aen.out"; then
  ok "rbd resize 64 -> 96 MiB while served: noticed ($(grep -m1 -o 'capacity changed.*' "$OUT/pinion.log" | head -c 120)), READ CAPACITY and NVMe Identify Namespace say 96 MiB; the connected NVMe host got the event ($(grep '^aen' "$OUT/aen.out"))"
else
  bad "image growth not noticed (NVMe blocks: $nblocks, nvme_aen rc $aen_rc)"; cat "$OUT/cap-before.out" "$OUT/cap-after.out" "$OUT/aen.out"
fi

if kill -0 "$pinion_pid" 2>/dev/null && ! grep -q panicked "$OUT/pinion.log"; then
  ok "pinion alive, no panic"
else
  bad "pinion died or panicked"; tail -n 30 "$OUT/pinion.log"
fi
curl -s "http://127.0.0.1:$MPORT/metrics" | grep -E '^pinion_rbd_(in_flight|requests_total)' >"$OUT/metrics.txt"
stop_pid "$pinion_pid"; pinion_pid=

fi # ONLY_CONFORMANCE

# ---- 7. iscsi-test-cu on RBD LUNs ----------------------------------------------
if [[ ${SKIP_CONFORMANCE:-} != 1 ]]; then
  # 4096-byte blocks, and 512 (where COMPARE AND WRITE of one block is
  # librbd's own compare-and-write); fresh images for each
  for bs in 4096 512; do
    R create --size 128M "rbd/c0-$bs" && R create --size 128M "rbd/c1-$bs"
    { vol lun0 "c0-$bs" "block_size = $bs"; vol lun1 "c1-$bs" "block_size = $bs"; } >"$OUT/conformance-volumes-$bs.toml"
    t=$SECONDS
    if VOLUMES_TOML=$OUT/conformance-volumes-$bs.toml BLOCK_SIZE=$bs SKIP_TGTD=1 CONF_OUT=$OUT/conformance-$bs \
      "$REPO/tests/iscsi-conformance.sh" "$BIN" >"$OUT/conformance-$bs.out" 2>&1; then
      ok "iscsi-test-cu on RBD LUNs, $bs-byte blocks: $(grep "pinion/$bs" "$OUT/conformance-$bs.out") (passed failed skipped), $((SECONDS - t)) s"
    else
      bad "iscsi-test-cu on RBD LUNs, $bs-byte blocks"; tail -n 20 "$OUT/conformance-$bs.out"
    fi
  done
fi

echo "rbd: $passed passed, $failed failed ($SECONDS s)"
((failed == 0 && passed > 0))
