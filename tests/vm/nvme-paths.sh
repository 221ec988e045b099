#!/bin/bash
# The per-I/O read path on the guest's kernel (Debian 12's 6.1 has no
# cachestat(2), so Pinion tells page-cache residency with mincore(2)).  Runs
# INSIDE the initiator VM (host side: tests/vm/run-e2e.sh paths).
#
#   nvme-paths.sh PINION_BINARY
#
# Two `auto` file volumes on an ext4 file system (O_DIRECT works there, not
# on tmpfs): `rw` (writable) and `ro` (read_only), exported as namespaces 1
# and 2 to the kernel nvme-tcp host on the guest's loopback.  The host is
# local, so only the read-only volume may be spliced.  Cold reads (caches
# dropped) must go O_DIRECT on both; hot reads must splice `ro` and copy
# `rw`; small reads are copied; the reactor's io_uring defers its completion
# work to its reaper.  Every read returns the file's bytes.  The verdict is
# read from Pinion's /metrics per volume.  Last line
# "NVME-PATHS: PASS".
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY"; exit 2; }
NQN=nqn.2026-11.io.pinion:paths
ADDR=127.0.0.1 PORT=4420 MPORT=9464
WORK=/dev/shm/nvme-paths
MNT=$WORK/mnt
MIB=64
mkdir -p "$MNT"
pinion_pid= loopdev=

cleanup() {
  nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  if [[ -n $pinion_pid ]]; then
    kill -TERM "$pinion_pid" 2>/dev/null || true
    wait_for 10 sh -c "! kill -0 $pinion_pid" || kill -KILL "$pinion_pid" 2>/dev/null || true
    wait "$pinion_pid" 2>/dev/null || true
  fi
  umount "$MNT" 2>/dev/null || true
  [[ -n $loopdev ]] && losetup -d "$loopdev" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- pinion log"; tail -n 40 "$WORK/pinion.log" 2>/dev/null || true; exit 1; }
wait_for() { local n=$(($1 * 10)); shift; until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done; }

# GET /metrics over bash's /dev/tcp (no HTTP client needed in the guest)
metrics() {
  exec 3<>"/dev/tcp/$ADDR/$MPORT"
  printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}
# metric VOLUME PATH: READs of VOLUME that took PATH
metric() {
  metrics | awk -v k="pinion_volume_read_total{volume=\"$1\",path=\"$2\"}" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }'
}
snapshot() { for v in rw ro; do for p in splice direct copy; do echo "$v.$p=$(metric $v $p)"; done; done; }

echo "kernel $(uname -r)"
truncate -s 256M "$WORK/fs.img"
loopdev=$(losetup --find --show "$WORK/fs.img")
mkfs.ext4 -q -F "$loopdev"
mount "$loopdev" "$MNT"
for v in rw ro; do
  dd if=/dev/urandom of="$MNT/$v.img" bs=1M count=$MIB status=none
done
sync

cat >"$WORK/pinion.toml" <<EOF
[nvme_tcp]
listen = ["$ADDR:$PORT"]
[iscsi]
listen = []
[metrics]
listen = "$ADDR:$MPORT"
[[volume]]
name = "rw"
backend = "file"
path = "$MNT/rw.img"
io_mode = "auto"
[[volume]]
name = "ro"
backend = "file"
path = "$MNT/ro.img"
io_mode = "auto"
read_only = true
[[subsystem]]
nqn = "$NQN"
namespaces = ["rw", "ro"]
hosts = ["*"]
EOF
setsid "$PINION" serve --config "$WORK/pinion.toml" >"$WORK/pinion.log" 2>&1 </dev/null &
pinion_pid=$!
wait_for 30 sh -c "ss -ltnH 'sport = :$PORT' | grep -q ." || fail "pinion does not listen"
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" --ctrl-loss-tmo=30 || fail "nvme connect"
devs=()
for nsid in 1 2; do
  wait_for 15 sh -c "ls /sys/class/nvme-subsystem/*/ | grep -q 'nvme[0-9]*n$nsid\$'" || fail "namespace $nsid did not appear"
done
for s in /sys/class/nvme-subsystem/nvme-subsys*; do
  [[ $(cat "$s/subsysnqn") == "$NQN" ]] || continue
  for nsid in 1 2; do devs[$nsid]=/dev/$(basename "$(ls -d "$s"/nvme*n"$nsid" | head -n 1)"); done
done
echo "rw: ${devs[1]}  ro: ${devs[2]}"
wait_for 10 test -b "${devs[1]}" -a -b "${devs[2]}" || fail "no block devices"

# read DEV: 128 KiB reads of the whole volume (above splice_min), bypassing the
# host's own cache, checked against the backing file
read_all() {
  local dev=$1 img=$2
  cmp <(dd if="$dev" bs=128k iflag=direct status=none) "$img" || fail "$dev differs from $img"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

echo "before: $(snapshot | tr '\n' ' ')"
# cold: nothing of either file is cached (the checks read the files through
# O_DIRECT-free cmp afterwards, so drop again before each pass)
drop_caches
cmp <(dd if="${devs[1]}" bs=128k iflag=direct status=none) <(dd if="$MNT/rw.img" bs=1M iflag=direct status=none) || fail "rw differs"
drop_caches
cmp <(dd if="${devs[2]}" bs=128k iflag=direct status=none) <(dd if="$MNT/ro.img" bs=1M iflag=direct status=none) || fail "ro differs"
echo "cold: $(snapshot | tr '\n' ' ')"
rw_direct=$(metric rw direct) ro_direct=$(metric ro direct)
((rw_direct >= MIB * 8 && ro_direct >= MIB * 8)) || fail "cold 128 KiB reads did not go direct (rw $rw_direct, ro $ro_direct; want >= $((MIB * 8)) each)"

# hot: both files in the page cache
cat "$MNT/rw.img" "$MNT/ro.img" >/dev/null
read_all "${devs[1]}" "$MNT/rw.img"
read_all "${devs[2]}" "$MNT/ro.img"
echo "hot: $(snapshot | tr '\n' ' ')"
ro_splice=$(metric ro splice) rw_copy=$(metric rw copy) rw_splice=$(metric rw splice)
((ro_splice >= MIB * 8)) || fail "hot reads of the read-only volume were not spliced ($ro_splice)"
((rw_copy >= MIB * 8)) || fail "hot reads of the writable volume were not copied for the local host ($rw_copy)"
((rw_splice == 0)) || fail "the writable volume was spliced to a local host ($rw_splice)"

# small: 4 KiB reads are copied whatever the residency
before=$(metric ro copy)
dd if="${devs[2]}" of=/dev/null bs=4k count=256 iflag=direct status=none
small=$(($(metric ro copy) - before))
((small >= 256)) || fail "4 KiB reads were not copied ($small)"
echo "small: $small copies"

# The direct reads above ran on the reactor's io_uring with its completion
# work deferred to the reaper (DEFER_TASKRUN): 6.1 has it, and a reaper
# that missed the kernel's eventfd would have hung the reads instead.
deferred=$(metrics | awk '$1 == "pinion_io_uring_deferred_runs_total" { print $2 }')
((${deferred:-0} > 0)) || fail "no deferred io_uring completions on this kernel ($(uname -r)): pinion_io_uring_deferred_runs_total=${deferred:-missing}"
echo "deferred completion runs: $deferred"

nvme disconnect -n "$NQN"
grep -q panicked "$WORK/pinion.log" && fail "pinion panicked"
echo "NVME-PATHS: PASS"
