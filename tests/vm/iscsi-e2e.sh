#!/bin/bash
# End-to-end iSCSI test.  Runs INSIDE the initiator VM (tests/vm/guest-run;
# host side: tests/vm/run-e2e.sh iscsi): starts Pinion on 127.0.0.1:3260 and
# drives it with the Linux kernel iscsi_tcp initiator (open-iscsi: iscsid +
# iscsiadm), fio and sg3-utils.
#
#   iscsi-e2e.sh PINION_BINARY
#
# Three targets export the same 256 MiB volume (a file on /dev/shm, 512-byte
# blocks): without authentication, with one-way CHAP, and with mutual CHAP.
# Steps: discovery (SendTargets), login, disk size, fio 4k randwrite + crc32c
# verify, fio randrw 4k-128k + verify, sg_sync, sg_inq -p 0x83 / 0xb0, sg_rtpg,
# logout; then one-way CHAP (a wrong secret is refused first) and mutual CHAP
# with header and data digests, each with a fio verify.  Every step prints
# its command and rc; the script stops at the first failure and ends with
# "ISCSI-E2E(pinion): PASS".
#
# environment:
#   FIO_SIZE, FIO_MIX_SIZE, FIO_RUNTIME  as in nvme-e2e.sh (32M, 64M, 90 s)
#   PINION_READY_TIMEOUT  seconds to wait for Pinion to listen (default 30)
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY (not executable: '${PINION}')"; exit 2; }

ADDR=127.0.0.1 PORT=3260
PORTAL=$ADDR:$PORT
IQN=iqn.2026-11.io.pinion:vol1
IQN_CHAP=iqn.2026-11.io.pinion:chap
IQN_MUTUAL=iqn.2026-11.io.pinion:mutual
CHAP_USER=e2e-user CHAP_SECRET=e2e-initiator-secret
TGT_USER=e2e-target TGT_SECRET=e2e-target-secret-2
VOL_BYTES=$((256 * 1024 * 1024))
FIO_SIZE=${FIO_SIZE:-32M}
FIO_MIX_SIZE=${FIO_MIX_SIZE:-64M}
FIO_RUNTIME=${FIO_RUNTIME:-90}
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
IMG=/dev/shm/pinion-vol1.img
WORK=/dev/shm/iscsi-e2e
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
LAST=$WORK/last.out
mkdir -p "$WORK"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
run() {
  printf '\n$ %s\n' "$*"
  local t=$SECONDS rc=0
  timeout -k 10 "${STEP_TIMEOUT:-120}" "$@" >"$LAST" 2>&1 || rc=$?
  cat "$LAST"
  ((rc == 124)) && echo "(timed out after ${STEP_TIMEOUT:-120}s)"
  printf '[%s: rc=%d, %ds]\n' "$1" "$rc" $((SECONDS - t))
  return $rc
}
check() {
  local what=$1; shift
  if "$@"; then echo "check: $what: ok"; else echo "check: $what: FAILED"; return 1; fi
}
wait_for() {
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}
listening() { [[ -n $(ss -ltnH "sport = :$PORT" 2>/dev/null) ]]; }

pinion_pid= iscsid_pid=
start_pinion() {
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = []
[iscsi]
listen = ["$PORTAL"]
[[volume]]
name = "vol1"
backend = "file"
path = "$IMG"
size = "256MiB"
block_size = 512
io_mode = "buffered"
[[iscsi_target]]
iqn = "$IQN"
luns = ["vol1"]
[[iscsi_target]]
iqn = "$IQN_CHAP"
luns = ["vol1"]
chap = { user = "$CHAP_USER", secret = "$CHAP_SECRET" }
[[iscsi_target]]
iqn = "$IQN_MUTUAL"
luns = ["vol1"]
chap = { user = "$CHAP_USER", secret = "$CHAP_SECRET" }
mutual_chap = { user = "$TGT_USER", secret = "$TGT_SECRET" }
EOF
  echo "config $CFG:"; sed 's/^/  /' "$CFG"
  setsid "$PINION" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
  pinion_pid=$!
  local n=$((PINION_READY_TIMEOUT * 10))
  until listening; do
    if ! kill -0 "$pinion_pid" 2>/dev/null; then
      local rc=0; wait "$pinion_pid" || rc=$?; pinion_pid=
      echo "pinion exited with rc=$rc before listening"; cat "$PLOG"; return 1
    fi
    n=$((n - 1)); ((n > 0)) || { echo "pinion not listening after ${PINION_READY_TIMEOUT}s"; return 1; }
    sleep 0.1
  done
  echo "pinion pid $pinion_pid listening on $PORTAL"
}
stop_pid() { # TERM, wait up to 10 s, then KILL (our own PIDs only)
  kill -TERM "$1" 2>/dev/null || return 0
  wait_for 10 sh -c "! kill -0 $1" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop_pinion() {
  [[ -n $pinion_pid ]] || return 0
  local pid=$pinion_pid; pinion_pid=
  if ! kill -0 "$pid" 2>/dev/null; then
    local rc=0; wait "$pid" || rc=$?
    echo "pinion (pid $pid) had already exited, rc=$rc"; return 1
  fi
  stop_pid "$pid"
  echo "pinion (pid $pid) stopped"
}

disk=
# the disk of the session logged in to target $1 (sysfs: session -> target -> LUN 0)
find_disk() {
  disk=
  local s b
  for _ in $(seq 200); do
    for s in /sys/class/iscsi_session/session*; do
      [[ $(cat "$s/targetname" 2>/dev/null) == "$1" ]] || continue
      for b in "$s"/device/target*/*:*:*:0/block/*; do
        [[ -e $b ]] && disk=/dev/${b##*/}
      done
    done
    [[ -n $disk && -b $disk ]] && break
    sleep 0.1
  done
  [[ -n $disk && -b $disk ]] || { echo "no disk for $1"; ls -l /sys/class/iscsi_session/ 2>&1; return 1; }
  echo "iSCSI disk of $1: $disk"
}
session_of() { iscsiadm -m session 2>/dev/null | grep -q " $1\$" ; }
node_set() { # node_set IQN NAME VALUE
  run iscsiadm -m node -T "$1" -p "$PORTAL" -o update -n "$2" -v "$3"
}
login() {
  run iscsiadm -m node -T "$1" -p "$PORTAL" --login
  check "login to $1 successful" grep -q 'successful' "$LAST"
  find_disk "$1"
}
logout() {
  local d=$disk
  run iscsiadm -m node -T "$1" -p "$PORTAL" --logout
  check "logout of $1 successful" grep -q 'successful' "$LAST"
  check "$d gone and no session left" wait_for 10 sh -c "[ ! -b $d ] && ! iscsiadm -m session 2>/dev/null | grep -q ' $1\$'"
  disk=
}
fio_4k_verify() {
  STEP_TIMEOUT=$((FIO_RUNTIME * 2 + 60)) run fio --name=randwrite-verify --filename="$disk" \
    --rw=randwrite --bs=4k --size="${1:-$FIO_SIZE}" --runtime="$FIO_RUNTIME" \
    --verify=crc32c --direct=1 --ioengine=libaio --iodepth=16
}

cleanup() {
  local rc=$?
  set +e
  if ((rc)); then
    echo
    echo "===== FAILED in step '$cur_step' (rc=$rc)"
    echo "----- pinion log ($PLOG), last 200 lines:"
    tail -n 200 "$PLOG" 2>/dev/null
    echo "----- iscsid log, last 30 lines:"
    tail -n 30 "$WORK/iscsid.log" 2>/dev/null
    echo "----- kernel log since the test started (last 60 lines):"
    dmesg | tail -n +$((dmesg_start + 1)) | tail -n 60
  fi
  timeout 30 iscsiadm -m node -u >/dev/null 2>&1
  [[ -n $iscsid_pid ]] && stop_pid "$iscsid_pid"
  stop_pinion
  if ((rc)); then echo "ISCSI-E2E(pinion): FAIL (step '$cur_step', rc=$rc)"; fi
  exit "$rc"
}
dmesg_start=$(dmesg | wc -l)
trap cleanup EXIT

# ---- the test ----------------------------------------------------------------
step "environment: kernel $(uname -r), $(iscsiadm --version), $(fio --version), sg3-utils $(sg_inq -V 2>&1 | head -n 1)"
run cat /etc/iscsi/initiatorname.iscsi

step "start Pinion"
truncate -s 0 "$IMG" && rm -f "$IMG"
start_pinion
run ss -ltn "sport = :$PORT"

step "start iscsid"
# no systemd in the guest; iscsid signals its process group on exit: own session
setsid iscsid -f -n >"$WORK/iscsid.log" 2>&1 </dev/null &
iscsid_pid=$!
wait_for 20 sh -c 'ss -xlH | grep -q ISCSIADM_ABSTRACT_NAMESPACE' || { cat "$WORK/iscsid.log"; exit 1; }

step "discovery (SendTargets)"
run iscsiadm -m discovery -t sendtargets -p "$PORTAL"
for t in "$IQN" "$IQN_CHAP" "$IQN_MUTUAL"; do
  check "discovery lists $t at $PORTAL,1" grep -qx "$PORTAL,1 $t" "$LAST"
done

step "login (no authentication)"
login "$IQN"
run iscsiadm -m session -P 3
run lsblk -o NAME,SIZE,TYPE,TRAN,VENDOR,MODEL,LOG-SEC "$disk"
run blockdev --getsize64 "$disk"
check "size of $disk is $VOL_BYTES bytes" [ "$(tr -d '[:space:]' <"$LAST")" = "$VOL_BYTES" ]
run blockdev --getss "$disk"
check "logical block size 512" [ "$(tr -d '[:space:]' <"$LAST")" = 512 ]

step "fio: 4k random write + crc32c verify ($FIO_SIZE)"
fio_4k_verify

step "fio: mixed random read/write 4k-128k + crc32c verify ($FIO_MIX_SIZE)"
STEP_TIMEOUT=$((FIO_RUNTIME * 2 + 60)) run fio --name=randrw-verify --filename="$disk" \
  --rw=randrw --bsrange=4k-128k --size="$FIO_MIX_SIZE" --runtime="$FIO_RUNTIME" \
  --verify=crc32c --verify_backlog=64 --direct=1 --ioengine=libaio --iodepth=32

step "SCSI: SYNCHRONIZE CACHE, VPD pages"
run sg_sync "$disk"
run sg_inq -p 0x83 "$disk"
check "device identification has an NAA designator" grep -qi 'NAA' "$LAST"
check "device identification names the target" grep -q "$IQN" "$LAST"
run sg_inq -p 0xb0 "$disk"
check "block limits report a maximum transfer length" grep -qi 'Maximum transfer length' "$LAST"
run sg_inq "$disk"
check "standard INQUIRY: direct access device" grep -qi 'disk\|direct' "$LAST"
check "standard INQUIRY: implicit ALUA (TPGS=1)" grep -q 'TPGS=1' "$LAST"
run sg_rtpg -d "$disk"
check "REPORT TARGET PORT GROUPS: the portal's group 1" grep -Eqi 'target port group id *: *0x1\b' "$LAST"
check "REPORT TARGET PORT GROUPS: active/optimized" grep -qi 'active/optimized' "$LAST"
check "REPORT TARGET PORT GROUPS: relative target port 1" grep -Eqi '^ *0x0*1 *$' "$LAST"

step "logout"
logout "$IQN"

step "one-way CHAP: a wrong secret is refused"
node_set "$IQN_CHAP" node.session.auth.authmethod CHAP
node_set "$IQN_CHAP" node.session.auth.username "$CHAP_USER"
node_set "$IQN_CHAP" node.session.auth.password wrong-secret-000
if run iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login; then
  echo "check: login with a wrong CHAP secret refused: FAILED"; exit 1
fi
check "login with a wrong CHAP secret refused (authorization failure)" grep -qi 'authori[sz]ation failure\|auth' "$LAST"
check "no session after the refusal" sh -c "! iscsiadm -m session 2>/dev/null | grep -q ' $IQN_CHAP\$'"

step "one-way CHAP: login, fio verify, logout"
node_set "$IQN_CHAP" node.session.auth.password "$CHAP_SECRET"
login "$IQN_CHAP"
fio_4k_verify 16M
logout "$IQN_CHAP"

step "mutual CHAP with header and data digests: login, fio verify, logout"
node_set "$IQN_MUTUAL" node.session.auth.authmethod CHAP
node_set "$IQN_MUTUAL" node.session.auth.username "$CHAP_USER"
node_set "$IQN_MUTUAL" node.session.auth.password "$CHAP_SECRET"
node_set "$IQN_MUTUAL" node.session.auth.username_in "$TGT_USER"
node_set "$IQN_MUTUAL" node.session.auth.password_in "$TGT_SECRET"
node_set "$IQN_MUTUAL" 'node.conn[0].iscsi.HeaderDigest' CRC32C
node_set "$IQN_MUTUAL" 'node.conn[0].iscsi.DataDigest' CRC32C
login "$IQN_MUTUAL"
run iscsiadm -m session -P 2
check "header and data digests negotiated" sh -c "grep -q 'HeaderDigest: CRC32C' '$LAST' && grep -q 'DataDigest: CRC32C' '$LAST'"
fio_4k_verify 16M
run sg_sync "$disk"
logout "$IQN_MUTUAL"

step "kernel log"
dmesg | tail -n +$((dmesg_start + 1)) | grep -Ei 'iscsi|sd [0-9]|scsi' | tail -n 40
kio=$(dmesg | tail -n +$((dmesg_start + 1)) | grep -Ei 'I/O error|critical medium|Sense Key|hostbyte=0x[1-9]' || true)
check "no I/O errors in the kernel log" [ -z "$kio" ] || { echo "$kio"; false; }

step "stop"
stop_pid "$iscsid_pid"; iscsid_pid=
stop_pinion
echo "----- pinion log ($PLOG), last 20 lines:"
tail -n 20 "$PLOG"
if grep -q panicked "$PLOG"; then echo "pinion panicked"; exit 1; fi
trap - EXIT
echo
echo "ISCSI-E2E(pinion): PASS"
