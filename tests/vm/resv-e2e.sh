#!/bin/bash
# End-to-end reservations test.  Runs INSIDE the initiator VM
# (tests/vm/guest-run; host side: tests/vm/run-e2e.sh resv): starts Pinion
# with one volume served as NVMe/TCP namespace 1 and as iSCSI LUN 0, and
# drives it with the kernel hosts and their tools:
#
#   NVMe: the kernel host (nvme-tcp, its own host NQN / host ID) with
#     nvme-cli resv-register / resv-acquire / resv-report / resv-release;
#     Pinion's own initiator (`pinion perf`, another host identity) is the
#     second NVMe host that sees the conflict.
#   across protocols: the kernel iSCSI host takes Write Exclusive with
#     sg_persist; the NVMe host's write fails with Reservation Conflict and
#     its read succeeds; both registrants appear in `sg_persist --read-keys`
#     and `nvme resv-report`; after the release the NVMe write succeeds.
#
#   resv-e2e.sh PINION_BINARY
#
# Every step prints its command and rc; the script stops at the first failure
# and ends with "RESV-E2E(pinion): PASS".
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY (not executable: '${PINION}')"; exit 2; }

ADDR=127.0.0.1 NPORT=4420 IPORT=3260
PORTAL=$ADDR:$IPORT
NQN=nqn.2026-11.io.pinion:resv
IQN=iqn.2026-11.io.pinion:resv
# the kernel NVMe host: an identity of its own (pinion perf uses the
# machine's /etc/nvme/hostnqn or its fixed one, never this)
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:5e5e5e5e-0000-4000-8000-00000000e2e1
HOSTID=5e5e5e5e-0000-4000-8000-00000000e2e1
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
WORK=/dev/shm/resv-e2e
IMG=$WORK/vol.img
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
LAST=$WORK/last.out
rm -rf "$WORK"
mkdir -p "$WORK"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
run() {
  printf '\n$ %s\n' "$*"
  local t=$SECONDS rc=0
  timeout -k 10 "${STEP_TIMEOUT:-60}" "$@" >"$LAST" 2>&1 || rc=$?
  cat "$LAST"
  ((rc == 124)) && echo "(timed out after ${STEP_TIMEOUT:-60}s)"
  printf '[%s: rc=%d, %ds]\n' "$1" "$rc" $((SECONDS - t))
  return $rc
}
# a command that must fail
fails() { if "$@"; then echo "expected a failure"; return 1; fi; }
check() {
  local what=$1; shift
  if "$@"; then echo "check: $what: ok"; else echo "check: $what: FAILED"; return 1; fi
}
wait_for() {
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}
listening() { [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }

pinion_pid= iscsid_pid=
start_pinion() {
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$NPORT"]
[iscsi]
listen = ["$PORTAL"]
[state]
dir = "$WORK/state"
[[volume]]
name = "vol"
backend = "file"
path = "$IMG"
size = "64MiB"
block_size = 4096
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol"]
hosts = ["*"]
[[iscsi_target]]
iqn = "$IQN"
luns = ["vol"]
EOF
  setsid "$PINION" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
  pinion_pid=$!
  wait_for "$PINION_READY_TIMEOUT" sh -c "ss -ltnH 'sport = :$NPORT' | grep -q . && ss -ltnH 'sport = :$IPORT' | grep -q ." ||
    { echo "pinion not listening"; cat "$PLOG"; return 1; }
  echo "pinion pid $pinion_pid"
}
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  wait_for 10 sh -c "! kill -0 $1" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

dev= disk=
find_dev() {
  dev=
  local s n
  for _ in $(seq 150); do
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
      [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
      for n in "$s"/nvme*n1; do [[ -e $n && ${n##*/} != *c*n* ]] && dev=/dev/${n##*/}; done
    done
    [[ -n $dev && -b $dev ]] && break
    sleep 0.1
  done
  [[ -n $dev && -b $dev ]] || { echo "no namespace for $NQN"; ls -l /sys/class/nvme* /dev/nvme* 2>&1 || true; return 1; }
  echo "NVMe namespace: $dev"
}
find_disk() {
  disk=
  local s b
  for _ in $(seq 200); do
    for s in /sys/class/iscsi_session/session*; do
      [[ $(cat "$s/targetname" 2>/dev/null) == "$IQN" ]] || continue
      for b in "$s"/device/target*/*:*:*:0/block/*; do [[ -e $b ]] && disk=/dev/${b##*/}; done
    done
    [[ -n $disk && -b $disk ]] && break
    sleep 0.1
  done
  [[ -n $disk && -b $disk ]] || { echo "no iSCSI disk"; return 1; }
  echo "iSCSI disk: $disk"
}

cleanup() {
  local rc=$?
  set +e
  if ((rc)); then
    echo
    echo "===== FAILED in step '$cur_step' (rc=$rc)"
    echo "----- pinion log ($PLOG), last 150 lines:"
    tail -n 150 "$PLOG" 2>/dev/null
    echo "----- kernel log (last 40 lines):"
    dmesg | tail -n 40
  fi
  timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  timeout 30 iscsiadm -m node -u >/dev/null 2>&1
  [[ -n $iscsid_pid ]] && stop_pid "$iscsid_pid"
  [[ -n $pinion_pid ]] && stop_pid "$pinion_pid"
  rm -rf "$WORK"
  if ((rc)); then echo "RESV-E2E(pinion): FAIL (step '$cur_step', rc=$rc)"; fi
  exit "$rc"
}
trap cleanup EXIT

ZERO=$WORK/zero.4k
head -c 4096 /dev/zero >"$ZERO"
nvme_write() { run nvme write "$dev" --start-block=8 --block-count=0 --data-size=4096 --data="$ZERO"; }
nvme_read() { run nvme read "$dev" --start-block=8 --block-count=0 --data-size=4096 --data=/dev/null; }
conflict() { grep -qi 'reservation' "$LAST" && grep -qi 'conflict' "$LAST"; }
PERF_URL=nvme-tcp://$ADDR:$NPORT/$NQN/1

# ---- the test ----------------------------------------------------------------
step "environment: kernel $(uname -r), $(nvme version | head -n 1), sg3-utils $(sg_inq -V 2>&1 | head -n 1)"
step "start Pinion (NVMe/TCP :$NPORT and iSCSI :$IPORT over one volume)"
start_pinion

step "connect the NVMe host ($HOSTNQN)"
modprobe nvme-tcp
run nvme connect -t tcp -a "$ADDR" -s "$NPORT" -n "$NQN" --hostnqn="$HOSTNQN" --hostid="$HOSTID"
find_dev
run nvme id-ctrl "$dev"
check "ONCS: reservations supported" grep -Eq 'oncs +: 0x[0-9a-f]*[2367abef][0-9a-f]$' "$LAST"
run nvme id-ns "$dev"
check "RESCAP: every type, PTPL" grep -Eq 'rescap +: 0xff' "$LAST"

step "NVMe: register, acquire Write Exclusive, report"
run nvme resv-register "$dev" --nrkey=0xa1 --rrega=0
run nvme resv-acquire "$dev" --crkey=0xa1 --rtype=1 --racqa=0
run nvme resv-report "$dev" --eds
check "report: Write Exclusive" grep -Eqi 'rtype *: *1' "$LAST"
check "report: one registrant holding it with key 0xa1" grep -Eqi 'rkey *: *(0x)?0*a1$' "$LAST"

step "NVMe: the second host (pinion perf) conflicts on writes, not on reads"
fails run "$PINION" perf --rw write --ios 8 --qd 1 "$PERF_URL"
check "the write failed with a reservation conflict" conflict
run "$PINION" perf --rw read --ios 8 --qd 1 "$PERF_URL"
step "NVMe: a wrong key is a conflict; release"
fails run nvme resv-release "$dev" --crkey=0xbad --rtype=1 --rrela=0
check "release with a wrong key: conflict" conflict
run nvme resv-release "$dev" --crkey=0xa1 --rtype=1 --rrela=0
run "$PINION" perf --rw write --ios 8 --qd 1 "$PERF_URL"
run nvme resv-register "$dev" --crkey=0xa1 --rrega=1

step "iSCSI: log in"
setsid iscsid -f -n >"$WORK/iscsid.log" 2>&1 </dev/null &
iscsid_pid=$!
wait_for 20 sh -c 'ss -xlH | grep -q ISCSIADM_ABSTRACT_NAMESPACE' || { cat "$WORK/iscsid.log"; exit 1; }
run iscsiadm -m discovery -t sendtargets -p "$PORTAL"
run iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
find_disk

step "iSCSI takes Write Exclusive (sg_persist)"
run sg_persist --out --register --param-sark=0x5c "$disk"
run sg_persist --out --reserve --param-rk=0x5c --prout-type=1 "$disk"
run sg_persist --in --read-reservation "$disk"
check "READ RESERVATION: Write Exclusive by key 0x5c" grep -qi 'Write Exclusive' "$LAST"

step "NVMe under the iSCSI reservation: write conflicts, read succeeds"
fails nvme_write
check "the NVMe write failed with Reservation Conflict" conflict
nvme_read

step "both registrants in both protocols' reports"
run nvme resv-register "$dev" --nrkey=0xb2 --rrega=0
run sg_persist --in --read-keys "$disk"
check "READ KEYS lists the iSCSI key" grep -qi '0x5c' "$LAST"
check "READ KEYS lists the NVMe key" grep -qi '0xb2' "$LAST"
run nvme resv-report "$dev" --eds
check "resv-report lists the iSCSI key" grep -Eqi 'rkey *: *(0x)?0*5c$' "$LAST"
check "resv-report lists the NVMe key" grep -Eqi 'rkey *: *(0x)?0*b2$' "$LAST"
fails nvme_write
check "a registered NVMe host is still barred by Write Exclusive" conflict

step "iSCSI releases: the NVMe write succeeds"
run sg_persist --out --release --param-rk=0x5c --prout-type=1 "$disk"
nvme_write

step "the reverse: NVMe Exclusive Access bars the iSCSI host"
run nvme resv-acquire "$dev" --crkey=0xb2 --rtype=2 --racqa=0
# READ(16) of LBA 8, one block, straight to the device (no page cache)
fails run sg_raw -r 4096 "$disk" 88 00 00 00 00 00 00 00 00 08 00 00 00 01 00 00
check "the iSCSI read failed with RESERVATION CONFLICT" grep -qi 'reservation conflict' "$LAST"
run nvme resv-acquire "$dev" --crkey=0xb2 --prkey=0x5c --rtype=2 --racqa=2
# the preempted nexus first hears the unit attention (REGISTRATIONS PREEMPTED)
run sg_persist --in --read-keys "$disk" || true
run sg_persist --in --read-keys "$disk"
check "the iSCSI registration was preempted" sh -c "! grep -qi '0x5c' $LAST"
run nvme resv-release "$dev" --crkey=0xb2 --rtype=2 --rrela=1

step "done"
run iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
run nvme disconnect -n "$NQN"
echo "RESV-E2E(pinion): PASS"
