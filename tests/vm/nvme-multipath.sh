#!/bin/bash
# NVMe multipath (ANA) with the Linux kernel host.  Runs INSIDE the initiator
# VM (host side: tests/vm/run-e2e.sh multipath).
#
#   nvme-multipath.sh PINION_BINARY
#
# Pinion serves one subsystem through two listeners, 127.0.0.1:4420 (ANA
# optimized) and 127.0.0.1:4421 (non-optimized).  The kernel host (native
# multipath, nvme_core.multipath=Y) connects through both; `nvme
# list-subsys` must show the two paths with their states.  While fio writes
# and verifies (crc32c; back-to-back passes of 32 MiB random writes, each
# read back and checked: fio skips verification in time_based jobs) on the
# multipath device, `pinion reload` makes
# 4420 inaccessible (and 4421 optimized), then restores the states: fio
# ends with 0 errors, no I/O error reaches the kernel log, and the per-path
# I/O counters (sysfs of the hidden per-path disks) show the I/O on 4420,
# then on 4421 only, then on 4420 again.  Last line "NVME-MULTIPATH: PASS".
#
# environment: MP_PHASE (seconds per phase, default 8), CTRL_LOSS_TMO
# (default 30).
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY"; exit 2; }
NQN=nqn.2026-11.io.pinion:mp
ADDR=127.0.0.1 P1=4420 P2=4421
WORK=/dev/shm/nvme-multipath
CFG=$WORK/pinion.toml
SOCK=$WORK/ctl.sock
IMG=$WORK/vol1.img
PHASE=${MP_PHASE:-8}
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-30}
mkdir -p "$WORK"
pinion_pid= fio_pid=

wait_for() { local n=$(($1 * 10)); shift; until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done; }
cleanup() {
  local rc=$?
  set +e
  [[ -n $fio_pid ]] && kill "$fio_pid" 2>/dev/null && wait "$fio_pid" 2>/dev/null
  timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  if [[ -n $pinion_pid ]]; then
    kill -TERM "$pinion_pid" 2>/dev/null
    wait_for 10 sh -c "! kill -0 $pinion_pid" || kill -KILL "$pinion_pid" 2>/dev/null
    wait "$pinion_pid" 2>/dev/null
  fi
  if ((rc)); then
    echo "--- pinion log (last 60 lines)"; tail -n 60 "$WORK/pinion.log" 2>/dev/null
    echo "--- kernel log (nvme, last 40 lines)"; dmesg | tail -n +$((dmesg_start + 1)) | grep -i nvme | tail -n 40
    echo "NVME-MULTIPATH: FAIL"
  fi
  exit "$rc"
}
fail() { echo "FAIL: $*"; exit 1; }
step() { printf '\n===== %s\n' "$*"; }

# write_config OPTIMIZED_PORTS NON_OPTIMIZED_PORTS INACCESSIBLE_PORTS (each a TOML list body)
write_config() {
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$P1", "$ADDR:$P2"]
[management]
socket = "$SOCK"
[[volume]]
name = "vol1"
backend = "file"
path = "$IMG"
size = "256MiB"
io_mode = "buffered"
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol1"]
[[ana_group]]
id = 1
volumes = ["vol1"]
optimized = [$1]
non_optimized = [$2]
inaccessible = [$3]
EOF
}

# the kernel's per-path disks of the namespace: nvme<subsys>c<ctrl>n1, by port
path_of_port() { # PORT -> the per-path disk name through that listener
  local c
  for c in /sys/class/nvme-subsystem/nvme-subsys*/nvme[0-9]*; do
    [[ $(cat "$c/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
    if grep -q "trsvcid=$1\b" "$c/address" 2>/dev/null; then
      local p
      # the hidden per-path disk is a child of its controller
      for p in "$c"/nvme*c*n1; do [[ -e $p ]] && { echo "${p##*/}"; return 0; }; done
    fi
  done
  return 1
}
ios() { awk '{ print $1 + $5 }' "/sys/block/$1/stat"; } # reads + writes completed
ana() { cat "/sys/block/$1/ana_state"; }

dmesg_start=$(dmesg | wc -l)
trap cleanup EXIT

step "environment: kernel $(uname -r), $(nvme version), $(fio --version)"
mp=$(cat /sys/module/nvme_core/parameters/multipath)
echo "nvme_core.multipath=$mp"
[[ $mp == Y ]] || fail "the guest kernel has native NVMe multipath off"

step "start pinion: $ADDR:$P1 optimized, $ADDR:$P2 non-optimized"
truncate -s 256M "$IMG"
write_config "\"$ADDR:$P1\"" "\"$ADDR:$P2\"" ""
sed 's/^/  /' "$CFG"
setsid "$PINION" serve --config "$CFG" >"$WORK/pinion.log" 2>&1 </dev/null &
pinion_pid=$!
wait_for 30 sh -c "ss -ltnH 'sport = :$P2' | grep -q ." || fail "pinion not listening on $P2"

step "connect through both listeners"
for p in $P1 $P2; do
  nvme connect -t tcp -a "$ADDR" -s "$p" -n "$NQN" -i 2 --ctrl-loss-tmo="$CTRL_LOSS_TMO"
done
wait_for 15 path_of_port $P1 || fail "no path through $P1"
wait_for 15 path_of_port $P2 || fail "no path through $P2"
A=$(path_of_port $P1) B=$(path_of_port $P2)
head=/dev/${A%%c*}n1
wait_for 15 test -b "$head" || fail "no multipath device $head"
echo "multipath device $head; path $A via $P1, path $B via $P2"
nvme list-subsys
nvme list-subsys "$head" | tee "$WORK/ls1"
grep -Eq "trsvcid=$P1.* live optimized" "$WORK/ls1" || fail "list-subsys: $P1 is not live optimized"
grep -Eq "trsvcid=$P2.* live non-optimized" "$WORK/ls1" || fail "list-subsys: $P2 is not live non-optimized"
# the controller of path nvme<S>c<C>n1 is nvme<C>
ctrl_a=${A#*c}; ctrl_a=nvme${ctrl_a%%n*}
nvme ana-log "/dev/$ctrl_a" | tee "$WORK/ana1" || fail "nvme ana-log /dev/$ctrl_a"
grep -Eq 'state[[:space:]]*:[[:space:]]*optimized' "$WORK/ana1" || fail "ana-log of $ctrl_a ($P1) does not say optimized"
[[ $(ana "$A") == optimized && $(ana "$B") == non-optimized ]] || fail "sysfs ana_state: $A=$(ana "$A") $B=$(ana "$B")"
cat /sys/class/nvme-subsystem/nvme-subsys*/iopolicy 2>/dev/null | sed 's/^/iopolicy: /'

# fio passes until $WORK/stop exists; each pass writes 32 MiB at random and
# reads every block back against its crc32c
fio_loop() {
  local i=0
  while [[ ! -e $WORK/stop ]]; do
    i=$((i + 1))
    if ! fio --name="mp-verify-$i" --filename="$head" --rw=randwrite --bs=4k --size=32M \
      --randseed="$i" --verify=crc32c --direct=1 --ioengine=libaio --iodepth=16 \
      --output="$WORK/fio.$i.out"; then
      echo "fio pass $i failed:"; cat "$WORK/fio.$i.out"; return 1
    fi
    grep -Eq 'err= *0' "$WORK/fio.$i.out" || { echo "fio pass $i reported errors:"; cat "$WORK/fio.$i.out"; return 1; }
    grep -E '^ *(read|write):' "$WORK/fio.$i.out" | sed "s/^ */pass $i: /"
  done
  echo "fio: $i passes, each written and verified, 0 errors"
}
step "fio: random write + crc32c verify on $head, paths switched under it"
rm -f "$WORK/stop"
fio_loop >"$WORK/fio.out" 2>&1 &
fio_pid=$!

# phase NAME: counts the I/O of each path over PHASE seconds
declare -A delta
phase() {
  local a0 b0
  a0=$(ios "$A") b0=$(ios "$B")
  sleep "$PHASE"
  delta[$1.A]=$(($(ios "$A") - a0)) delta[$1.B]=$(($(ios "$B") - b0))
  echo "phase $1: $A ($P1, $(ana "$A")) +${delta[$1.A]} I/Os, $B ($P2, $(ana "$B")) +${delta[$1.B]} I/Os"
}
sleep 2
phase before
((delta[before.A] > 100 && delta[before.B] == 0)) || fail "before the change the I/O must go to the optimized path $P1 only"

step "reload: $P1 inaccessible, $P2 optimized"
write_config "\"$ADDR:$P2\"" "" "\"$ADDR:$P1\""
"$PINION" reload --socket "$SOCK"
wait_for 15 sh -c "[ \"\$(cat /sys/block/$A/ana_state)\" = inaccessible ]" || fail "$A did not become inaccessible"
nvme list-subsys "$head" | tee "$WORK/ls2"
grep -Eq "trsvcid=$P1.* live inaccessible" "$WORK/ls2" || fail "list-subsys: $P1 is not live inaccessible"
grep -Eq "trsvcid=$P2.* live optimized" "$WORK/ls2" || fail "list-subsys: $P2 is not live optimized"
sleep 1
phase switched
((delta[switched.A] == 0 && delta[switched.B] > 100)) || fail "with $P1 inaccessible the I/O must move to $P2"

step "reload: back to $P1 optimized, $P2 non-optimized"
write_config "\"$ADDR:$P1\"" "\"$ADDR:$P2\"" ""
"$PINION" reload --socket "$SOCK"
wait_for 15 sh -c "[ \"\$(cat /sys/block/$A/ana_state)\" = optimized ]" || fail "$A did not become optimized again"
nvme list-subsys "$head" | tee "$WORK/ls3"
grep -Eq "trsvcid=$P1.* live optimized" "$WORK/ls3" || fail "list-subsys: $P1 is not live optimized again"
sleep 1
phase back
((delta[back.A] > 100 && delta[back.B] == 0)) || fail "the I/O must come back to $P1"

step "fio result"
touch "$WORK/stop"
rc=0; wait "$fio_pid" || rc=$?; fio_pid=
cat "$WORK/fio.out"
((rc == 0)) || fail "fio rc=$rc"
kio=$(dmesg | tail -n +$((dmesg_start + 1)) | grep -E 'I/O Error|I/O error|critical medium|Buffer I/O' || true)
[[ -z $kio ]] || { echo "$kio"; fail "I/O errors in the kernel log"; }
echo "kernel log (nvme):"; dmesg | tail -n +$((dmesg_start + 1)) | grep -i nvme | tail -n 20
grep -c 'path states applied' "$WORK/pinion.log" | sed 's/^/pinion: reloads that changed path states: /'

step "disconnect"
nvme disconnect -n "$NQN"
trap - EXIT
set +e
kill -TERM "$pinion_pid"; wait_for 10 sh -c "! kill -0 $pinion_pid"; wait "$pinion_pid"
echo
echo "NVME-MULTIPATH: PASS (I/Os per phase: before $P1=${delta[before.A]} $P2=${delta[before.B]}; switched $P1=${delta[switched.A]} $P2=${delta[switched.B]}; back $P1=${delta[back.A]} $P2=${delta[back.B]})"
