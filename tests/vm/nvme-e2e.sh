#!/bin/bash
# End-to-end NVMe/TCP test.  Runs INSIDE the initiator VM (tests/vm/guest-run;
# host side: tests/vm/run-e2e.sh): starts a target on 127.0.0.1:4420 and
# drives it with the Linux kernel nvme-tcp initiator, nvme-cli and fio.
#
#   nvme-e2e.sh nvmet                 # reference: kernel nvmet-tcp via configfs
#   nvme-e2e.sh pinion PINION_BINARY  # `PINION serve --config CFG`
#
# Both targets export subsystem nqn.2026-11.io.pinion:vol1 with one 256 MiB
# namespace backed by a file on /dev/shm (tmpfs), so both runs are identical.
# Every step prints its command and rc; the script exits non-zero at the first
# failure and ends with "NVME-E2E(<target>): PASS".
#
# environment:
#   FIO_SIZE          region of the 4k randwrite verify passes (default 32M)
#   FIO_MIX_SIZE      region of the mixed randrw verify pass (default 64M)
#   FIO_RUNTIME       --runtime cap of each fio job, seconds (default 90)
#   CTRL_LOSS_TMO     nvme connect --ctrl-loss-tmo, seconds (default 30): a dead
#                     target fails I/O after this instead of hanging the VM
#   PINION_READY_TIMEOUT  seconds to wait for Pinion to listen (default 30)
set -euo pipefail
exec 2>&1   # one ordered transcript on stdout

TARGET=${1:-}
case $TARGET in
  nvmet) ;;
  pinion)
    PINION=${2:-}
    [[ -n $PINION && -x $PINION ]] || { echo "usage: $0 pinion PINION_BINARY (not executable: '${PINION}')"; exit 2; }
    ;;
  *) echo "usage: $0 nvmet | pinion PINION_BINARY"; exit 2 ;;
esac

NQN=nqn.2026-11.io.pinion:vol1
ADDR=127.0.0.1 PORT=4420
VOL_BYTES=$((256 * 1024 * 1024))
FIO_SIZE=${FIO_SIZE:-32M}
FIO_MIX_SIZE=${FIO_MIX_SIZE:-64M}
FIO_RUNTIME=${FIO_RUNTIME:-90}
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-30}
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
# tmpfs, never overlayfs: nvmet exports a file on overlayfs with 1-byte LBAs
IMG=/dev/shm/pinion-vol1.img
WORK=/dev/shm/nvme-e2e
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
LAST=$WORK/last.out
NVMET=/sys/kernel/config/nvmet
ZERO_LEN=$((8 * 1024 * 1024))
mkdir -p "$WORK"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
# run CMD...: print the command, its output, its rc; returns its rc (so, under
# set -e, the script stops at the first failing step).  Each command is bounded
# by STEP_TIMEOUT (default 120 s).
run() {
  printf '\n$ %s\n' "$*"
  local t=$SECONDS rc=0
  timeout -k 10 "${STEP_TIMEOUT:-120}" "$@" >"$LAST" 2>&1 || rc=$?
  cat "$LAST"
  ((rc == 124)) && echo "(timed out after ${STEP_TIMEOUT:-120}s)"
  printf '[%s: rc=%d, %ds]\n' "$1" "$rc" $((SECONDS - t))
  return $rc
}
# check DESCRIPTION CMD...: a verdict on something already run
check() {
  local what=$1; shift
  if "$@"; then echo "check: $what: ok"; else echo "check: $what: FAILED"; return 1; fi
}
wait_for() { # wait_for SECONDS CMD... : poll every 0.1 s until CMD succeeds
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}
listening() { [[ -n $(ss -ltnH "sport = :$PORT" 2>/dev/null) ]]; }

# ---- targets ----------------------------------------------------------------
pinion_pid=
start_nvmet() {
  modprobe nvmet-tcp
  truncate -s "$VOL_BYTES" "$IMG"
  mkdir "$NVMET/subsystems/$NQN"
  echo 1 >"$NVMET/subsystems/$NQN/attr_allow_any_host"
  mkdir "$NVMET/subsystems/$NQN/namespaces/1"
  echo -n "$IMG" >"$NVMET/subsystems/$NQN/namespaces/1/device_path"
  echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/buffered_io"  # tmpfs has no O_DIRECT on 6.1
  echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
  mkdir "$NVMET/ports/1"
  echo tcp >"$NVMET/ports/1/addr_trtype"
  echo ipv4 >"$NVMET/ports/1/addr_adrfam"
  echo "$ADDR" >"$NVMET/ports/1/addr_traddr"
  echo "$PORT" >"$NVMET/ports/1/addr_trsvcid"
  ln -s "$NVMET/subsystems/$NQN" "$NVMET/ports/1/subsystems/$NQN"
}
stop_nvmet() {
  rm -f "$NVMET/ports/1/subsystems/$NQN"
  rmdir "$NVMET/ports/1" 2>/dev/null || true
  [[ -d $NVMET/subsystems/$NQN/namespaces/1 ]] && echo 0 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
  rmdir "$NVMET/subsystems/$NQN/namespaces/1" "$NVMET/subsystems/$NQN" 2>/dev/null || true
}
start_pinion() {
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$PORT"]
[[volume]]
name = "vol1"
backend = "file"
path = "$IMG"
size = "256MiB"
io_mode = "buffered"
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol1"]
hosts = ["*"]
EOF
  echo "config $CFG:"; sed 's/^/  /' "$CFG"
  echo "\$ setsid $PINION serve --config $CFG >$PLOG 2>&1 &"
  # own session: Pinion cannot signal this script's process group.  (A
  # background job of a non-interactive shell is no group leader, so setsid
  # execs without forking and $! is Pinion's PID.)
  setsid "$PINION" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
  pinion_pid=$!
  local n=$((PINION_READY_TIMEOUT * 10))
  until listening; do
    if ! kill -0 "$pinion_pid" 2>/dev/null; then
      local rc=0; wait "$pinion_pid" || rc=$?; pinion_pid=
      echo "pinion exited with rc=$rc before listening on $ADDR:$PORT"; return 1
    fi
    n=$((n - 1))
    ((n > 0)) || { echo "pinion (pid $pinion_pid) not listening on $ADDR:$PORT after ${PINION_READY_TIMEOUT}s"; return 1; }
    sleep 0.1
  done
  echo "pinion pid $pinion_pid listening on $ADDR:$PORT"
}
stop_pinion() {
  [[ -n $pinion_pid ]] || return 0
  local pid=$pinion_pid rc=0; pinion_pid=
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || rc=$?
    echo "pinion (pid $pid) had already exited, rc=$rc"; return 1
  fi
  kill -TERM "$pid"
  if wait_for 10 sh -c "! kill -0 $pid"; then
    wait "$pid" || rc=$?
    echo "pinion (pid $pid) stopped by SIGTERM, rc=$rc"
  else
    echo "pinion (pid $pid) still running 10s after SIGTERM; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
start_target() { if [[ $TARGET == nvmet ]]; then start_nvmet; else start_pinion; fi; }
stop_target() { if [[ $TARGET == nvmet ]]; then stop_nvmet; else stop_pinion; fi; }

# ---- initiator helpers -------------------------------------------------------
ctrl= dev=
# find the controller and namespace block device of $NQN via sysfs (with
# native multipath the disk is named after the subsystem instance)
find_dev() {
  ctrl= dev=
  local s c n
  for _ in $(seq 150); do
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
      [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
      for c in "$s"/nvme[0-9]*; do [[ -e $c/cntlid ]] && ctrl=${c##*/}; done
      for n in "$s"/nvme*n1 /sys/class/nvme/"$ctrl"/nvme*n1; do
        [[ -e $n && ${n##*/} != *c*n* ]] && dev=/dev/${n##*/}
      done
    done
    [[ -n $ctrl && -n $dev && -b $dev ]] && break
    sleep 0.1
  done
  if [[ -n $ctrl && -b $dev ]]; then
    echo "controller: /dev/$ctrl  namespace: $dev"
  else
    echo "no controller/namespace for $NQN"; ls -l /sys/class/nvme* /dev/nvme* 2>&1 || true
    return 1
  fi
}
ctrl_gone() { [[ ! -e /sys/class/nvme/$1 && ! -b $2 ]] && ! nqn_connected; }
nqn_connected() {
  local s
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] && compgen -G "$s/nvme[0-9]*" >/dev/null && return 0
  done
  return 1
}
disconnect() {
  local c=$ctrl d=$dev
  run nvme disconnect -n "$NQN"
  check "$NQN disconnected" grep -q 'disconnected 1 controller' "$LAST"
  check "/dev/$c and $d gone" wait_for 10 ctrl_gone "$c" "$d"
  ctrl= dev=
}
fio_4k_verify() {
  STEP_TIMEOUT=$((FIO_RUNTIME * 2 + 60)) run fio --name=randwrite-verify --filename="$dev" \
    --rw=randwrite --bs=4k --size="$FIO_SIZE" --runtime="$FIO_RUNTIME" \
    --verify=crc32c --direct=1 --ioengine=libaio --iodepth=16
}

cleanup() {
  local rc=$?
  set +e
  if ((rc)); then
    echo
    echo "===== FAILED in step '$cur_step' (rc=$rc)"
    if [[ $TARGET == pinion ]]; then
      echo "----- pinion log ($PLOG), last 200 lines:"
      tail -n 200 "$PLOG" 2>/dev/null
    fi
    echo "----- kernel log since the test started (last 60 lines):"
    dmesg | tail -n +$((dmesg_start + 1)) | tail -n 60
  fi
  nqn_connected && timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  stop_target
  if ((rc)); then echo "NVME-E2E($TARGET): FAIL (step '$cur_step', rc=$rc)"; fi
  exit "$rc"
}
dmesg_start=$(dmesg | wc -l)
trap cleanup EXIT

# ---- the test ----------------------------------------------------------------
step "environment: kernel $(uname -r), $(nvme version), $(fio --version)"
echo "target: $TARGET${PINION:+ ($PINION)}  nqn: $NQN  addr: $ADDR:$PORT"
echo "fio: FIO_SIZE=$FIO_SIZE FIO_MIX_SIZE=$FIO_MIX_SIZE FIO_RUNTIME=$FIO_RUNTIME"

step "start target: $TARGET"
start_target
run ss -ltn "sport = :$PORT"

step "discover"
run nvme discover -t tcp -a "$ADDR" -s "$PORT"
check "discovery log lists $NQN" grep -Eq "^subnqn:[[:space:]]+$NQN[[:space:]]*\$" "$LAST"

step "connect"
run nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" -i 2 --ctrl-loss-tmo="$CTRL_LOSS_TMO"
find_dev

step "identify"
run nvme list
run nvme id-ctrl "/dev/$ctrl"
run nvme id-ns "$dev"
run nvme smart-log "/dev/$ctrl"
run nvme get-feature "/dev/$ctrl" -f 7
run blockdev --getsize64 "$dev"
check "size of $dev is $VOL_BYTES bytes (256 MiB)" [ "$(tr -d '[:space:]' <"$LAST")" = "$VOL_BYTES" ]

step "fio: 4k random write + crc32c verify ($FIO_SIZE)"
fio_4k_verify

step "fio: mixed random read/write 4k-128k + crc32c verify ($FIO_MIX_SIZE)"
STEP_TIMEOUT=$((FIO_RUNTIME * 2 + 60)) run fio --name=randrw-verify --filename="$dev" \
  --rw=randrw --bsrange=4k-128k --size="$FIO_MIX_SIZE" --runtime="$FIO_RUNTIME" \
  --verify=crc32c --verify_backlog=64 --direct=1 --ioengine=libaio --iodepth=32

step "flush"
run nvme flush "$dev"

step "write zeroes (blkdiscard -z) + read back"
run cat "/sys/block/${dev#/dev/}/queue/write_zeroes_max_bytes"
run dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
mark=$(dmesg | wc -l)
run blkdiscard -z -o 0 -l 8M "$dev"
# BLKZEROOUT falls back to writing zero pages when the target fails Write
# Zeroes, so blkdiscard's rc alone does not tell whether the command worked
wz_err=$(dmesg | tail -n +$((mark + 1)) | grep -E 'WRITE_ZEROES|I/O Cmd\(0x8\)' || true)
if [[ -n $wz_err ]]; then
  echo "kernel log: the target failed Write Zeroes; the kernel fell back to writing zero pages:"
  echo "$wz_err"
  if [[ $TARGET == nvmet ]]; then
    echo "note: expected for nvmet with a file on tmpfs (no fallocate ZERO_RANGE on tmpfs); not a failure for nvmet"
  else
    check "target executed Write Zeroes without error" false
  fi
fi
run cmp -n "$ZERO_LEN" "$dev" /dev/zero
run dd if="$dev" of="$WORK/zero.chk" bs=1M count=8 iflag=direct status=none
check "first 8 MiB read back (O_DIRECT) as zeroes" cmp -n "$ZERO_LEN" "$WORK/zero.chk" /dev/zero

step "discard (deallocate)"
run cat "/sys/block/${dev#/dev/}/queue/discard_max_bytes" "/sys/block/${dev#/dev/}/queue/discard_granularity"
check "$dev advertises discard" [ "$(head -n 1 "$LAST")" -gt 0 ]
run dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
run blkdiscard -o 0 -l 8M "$dev"

step "compare (nvme-cli): equal data succeeds, different data is a miscompare"
if [[ $TARGET == nvmet ]]; then
  echo "note: nvmet implements no Compare command; step skipped for nvmet"
else
  run nvme id-ctrl "/dev/$ctrl"
  check "FUSES says Compare and Write" grep -Eq '^fuses[[:space:]]*:[[:space:]]*0x1[[:space:]]*$' "$LAST"
  cbs=$(blockdev --getss "$dev")
  run dd if=/dev/urandom of="$WORK/cmp.blk" bs="$cbs" count=1 status=none
  run dd if=/dev/urandom of="$WORK/cmp.bad" bs="$cbs" count=1 status=none
  if cmp -s "$WORK/cmp.blk" "$WORK/cmp.bad"; then check "the two data files differ" false; fi
  run dd if="$WORK/cmp.blk" of="$dev" bs="$cbs" seek=100 count=1 oflag=direct status=none
  run nvme compare "$dev" --start-block=100 --block-count=0 --data-size="$cbs" --data="$WORK/cmp.blk"
  crc=0
  run nvme compare "$dev" --start-block=100 --block-count=0 --data-size="$cbs" --data="$WORK/cmp.bad" || crc=$?
  check "compare with different data fails" [ "$crc" -ne 0 ]
  check "nvme-cli reports the miscompare" grep -Eiq 'compare.?fail' "$LAST"
fi

step "disconnect"
disconnect

step "reconnect with header + data digests, SQ flow control disabled (C2HData SUCCESS flag)"
run nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" -g -G --disable-sqflow -i 2 --ctrl-loss-tmo="$CTRL_LOSS_TMO"
find_dev
fio_4k_verify
disconnect

step "kernel log"
dmesg | tail -n +$((dmesg_start + 1)) | grep -E 'nvme|nvmet' | tail -n 40
# data-path command failures show up only in the kernel log (the block layer
# retries or falls back); nvmet's Write Zeroes on tmpfs is the known exception
kio=$(dmesg | tail -n +$((dmesg_start + 1)) | grep -E 'I/O Error|I/O error|operation not supported error' || true)
if [[ $TARGET == nvmet ]]; then
  kio=$(grep -vE 'WRITE_ZEROES|I/O Cmd\(0x8\)' <<<"$kio" || true)
fi
check "no unexpected I/O errors in the kernel log" [ -z "$kio" ] || { echo "$kio"; false; }

step "stop target: $TARGET"
if [[ $TARGET == pinion ]]; then
  stop_pinion
  echo "----- pinion log ($PLOG), last 20 lines:"
  tail -n 20 "$PLOG"
else
  stop_nvmet
fi
trap - EXIT
echo
echo "NVME-E2E($TARGET): PASS"
