#!/bin/bash
# Live reconfiguration and restarts with the Linux kernel hosts.  Runs INSIDE
# the initiator VM (host side: tests/vm/run-e2e.sh reload [BIN]), one boot:
#
#   1. NVMe/TCP: while fio crc32c-verify passes run on namespace 1, `pinion
#      reload` adds namespace 2 (/dev/nvmeXn2 of the same controller appears
#      within 10 s), grows namespace 1 (the host's size changes), removes
#      namespace 2 (its device goes), and an invalid file is rejected; no
#      reconnect in the kernel log, every fio pass err=0.
#   2. iSCSI: while fio passes run on LUN 0, a reload adds LUN 1: the kernel
#      reports REPORTED LUNS DATA HAS CHANGED, a rescan finds LUN 1; LUN 0's
#      fio is unaffected.
#   3. Restarts: Pinion runs under tests/supervisor.py, which holds the
#      listening sockets and passes them by socket activation (systemd is not
#      PID 1 here); with fio passes running on both hosts Pinion is restarted,
#      then replaced by another binary file; the hosts reconnect, no fio pass
#      fails, and no connection was refused.
#
# Ends with "RELOAD-E2E: PASS".  ~2-3 min under TCG.
#
# environment: RELOAD_FIO_SIZE (8M: one verify pass), PINION_READY_TIMEOUT (30)
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY (not executable: '${PINION}')"; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUPERVISOR=$HERE/../supervisor.py

ADDR=127.0.0.1 NPORT=4420 IPORT=3260
PORTAL=$ADDR:$IPORT
NQN=nqn.2026-11.io.pinion:reload
IQN=iqn.2026-11.io.pinion:reload
FIO_SIZE=${RELOAD_FIO_SIZE:-8M}
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
WORK=/dev/shm/reload-e2e
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
LAST=$WORK/last.out
BIN=$WORK/pinion          # the "installed" binary, replaced in part 3
rm -rf "$WORK"; mkdir -p "$WORK"
cp "$PINION" "$BIN"

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
wait_for() { # wait_for SECONDS CMD...
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}

# ---- the configuration: write_config NAMESPACES LUNS VOL1_SIZE -----------------
write_config() {
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$NPORT"]
[iscsi]
listen = ["$PORTAL"]
[management]
socket = "$WORK/ctl.sock"
[[volume]]
name = "vol1"
backend = "file"
path = "$WORK/vol1.img"
size = "$3"
io_mode = "buffered"
[[volume]]
name = "vol2"
backend = "file"
path = "$WORK/vol2.img"
size = "16MiB"
io_mode = "buffered"
[[volume]]
name = "lun0"
backend = "file"
path = "$WORK/lun0.img"
size = "64MiB"
io_mode = "buffered"
[[volume]]
name = "lun1"
backend = "file"
path = "$WORK/lun1.img"
size = "16MiB"
io_mode = "buffered"
[[subsystem]]
nqn = "$NQN"
namespaces = [$1]
[[iscsi_target]]
iqn = "$IQN"
luns = [$2]
EOF
}
reload() { run "$BIN" reload --config "$CFG"; }

# ---- Pinion under the supervisor ------------------------------------------------
sup_pid= iscsid_pid=
started() { grep -c 'supervisor: started pid' "$PLOG" || true; }
start_supervised() {
  echo "\$ setsid /usr/bin/python3 $SUPERVISOR --listen nvme-tcp=$ADDR:$NPORT --listen iscsi=$PORTAL -- $BIN serve --config $CFG >$PLOG 2>&1 &"
  setsid /usr/bin/python3 "$SUPERVISOR" --listen "nvme-tcp=$ADDR:$NPORT" --listen "iscsi=$PORTAL" \
    -- "$BIN" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
  sup_pid=$!
  wait_for "$PINION_READY_TIMEOUT" sh -c "grep -q 'notify READY=1' $PLOG" || { echo "no READY=1"; cat "$PLOG"; return 1; }
  echo "supervisor pid $sup_pid; pinion ready"
}
stop_pid() { # TERM, wait up to 20 s, then KILL (our own PIDs only)
  kill -TERM "$1" 2>/dev/null || return 0
  wait_for 20 sh -c "! kill -0 $1" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# ---- fio verify passes in the background: fio_loop NAME DEVICE ---------------------
# Each pass writes FIO_SIZE at random with crc32c and verifies it; passes repeat
# until $WORK/stop-NAME exists.  Result in $WORK/result-NAME: "passes failed".
fio_loop() {
  local name=$1 d=$2 n=0 failed=0
  while [[ ! -e $WORK/stop-$name ]]; do
    if ! fio --name="$name" --filename="$d" --rw=randwrite --bs=4k --size="$FIO_SIZE" \
        --verify=crc32c --direct=1 --ioengine=libaio --iodepth=8 >"$WORK/fio-$name.out" 2>&1; then
      failed=$((failed + 1)); cp "$WORK/fio-$name.out" "$WORK/fio-$name-failed-$n.out"
    fi
    n=$((n + 1))
  done
  echo "$n $failed" >"$WORK/result-$name"
}
declare -A fio_pids=()
fio_start() { rm -f "$WORK/stop-$1" "$WORK/result-$1"; fio_loop "$1" "$2" & fio_pids[$1]=$!; echo "fio passes on $2 in the background ($1)"; }
fio_stop() { # fio_stop NAME: ends the loop after its current pass; checks every pass
  touch "$WORK/stop-$1"
  wait "${fio_pids[$1]}" || true
  unset "fio_pids[$1]"
  local n f; read -r n f <"$WORK/result-$1"
  echo "fio $1: $n passes, $f failed"
  tail -n 12 "$WORK/fio-$1.out"
  for x in "$WORK"/fio-"$1"-failed-*.out; do [[ -e $x ]] && { echo "--- $x"; cat "$x"; }; done
  check "fio $1: at least one pass, none failed" [ "$n" -ge 1 -a "$f" -eq 0 ]
}

# ---- NVMe helpers ---------------------------------------------------------------------
ctrl=
nvme_ctrl() { # the controller of $NQN
  local s c
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
    for c in "$s"/nvme[0-9]*; do [[ -e $c/cntlid ]] && { echo "${c##*/}"; return 0; }; done
  done
  return 1
}
ns_dev() { # ns_dev NSID: the block device of namespace NSID of $NQN
  local s n
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
    for n in "$s"/nvme*n"$1" /sys/class/nvme/"$ctrl"/nvme*n"$1"; do
      [[ -e $n && ${n##*/} != *c*n* && -b /dev/${n##*/} ]] && { echo "/dev/${n##*/}"; return 0; }
    done
  done
  return 1
}
has_ns() { ns_dev "$1" >/dev/null; }
size_is() { [[ $(blockdev --getsize64 "$1" 2>/dev/null) == "$2" ]]; }

# ---- iSCSI helpers ----------------------------------------------------------------------
lun_disk() { # lun_disk LUN: the disk of LUN of the session to $IQN
  local s b
  for s in /sys/class/iscsi_session/session*; do
    [[ $(cat "$s/targetname" 2>/dev/null) == "$IQN" ]] || continue
    for b in "$s"/device/target*/*:*:*:"$1"/block/*; do
      [[ -e $b && -b /dev/${b##*/} ]] && { echo "/dev/${b##*/}"; return 0; }
    done
  done
  return 1
}

cleanup() {
  local rc=$?
  set +e
  for n in "${!fio_pids[@]}"; do touch "$WORK/stop-$n"; done
  if ((rc)); then
    echo
    echo "===== FAILED in step '$cur_step' (rc=$rc)"
    echo "----- supervisor + pinion log ($PLOG), last 150 lines:"
    tail -n 150 "$PLOG" 2>/dev/null
    echo "----- kernel log since the test started (last 60 lines):"
    dmesg | tail -n +$((dmesg_start + 1)) | tail -n 60
  fi
  for n in "${!fio_pids[@]}"; do wait "${fio_pids[$n]}" 2>/dev/null; done
  timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  timeout 30 iscsiadm -m node -u >/dev/null 2>&1
  [[ -n $iscsid_pid ]] && stop_pid "$iscsid_pid"
  [[ -n $sup_pid ]] && stop_pid "$sup_pid"
  if ((rc)); then echo "RELOAD-E2E: FAIL (step '$cur_step', rc=$rc)"; fi
  exit "$rc"
}
dmesg_start=$(dmesg | wc -l)
trap cleanup EXIT

# ================================================================================
step "environment: kernel $(uname -r), $(nvme version), $(iscsiadm --version), $(fio --version)"
write_config '"vol1"' '"lun0"' 64MiB
sed 's/^/  /' "$CFG"
start_supervised
check "the listening sockets came from the supervisor" grep -q 'listening socket passed in by the service manager' "$PLOG"

step "1. NVMe/TCP: connect, fio on namespace 1"
run nvme connect -t tcp -a "$ADDR" -s "$NPORT" -n "$NQN" --ctrl-loss-tmo=120 --reconnect-delay=1
wait_for 15 has_ns 1
ctrl=$(nvme_ctrl); dev1=$(ns_dev 1)
echo "controller /dev/$ctrl, namespace 1 $dev1"
check "namespace 1 is 64 MiB" size_is "$dev1" $((64 << 20))
run "$BIN" ctl --config "$CFG" status --json
hostnqn=$(cat /etc/nvme/hostnqn 2>/dev/null || nvme show-hostnqn)
check "pinion ctl status --json lists this controller with its host NQN and address" \
  /usr/bin/python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if any(c["host_nqn"]==sys.argv[2] and c["subsystem"]==sys.argv[3] and all(q["peer"].startswith("127.0.0.1:") for q in c["queues"]) and len(c["queues"])>1 for c in s["controllers"]) else 1)' "$LAST" "$hostnqn" "$NQN"
fio_start nvme "$dev1"
sleep 3
nvme_dmesg_start=$(dmesg | wc -l)

step "1a. reload adds namespace 2"
write_config '"vol1", "vol2"' '"lun0"' 64MiB
t=$SECONDS
reload
check "/dev/${ctrl}n2 (or the subsystem's n2) appears within 10 s" wait_for 10 has_ns 2
echo "namespace 2 after $((SECONDS - t)) s: $(ns_dev 2)"
check "the same controller" [ "$(nvme_ctrl)" = "$ctrl" ]
check "namespace 2 is 16 MiB" size_is "$(ns_dev 2)" $((16 << 20))
run dd if="$(ns_dev 2)" of=/dev/null bs=1M count=4 iflag=direct

step "1b. reload grows namespace 1 to 96 MiB"
write_config '"vol1", "vol2"' '"lun0"' 96MiB
reload
check "the host sees 96 MiB within 10 s" wait_for 10 size_is "$dev1" $((96 << 20))

step "1c. reload removes namespace 2"
write_config '"vol1"' '"lun0"' 96MiB
reload
check "namespace 2 is gone within 10 s" wait_for 10 sh -c "! ls /sys/class/nvme/$ctrl/ 2>/dev/null | grep -q 'n2\$' && ! [ -b /dev/${ctrl}n2 ]"

step "1d. an invalid file is rejected whole"
write_config '"vol1", "nosuch"' '"lun0"' 96MiB
rc=0; reload || rc=$?
check "the invalid file is rejected (exit 1: the server said no)" [ "$rc" -eq 1 ]
check "the error names the problem" grep -q nosuch "$LAST"
check "no namespace 2" sh -c "! [ -b /dev/${ctrl}n2 ]"
write_config '"vol1"' '"lun0"' 96MiB
fio_stop nvme
nvme_log=$(dmesg | tail -n +$((nvme_dmesg_start + 1)))
echo "$nvme_log" | grep -i nvme | tail -n 20
check "no reconnect or reset in the kernel log" sh -c "! echo \"\$0\" | grep -Eiq 'reconnect|resetting|failed to connect|I/O error'" "$nvme_log"

step "2. iSCSI: login, fio on LUN 0"
setsid iscsid -f -n >"$WORK/iscsid.log" 2>&1 </dev/null &
iscsid_pid=$!
wait_for 20 sh -c 'ss -xlH | grep -q ISCSIADM_ABSTRACT_NAMESPACE' || { cat "$WORK/iscsid.log"; exit 1; }
run iscsiadm -m discovery -t sendtargets -p "$PORTAL"
run iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
wait_for 20 lun_disk 0
disk0=$(lun_disk 0); echo "LUN 0: $disk0"
fio_start iscsi "$disk0"
sleep 3
scsi_dmesg_start=$(dmesg | wc -l)

step "2a. reload adds LUN 1"
write_config '"vol1"' '"lun0", "lun1"' 96MiB
reload
check "the kernel got REPORTED LUNS DATA HAS CHANGED" wait_for 30 sh -c "dmesg | tail -n +$((scsi_dmesg_start + 1)) | grep -Eiq 'LUN assignments on this target have changed|Reported LUNs data has changed'"
dmesg | tail -n +$((scsi_dmesg_start + 1)) | grep -Ei 'scsi|sd ' | tail -n 5
# the kernel reports the change but does not map new LUNs itself (udev does, on
# its uevent; there is no udev here): rescan as udev would
run iscsiadm -m session -R
check "LUN 1 appears" wait_for 20 lun_disk 1
check "LUN 1 is 16 MiB" size_is "$(lun_disk 1)" $((16 << 20))

step "3. restarts keep the listening sockets: fio on both hosts"
fio_start nvme "$dev1"
sleep 3
step "3a. pinion restarted"
kill -HUP "$sup_pid"
# a start's READY=1 (a reload's says STATUS=reload...)
check "restarted and ready" wait_for 60 sh -c "[ \$(grep -c 'notify READY=1 STATUS=serving' $PLOG) -ge 2 ]"
sleep 5
step "3b. pinion replaced by another binary"
cp "$PINION" "$WORK/pinion.new" && mv -f "$WORK/pinion.new" "$BIN"
kill -HUP "$sup_pid"
check "replaced and ready" wait_for 60 sh -c "[ \$(grep -c 'notify READY=1 STATUS=serving' $PLOG) -ge 3 ]"
check "three pinion processes in all" [ "$(started)" -eq 3 ]
check "the old ones exited cleanly" [ "$(grep -c 'supervisor: exited pid .* status 0' "$PLOG")" -eq 2 ]
check "every one took the supervisor's sockets" [ "$(grep -c 'listening socket passed in by the service manager' "$PLOG")" -eq 6 ]
check "no bind error" sh -c "! grep -q 'cannot listen' $PLOG"
echo "waiting for the hosts to reconnect and a few more passes"
check "NVMe controller live again" wait_for 60 sh -c "[ \"\$(cat /sys/class/nvme/$ctrl/state)\" = live ]"
sleep 15
fio_stop nvme
fio_stop iscsi
dmesg | tail -n +$((scsi_dmesg_start + 1)) | grep -Ei 'nvme|connection|session|recover' | tail -n 20
kio=$(dmesg | tail -n +$((dmesg_start + 1)) | grep -Ei 'I/O error|critical medium|hostbyte=0x[1-9]' || true)
check "no I/O errors in the kernel log" [ -z "$kio" ] || { echo "$kio"; false; }
check "pinion did not panic" sh -c "! grep -q panicked $PLOG"

step "stop"
run nvme disconnect -n "$NQN"
run iscsiadm -m node -u
stop_pid "$iscsid_pid"; iscsid_pid=
stop_pid "$sup_pid"; sup_pid=
tail -n 5 "$PLOG"
trap - EXIT
echo
echo "RELOAD-E2E: PASS"
