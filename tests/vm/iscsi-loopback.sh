#!/bin/bash
# Runs INSIDE the guest (via guest-run): tgtd (userspace iSCSI target, package
# tgt) on 127.0.0.1:3260 with one LUN + the kernel iscsi_tcp initiator driven by
# open-iscsi (iscsid + iscsiadm), then a fio verify pass on the new /dev/sdX.
# Stand-in for a userspace iSCSI target: replace start_target/stop_target.
#
#   tests/vm/guest-run -- tests/vm/iscsi-loopback.sh [FIO_SIZE]
set -euo pipefail
TIQN=iqn.2024-01.io.example:t1
ADDR=127.0.0.1 PORT=3260
SIZE=${1:-64M}
IMG=/dev/shm/iscsi-lun1.img
LOG=/tmp/iscsi-test
mkdir -p "$LOG"

step() { printf '\n===== %s\n' "$*"; }
run() { printf '\n$ %s\n' "$*"; local t=$SECONDS; "$@"; local rc=$?; printf '[%s: rc=%d, %ds]\n' "$1" "$rc" $((SECONDS - t)); return $rc; }
wait_for() { # wait_for SECONDS CMD... : poll until CMD succeeds
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}

tgtd_pid= iscsid_pid=
start_target() {
  truncate -s 256M "$IMG"
  mkdir -p /run/tgtd
  # own session: daemons may signal their whole process group on shutdown
  setsid tgtd -f --iscsi "portal=$ADDR:$PORT" >"$LOG/tgtd.log" 2>&1 &
  tgtd_pid=$!
  wait_for 20 tgtadm --lld iscsi --op show --mode sys || { cat "$LOG/tgtd.log"; return 1; }
  tgtadm --lld iscsi --op new --mode target --tid 1 -T "$TIQN"
  tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$IMG"
  tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
}
stop_target() {
  [[ -n $tgtd_pid ]] || return 0
  # tgtd ignores SIGTERM while it has targets; ask it to shut down instead
  tgtadm --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
  tgtadm --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  tgtadm --op delete --mode system >/dev/null 2>&1 || true
  stop_pid "$tgtd_pid"
  tgtd_pid=
}
stop_pid() { # TERM, wait up to 5 s, then KILL
  kill "$1" 2>/dev/null || return 0
  wait_for 5 sh -c "! kill -0 $1" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  if ((rc)); then
    echo "FAILED (rc=$rc); logs:"
    tail -n 30 "$LOG"/*.log
    dmesg | tail -n 30
  fi
  timeout 30 iscsiadm -m node -u >/dev/null 2>&1 || true
  [[ -n $iscsid_pid ]] && stop_pid "$iscsid_pid"
  stop_target
}
trap cleanup EXIT

step "environment: $(uname -r), $(iscsiadm --version), $(tgtd -V 2>&1 | head -1), $(fio --version)"
run cat /etc/iscsi/initiatorname.iscsi

step "target: tgtd, $TIQN on $ADDR:$PORT, LUN 1 = $IMG"
start_target
run tgtadm --lld iscsi --op show --mode target
run ss -ltn "sport = :$PORT"

step "initiator: iscsid + iscsiadm"
# iscsiadm would run iscsid.startup (systemctl ...) if iscsid were not running;
# there is no systemd in the guest, so start iscsid ourselves.
# (iscsid's SIGTERM handler signals its process group: give it its own session)
setsid iscsid -f -n >"$LOG/iscsid.log" 2>&1 &
iscsid_pid=$!
wait_for 20 sh -c 'ss -xlH | grep -q ISCSIADM_ABSTRACT_NAMESPACE' || { cat "$LOG/iscsid.log"; exit 1; }
run iscsiadm -m discovery -t sendtargets -p "$ADDR:$PORT"
run iscsiadm -m node -l
run iscsiadm -m session -P 1
# find the disk of our session (LUN 1; LUN 0 is tgtd's controller LUN)
disk=
for _ in $(seq 200); do
  for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:1/block/*; do
    [[ -e $b ]] && disk=/dev/${b##*/}
  done
  [[ -n $disk && -b $disk ]] && break
  sleep 0.1
done
[[ -n $disk && -b $disk ]] || { echo "no disk appeared"; cat "$LOG"/*.log; exit 1; }
echo "iSCSI disk: $disk"
run lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL "$disk"
run cat /sys/block/"${disk#/dev/}"/device/{vendor,model}

step "fio verify on $disk"
run fio --name=v --filename="$disk" --rw=randwrite --bs=4k --size="$SIZE" --verify=crc32c \
  --direct=1 --ioengine=libaio --iodepth=16

step "teardown"
run iscsiadm -m node -u
run iscsiadm -m session || true   # exit 21: no active sessions
stop_pid "$iscsid_pid"; iscsid_pid=
stop_target
trap - EXIT
echo "ISCSI LOOPBACK: PASS"
