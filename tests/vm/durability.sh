#!/bin/bash
# Durability: no write Pinion acknowledged is lost when Pinion is killed or
# the machine loses power.
#
#   tests/vm/durability.sh [PINION_BIN [DURABLE_IO_BIN]]   # host: boots the guest, runs itself in it
#
# Part 1, SIGKILL (one guest boot). In the initiator VM (tests/vm/guest-run),
# Pinion serves three volumes over NVMe/TCP and iSCSI at once:
#   buffered  a file volume, io_mode = "buffered"  (file on ext4)
#   direct    a file volume, io_mode = "direct"    (file on ext4: O_DIRECT works there, not on tmpfs)
#   block     a block volume: a loop device
# (ext4 lives on a second loop device; both loops are files on the guest's tmpfs.)
# For each protocol, the kernel host (nvme-tcp, then open-iscsi + iscsi_tcp)
# runs one writer per volume (tests/examples/durable_io.rs): numbered 4 KiB
# blocks written in order through O_DIRECT|O_DSYNC, each logged only after its
# write returned, each holding its number, a per-run nonce and a CRC32C.
# Once every writer has DUR_MIN_BEFORE blocks acknowledged, Pinion gets
# SIGKILL while writes are in flight, stays dead DUR_DOWN_SECONDS and is
# started again on the same backing; the host reconnects by itself (NVMe/TCP:
# --ctrl-loss-tmo / --reconnect-delay; iSCSI: replacement_timeout) and the
# writes it held complete. When every writer has DUR_MIN_AFTER more blocks,
# the writers stop and every logged block is read back through the host and
# must be intact. At the end, with Pinion stopped, the last run's blocks are
# read from the backing files/devices themselves; then two logged blocks of
# each backing are damaged (one zeroed, one overwritten by another block) and
# the checker must report exactly those two: the check can fail.
# SIGKILL leaves the guest's page cache intact: part 1 catches writes
# acknowledged before they reached the kernel, not missing fdatasyncs.
#
# Part 2, power cut (two guest boots). The guest gets two virtio disks that
# are files of this machine (QEMU cache=writeback: what the guest wrote to
# them survives the guest, its page cache does not): ext4 on the first holds
# the buffered and direct file volumes, the second is the block volume.
# Pinion serves them over NVMe/TCP; the writers also print each acknowledged
# block on stdout, which leaves the guest as it runs. After
# DUR_POWERCUT_AFTER acknowledged blocks per volume the guest resets at once
# (sysrq b: no sync, no unmount). A second boot mounts the disks (ext4
# replays its journal) and every block whose acknowledgement reached this
# machine must read back intact from the backing. This catches a FUA write or
# FLUSH acknowledged before fdatasync / RWF_DSYNC made it durable (file
# volumes; the block volume's writes reach QEMU directly, so for it this is
# the same check as part 1).
#
# Knobs: DUR_MIN_BEFORE (200), DUR_MIN_AFTER (200), DUR_DOWN_SECONDS (2),
# DUR_WAIT (120 s: bound on each wait for progress), DUR_POWERCUT_AFTER (300).
# A run takes ~3-4 min (three boots). Transcript: build/vm-e2e/durability.log;
# last line "DURABILITY: PASS ...".
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if [[ -z ${GUEST_RUN:-} ]]; then
  bin=${1:-} dio=${2:-}
  pick() { local b; for b in "$@"; do [[ -x $b ]] && { echo "$b"; return; }; done; }
  [[ -n $bin ]] || bin=$(pick "$REPO/build/cargo/release/pinion" "$REPO/build/cargo/debug/pinion")
  [[ -n $dio ]] || dio=$(pick "$REPO/build/cargo/debug/examples/durable_io" "$REPO/build/cargo/release/examples/durable_io")
  [[ -n $bin && -x $bin ]] || { echo "durability: no pinion binary (build it, or pass its path)" >&2; exit 2; }
  [[ -n $dio && -x $dio ]] || { echo "durability: no durable_io (cargo build -p pinion-tests --example durable_io)" >&2; exit 2; }
  bin=$(realpath -e -- "$bin") dio=$(realpath -e -- "$dio")
  OUT=${VM_E2E_OUT:-$REPO/build/vm-e2e}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  opts=(--timeout "${VM_E2E_TIMEOUT:-420}" --cwd "$REPO")
  [[ $REPO == /tmp/* || $bin == /tmp/* || $dio == /tmp/* || $OUT == /tmp/* ]] && opts+=(--host-tmp)
  for v in DUR_MIN_BEFORE DUR_MIN_AFTER DUR_DOWN_SECONDS DUR_WAIT DUR_POWERCUT_AFTER DUR_TRACE RUST_LOG; do
    [[ -n ${!v+x} ]] && opts+=(-e "$v")
  done
  start=$SECONDS
  log=$OUT/durability.log
  : >"$log"
  say() { echo "$*" | tee -a "$log"; }

  # part 1: SIGKILL of Pinion, NVMe/TCP and iSCSI
  "$HERE/guest-run" "${opts[@]}" --console "$OUT/durability.console.log" -- "$HERE/durability.sh" kill "$bin" "$dio" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  say "durability: SIGKILL part rc=$rc ($((SECONDS - start))s)"

  # part 2: power cut of the whole guest (page cache included), NVMe/TCP
  pc=$OUT/powercut
  rm -rf "$pc" && mkdir -p "$pc"
  truncate -s 256M "$pc/fs.img"
  truncate -s 64M "$pc/blk.img"
  drives="-drive file=$pc/fs.img,if=virtio,format=raw,cache=writeback -drive file=$pc/blk.img,if=virtio,format=raw,cache=writeback"
  pcopts=("${opts[@]}" --modules "nvme-tcp virtio_blk loop")
  t=$SECONDS
  GUEST_RUN_QEMU_ARGS="${GUEST_RUN_QEMU_ARGS:-} $drives" "$HERE/guest-run" "${pcopts[@]}" --console "$OUT/powercut-write.console.log" \
    -- "$HERE/durability.sh" powercut-write "$bin" "$dio" >"$pc/write.out" 2>"$pc/write.err"
  prc=$?
  grep -v '^ack-' "$pc/write.out" | tee -a "$log"
  tee -a "$log" <"$pc/write.err"
  # the power may cut the stream mid-line: only whole lines count
  if [[ -s $pc/write.out && $(tail -c 1 "$pc/write.out" | od -An -tx1 | tr -d ' ') != 0a ]]; then
    sed -i '$d' "$pc/write.out"
  fi
  pc_ok=1
  # the guest cannot report an exit status after its power cut: 125 is the good case
  if ((prc != 125)) || ! grep -q '^POWERCUT: now' "$pc/write.out"; then
    say "check: the guest lost power mid-write (guest-run rc 125 after 'POWERCUT: now'; got rc $prc): FAILED"; pc_ok=0
  fi
  for v in buffered direct block; do
    # acknowledgements that made it out of the guest before it died
    awk -v p="ack-$v" '$1 == p && $2 ~ /^[0-9]+$/ && NF == 2 { print $2 }' "$pc/write.out" >"$pc/$v.log"
    awk -v v="$v" '$1 == "nonce" && $2 == v { print $3 }' "$pc/write.out" >"$pc/$v.nonce"
    say "powercut $v: $(wc -l <"$pc/$v.log") acknowledgements reached the host before the power cut"
  done
  if ((pc_ok)); then
    GUEST_RUN_QEMU_ARGS="${GUEST_RUN_QEMU_ARGS:-} $drives" "$HERE/guest-run" "${pcopts[@]}" --console "$OUT/powercut-check.console.log" \
      -- "$HERE/durability.sh" powercut-check "$bin" "$dio" "$pc" 2>&1 | tee -a "$log"
    ((PIPESTATUS[0] == 0)) || pc_ok=0
  fi
  say "durability: power-cut part $( ((pc_ok)) && echo ok || echo FAILED) ($((SECONDS - t))s)"
  ((pc_ok)) && rm -f "$pc/fs.img" "$pc/blk.img"
  ((rc == 0 && pc_ok)) && final=PASS || final=FAIL
  ((rc == 0 && !pc_ok)) && rc=1
  say "DURABILITY: $final (SIGKILL and power cut; wall $((SECONDS - start))s; transcript $log)"
  exit "$rc"
fi

# ---- in the guest -----------------------------------------------------------------
set -e
exec 2>&1
[[ -n ${DUR_TRACE:-} ]] && set -x
MODE=$1 PINION=$2 DIO=$3
MIN_BEFORE=${DUR_MIN_BEFORE:-200}
MIN_AFTER=${DUR_MIN_AFTER:-200}
DOWN=${DUR_DOWN_SECONDS:-2}
WAIT=${DUR_WAIT:-120}
NQN=nqn.2026-11.io.pinion:durable
IQN=iqn.2026-11.io.pinion:durable
ADDR=127.0.0.1 NVME_PORT=4420 ISCSI_PORT=3260
PORTS="$NVME_PORT $ISCSI_PORT"   # what start_pinion waits for
PORTAL=$ADDR:$ISCSI_PORT
W=/dev/shm/durability
CFG=$W/pinion.toml PLOG=$W/pinion.log
VOLS=(buffered direct block)
mkdir -p "$W"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
fail() { echo "check: $*: FAILED"; exit 1; }
wait_for() { # wait_for SECONDS CMD...: poll every 0.1 s (a deadline: under TCG a poll can take a second)
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < end)) || return 1; sleep 0.1; done
}
listening() { [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }
lines() { local n; n=$(wc -l 2>/dev/null <"$1") || n=0; echo "${n:-0}"; }

pinion_pid= iscsid_pid= loop_blk= loop_fs= nonce=
declare -A dev=() wpid=() nonce_of=() log_of=() backing=()

start_pinion() {
  : >>"$PLOG"
  echo "--- pinion start $(date +%T.%N)" >>"$PLOG"
  setsid "$PINION" serve --config "$CFG" >>"$PLOG" 2>&1 </dev/null &
  pinion_pid=$!
  local p
  for p in $PORTS; do
    wait_for 30 listening "$p" || { tail -n 30 "$PLOG"; fail "pinion listening on $p"; }
  done
  echo "pinion pid $pinion_pid listening on $ADDR, ports $PORTS"
}
kill_pinion() {
  kill -KILL "$pinion_pid"
  wait "$pinion_pid" 2>/dev/null || true
  echo "pinion (pid $pinion_pid) killed with SIGKILL at $(date +%T.%N)"
  pinion_pid=
}
stop_pid() { # TERM, 10 s, KILL: our own PIDs only
  kill -TERM "$1" 2>/dev/null || return 0
  wait_for 10 sh -c "! kill -0 $1" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  for v in "${!wpid[@]}"; do kill -KILL "${wpid[$v]}" 2>/dev/null; done
  if ((rc)); then
    echo
    echo "===== FAILED in step '$cur_step' (rc=$rc)"
    echo "----- pinion log, last 60 lines:"; tail -n 60 "$PLOG" 2>/dev/null
    echo "----- kernel log since the test started (last 40 lines):"
    dmesg | tail -n +$((dmesg_start + 1)) | tail -n 40
  fi
  timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  timeout 30 iscsiadm -m node -u >/dev/null 2>&1
  [[ -n $iscsid_pid ]] && stop_pid "$iscsid_pid"
  [[ -n $pinion_pid ]] && stop_pid "$pinion_pid"
  umount "$W/mnt" 2>/dev/null
  [[ -n $loop_fs ]] && losetup -d "$loop_fs"
  [[ -n $loop_blk ]] && losetup -d "$loop_blk"
  ((rc)) && echo "DURABILITY($MODE): FAIL (step '$cur_step', rc=$rc)"
  exit "$rc"
}
dmesg_start=$(dmesg | wc -l)
trap cleanup EXIT

# runs writers on dev[*], kills and restarts Pinion mid-run, checks every
# acknowledged block through the host.  $1: protocol label
kill_mid_run() {
  local proto=$1 v
  step "$proto: writers start (O_DIRECT|O_DSYNC, log after ack)"
  for v in "${VOLS[@]}"; do
    nonce_of[$v]=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
    log_of[$v]=$W/$proto-$v.log
    rm -f "${log_of[$v]}" "${log_of[$v]}.stop"
    "$DIO" write "${dev[$v]}" "${nonce_of[$v]}" "${log_of[$v]}" $((WAIT * 3)) >"$W/$proto-$v.out" 2>&1 &
    wpid[$v]=$!
    echo "$v: ${dev[$v]} nonce ${nonce_of[$v]} writer pid ${wpid[$v]}"
  done
  all_have() { local v; for v in "${VOLS[@]}"; do (($(lines "${log_of[$v]}") >= $1)) || return 1; kill -0 "${wpid[$v]}" || return 1; done; }
  wait_for "$WAIT" all_have "$MIN_BEFORE" || { for v in "${VOLS[@]}"; do echo "$v: $(lines "${log_of[$v]}") acknowledged"; cat "$W/$proto-$v.out"; done; fail "$MIN_BEFORE writes acknowledged on each volume within ${WAIT}s"; }

  step "$proto: SIGKILL Pinion mid-run, restart it after ${DOWN}s on the same backing"
  kill_pinion
  declare -A at_kill=()
  for v in "${VOLS[@]}"; do at_kill[$v]=$(lines "${log_of[$v]}"); done
  sleep "$DOWN"
  for v in "${VOLS[@]}"; do
    echo "$v: ${at_kill[$v]} acknowledged when Pinion died, $(lines "${log_of[$v]}") ${DOWN}s later"
  done
  start_pinion
  all_grew() { local v; for v in "${VOLS[@]}"; do (($(lines "${log_of[$v]}") >= at_kill[$v] + MIN_AFTER)) || return 1; kill -0 "${wpid[$v]}" || return 1; done; }
  wait_for "$WAIT" all_grew || { for v in "${VOLS[@]}"; do echo "$v: $(lines "${log_of[$v]}") acknowledged"; cat "$W/$proto-$v.out"; done; fail "the host reconnected and $MIN_AFTER more writes were acknowledged on each volume within ${WAIT}s"; }
  echo "the host reconnected: every writer has $MIN_AFTER more writes acknowledged"

  step "$proto: writers stop"
  for v in "${VOLS[@]}"; do touch "${log_of[$v]}.stop"; done
  for v in "${VOLS[@]}"; do
    local rc=0
    wait "${wpid[$v]}" || rc=$?
    unset "wpid[$v]"
    cat "$W/$proto-$v.out"
    ((rc == 0)) || fail "$v writer exited with rc=$rc"
  done

  step "$proto: every acknowledged block reads back intact (through the host)"
  local bad=()
  for v in "${VOLS[@]}"; do
    local rc=0
    "$DIO" check "${dev[$v]}" "${nonce_of[$v]}" "${log_of[$v]}" >"$W/$proto-$v.check" 2>&1 || rc=$?
    echo "$proto $v: $(cat "$W/$proto-$v.check")"
    ((rc == 0)) || bad+=("$v")
  done
  ((${#bad[@]} == 0)) || fail "$proto: acknowledged blocks intact (lost on: ${bad[*]})"
}

# the NVMe namespaces 1, 2, 3 of $NQN as dev[buffered], dev[direct], dev[block]
find_ns() {
  local s n
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
    for n in "$s"/nvme*n*; do
      [[ ${n##*/} == *c*n* || ! -e $n/nsid ]] && continue
      case $(cat "$n/nsid") in 1) dev[buffered]=/dev/${n##*/} ;; 2) dev[direct]=/dev/${n##*/} ;; 3) dev[block]=/dev/${n##*/} ;; esac
    done
  done
  [[ -b ${dev[buffered]:-} && -b ${dev[direct]:-} && -b ${dev[block]:-} ]]
}

# ---- power cut (MODE powercut-write, then powercut-check in a new boot) --------
# The guest's disks (/dev/vda: ext4 with the two file volumes; /dev/vdb: the
# block volume) are files of the host behind QEMU (cache=writeback): what the
# guest wrote to them survives the guest, its page cache does not.
PC_AFTER=${DUR_POWERCUT_AFTER:-300}
pc_mount() {
  mkdir -p "$W/mnt"
  mount /dev/vda "$W/mnt"
  backing=([buffered]=$W/mnt/buffered.img [direct]=$W/mnt/direct.img [block]=/dev/vdb)
}
if [[ $MODE == powercut-write ]]; then
  step "power cut: ext4 on /dev/vda (the two file volumes), /dev/vdb (the block volume)"
  mkfs.ext4 -q -F /dev/vda
  pc_mount
  PORTS=$NVME_PORT
  {
    echo '[nvme_tcp]'; echo "listen = [\"$ADDR:$NVME_PORT\"]"
    echo '[iscsi]'; echo 'listen = []'
    for v in "${VOLS[@]}"; do
      echo '[[volume]]'; echo "name = \"$v\""
      if [[ $v == block ]]; then echo 'backend = "block"'; else echo 'backend = "file"'; echo 'size = "64MiB"'; fi
      echo "path = \"${backing[$v]}\""
      [[ $v == buffered ]] && echo 'io_mode = "buffered"' || echo 'io_mode = "direct"'
    done
    echo '[[subsystem]]'; echo "nqn = \"$NQN\""; echo 'namespaces = ["buffered", "direct", "block"]'; echo 'hosts = ["*"]'
  } >"$CFG"
  sed 's/^/  /' "$CFG"
  start_pinion
  if grep -q 'O_DIRECT not available' "$PLOG"; then fail "the direct volumes use O_DIRECT"; fi
  nvme connect -t tcp -a "$ADDR" -s "$NVME_PORT" -n "$NQN" -i 2 --ctrl-loss-tmo=60
  wait_for 20 find_ns || fail "three namespaces of $NQN"
  step "power cut: writers (each acknowledged block is also printed: the log must leave the guest before the power does)"
  for v in "${VOLS[@]}"; do
    nonce_of[$v]=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
    log_of[$v]=$W/pc-$v.log
    echo "nonce $v ${nonce_of[$v]}"
    "$DIO" write "${dev[$v]}" "${nonce_of[$v]}" "${log_of[$v]}" $((WAIT * 3)) "ack-$v" &
    wpid[$v]=$!
  done
  pc_have() { local v; for v in "${VOLS[@]}"; do (($(lines "${log_of[$v]}") >= PC_AFTER)) || return 1; kill -0 "${wpid[$v]}" || return 1; done; }
  wait_for "$WAIT" pc_have || fail "$PC_AFTER writes acknowledged on each volume within ${WAIT}s"
  for v in "${VOLS[@]}"; do echo "$v: $(lines "${log_of[$v]}") acknowledged"; done
  grep -E '^(Dirty|Writeback):' /proc/meminfo
  echo "POWERCUT: now"
  # the stdout relay needs a moment to pass on what was printed (the
  # writers go on meanwhile: the cut still comes mid-write)
  sleep 1
  # an immediate reset: no sync, no unmount; QEMU runs with -no-reboot, so it exits
  echo b >/proc/sysrq-trigger
  sleep 30
  fail "the guest survived its power cut"
fi
if [[ $MODE == powercut-check ]]; then
  LOGS=$4
  step "power cut: in a new boot, every block acknowledged before the power cut reads back from the backing"
  pc_mount
  bad=()
  for v in "${VOLS[@]}"; do
    rc=0
    "$DIO" check "${backing[$v]}" "$(cat "$LOGS/$v.nonce")" "$LOGS/$v.log" >"$W/pc-$v.check" 2>&1 || rc=$?
    echo "powercut $v: $(cat "$W/pc-$v.check")"
    ((rc == 0)) || bad+=("$v")
  done
  ((${#bad[@]} == 0)) || fail "powercut: acknowledged blocks intact (lost on: ${bad[*]})"
  umount "$W/mnt"
  trap - EXIT
  echo "DURABILITY(powercut): PASS"
  exit 0
fi
[[ $MODE == kill ]] || fail "mode '$MODE' is one of kill, powercut-write, powercut-check"

# ---- the test ----------------------------------------------------------------
step "environment: kernel $(uname -r), $(nvme version), $(iscsiadm --version)"
echo "pinion: $PINION"; echo "writer: $DIO"
echo "DUR_MIN_BEFORE=$MIN_BEFORE DUR_MIN_AFTER=$MIN_AFTER DUR_DOWN_SECONDS=$DOWN DUR_WAIT=$WAIT"

step "backing: ext4 on a loop device (the two file volumes), a loop device (the block volume)"
truncate -s 256M "$W/fs.img"
truncate -s 64M "$W/blk.img"
loop_fs=$(losetup -f --show "$W/fs.img")
loop_blk=$(losetup -f --show "$W/blk.img")
mkfs.ext4 -q -F "$loop_fs"
mkdir -p "$W/mnt"
mount "$loop_fs" "$W/mnt"
backing=([buffered]=$W/mnt/buffered.img [direct]=$W/mnt/direct.img [block]=$loop_blk)
echo "file system: $loop_fs on $W/mnt ($(findmnt -no FSTYPE "$W/mnt")); block volume: $loop_blk"
cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$NVME_PORT"]
[iscsi]
listen = ["$PORTAL"]
[[volume]]
name = "buffered"
backend = "file"
path = "${backing[buffered]}"
size = "64MiB"
io_mode = "buffered"
[[volume]]
name = "direct"
backend = "file"
path = "${backing[direct]}"
size = "64MiB"
io_mode = "direct"
[[volume]]
name = "block"
backend = "block"
path = "$loop_blk"
io_mode = "direct"
[[subsystem]]
nqn = "$NQN"
namespaces = ["buffered", "direct", "block"]
hosts = ["*"]
[[iscsi_target]]
iqn = "$IQN"
luns = ["buffered", "direct", "block"]
EOF
sed 's/^/  /' "$CFG"

step "start Pinion"
start_pinion
if grep -q 'O_DIRECT not available' "$PLOG"; then
  grep 'O_DIRECT not available' "$PLOG"; fail "the direct volumes use O_DIRECT"
fi

# ---- NVMe/TCP ----------------------------------------------------------------
step "NVMe/TCP: connect (ctrl-loss-tmo $((WAIT * 2))s, reconnect-delay 1s)"
nvme connect -t tcp -a "$ADDR" -s "$NVME_PORT" -n "$NQN" -i 2 --ctrl-loss-tmo=$((WAIT * 2)) --reconnect-delay=1
wait_for 20 find_ns || { ls -l /sys/class/nvme-subsystem/*/ 2>&1; fail "three namespaces of $NQN"; }
for v in "${VOLS[@]}"; do echo "$v: ${dev[$v]} ($(blockdev --getsize64 "${dev[$v]}") bytes, $(cat /sys/block/"${dev[$v]#/dev/}"/queue/write_cache))"; done

kill_mid_run nvme

step "NVMe/TCP: disconnect"
nvme disconnect -n "$NQN"

# ---- iSCSI -------------------------------------------------------------------
step "iSCSI: iscsid, discovery, login (replacement_timeout $((WAIT * 2))s)"
setsid iscsid -f -n >"$W/iscsid.log" 2>&1 </dev/null &
iscsid_pid=$!
wait_for 20 sh -c 'ss -xlH | grep -q ISCSIADM_ABSTRACT_NAMESPACE' || { cat "$W/iscsid.log"; fail "iscsid up"; }
iscsiadm -m discovery -t sendtargets -p "$PORTAL"
iscsiadm -m node -T "$IQN" -p "$PORTAL" -o update -n node.session.timeo.replacement_timeout -v $((WAIT * 2))
iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
find_luns() {
  local s b l
  for s in /sys/class/iscsi_session/session*; do
    [[ $(cat "$s/targetname" 2>/dev/null) == "$IQN" ]] || continue
    for l in 0 1 2; do
      for b in "$s"/device/target*/*:*:*:$l/block/*; do
        [[ -e $b ]] || continue
        case $l in 0) dev[buffered]=/dev/${b##*/} ;; 1) dev[direct]=/dev/${b##*/} ;; 2) dev[block]=/dev/${b##*/} ;; esac
      done
    done
  done
  [[ -b ${dev[buffered]:-} && -b ${dev[direct]:-} && -b ${dev[block]:-} ]]
}
dev=()
wait_for 20 find_luns || { ls -lR /sys/class/iscsi_session/ 2>&1 | head -40; fail "three LUNs of $IQN"; }
for v in "${VOLS[@]}"; do echo "$v: ${dev[$v]} ($(blockdev --getsize64 "${dev[$v]}") bytes, $(cat /sys/block/"${dev[$v]#/dev/}"/queue/write_cache))"; done

kill_mid_run iscsi

step "iSCSI: logout"
iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
stop_pid "$iscsid_pid"; iscsid_pid=

# ---- the backing itself, and the check can fail --------------------------------
step "stop Pinion; the last run's blocks, read from the backing files and device"
stop_pid "$pinion_pid"; pinion_pid=
if grep -q panicked "$PLOG"; then fail "pinion did not panic"; fi
bad=()
for v in "${VOLS[@]}"; do
  echo "backing of $v (${backing[$v]}):"
  "$DIO" check "${backing[$v]}" "${nonce_of[$v]}" "${log_of[$v]}" || bad+=("$v")
done
((${#bad[@]} == 0)) || fail "acknowledged blocks intact in the backing (lost on: ${bad[*]})"

step "the check can fail: one logged block zeroed, another overwritten by block 1, per backing"
for v in "${VOLS[@]}"; do
  n=$(lines "${log_of[$v]}")
  zero=$((n / 3)) moved=$((n - 1))
  dd if=/dev/zero of="${backing[$v]}" bs=4096 seek=$zero count=1 conv=notrunc oflag=direct status=none
  dd if="${backing[$v]}" of="${backing[$v]}" bs=4096 skip=1 seek=$moved count=1 conv=notrunc iflag=direct oflag=direct status=none
  echo "$v: damaged blocks $zero and $moved"
  out=$("$DIO" check "${backing[$v]}" "${nonce_of[$v]}" "${log_of[$v]}") && rc=0 || rc=$?
  echo "$out"
  [[ $rc == 1 ]] && grep -q ', bad 2$' <<<"$out" && grep -q "block $zero: missing" <<<"$out" \
    && grep -q "block $moved: misplaced" <<<"$out" || fail "$v: the checker reports exactly the two damaged blocks"
  echo "check: $v: the checker caught both: ok"
done

step "summary"
for p in nvme iscsi; do
  for v in "${VOLS[@]}"; do
    printf '%-5s %-8s %s; %s\n' "$p" "$v" "$(grep -o 'acknowledged [0-9]*, checked [0-9]*, intact [0-9]*, bad [0-9]*' "$W/$p-$v.check")" \
      "$(grep -o 'slowest write: .*' "$W/$p-$v.out")"
  done
done
trap - EXIT
umount "$W/mnt"; losetup -d "$loop_fs"; losetup -d "$loop_blk"
echo
echo "DURABILITY(kill): PASS"
