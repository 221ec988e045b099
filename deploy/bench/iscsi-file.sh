#!/usr/bin/env bash
# iSCSI on a file volume, two Pinion binaries and tgtd side by side (e.g.
# main against a branch): libiscsi's iscsi-perf (an initiator we did not
# write) reads a 512 MiB file volume with 512-byte blocks (tgtd's), opened
# buffered and read once beforehand so the page cache is warm: 4 KiB random
# reads and 128 KiB sequential reads at QD32. Rounds alternate the order of
# the systems. Every cell prints IOPS and the target's CPU time per I/O (from
# /proc; the steadiest figure on a shared machine). With PERF=1, `pinion
# perf` also runs 4 KiB random read/write QD32 and 128 KiB read/write QD16 on
# a RAM LUN of both Pinions. Targets on CPU 0, initiators on CPU 1. Root (tgtd).
#
#   deploy/bench/iscsi-file.sh PINION_A PINION_B [ROUNDS (3)] [SECONDS (5)]
#
# Ports 3290-3292 (tgtd control port 7); files in $OUT (build/bench/iscsi-file).
# Every process it starts is stopped by PID on exit. A benchmark, not a test.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
A=$1 B=$2 ROUNDS=${3:-3} SECS=${4:-5}
W=${OUT:-$REPO/build/bench/iscsi-file}; mkdir -p "$W"
SIZE=$((512<<20))
for f in a b t; do [[ -f $W/$f.img && $(stat -c %s $W/$f.img) == $SIZE ]] || dd if=/dev/urandom of=$W/$f.img bs=1M count=512 status=none; done
cat $W/a.img $W/b.img $W/t.img >/dev/null
pids=()
cleanup() { tgtadm -C 7 --op delete --mode system >/dev/null 2>&1; for p in "${pids[@]}"; do kill $p 2>/dev/null; done; sleep 0.5; for p in "${pids[@]}"; do kill -9 $p 2>/dev/null; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cfg() { # name port img
cat >$W/$1.toml <<EOT
[nvme_tcp]
listen = []
[iscsi]
listen = ["127.0.0.1:$2"]
nop_interval = 0
[memory]
pool = "1GiB"
[log]
level = "warn"
[[volume]]
name = "f"
backend = "file"
path = "$3"
size = $SIZE
io_mode = "buffered"
block_size = 512
[[volume]]
name = "r"
backend = "ram"
size = $SIZE
block_size = 512
[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:f"
luns = ["f"]
[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:r"
luns = ["r"]
EOT
}
cfg a 3290 $W/a.img; cfg b 3291 $W/b.img
taskset -c 0 $A serve --config $W/a.toml >$W/a.log 2>&1 & PA=$!; pids+=($PA)
taskset -c 0 $B serve --config $W/b.toml >$W/b.log 2>&1 & PB=$!; pids+=($PB)
mkdir -p /run/tgtd
taskset -c 0 tgtd -f --iscsi portal=127.0.0.1:3292 -C 7 >$W/t.log 2>&1 </dev/null & PT=$!; pids+=($PT)
wait_port 3290 && wait_port 3291 && wait_port 3292 || { echo start failed; cat $W/*.log; exit 1; }
sleep 0.5
tgtadm -C 7 --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.tgt:f
tgtadm -C 7 --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b $W/t.img
tgtadm -C 7 --lld iscsi --op bind --mode target --tid 1 -I ALL
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
cell() { # sys pid url args...
  local sys=$1 pid=$2 url=$3; shift 3
  local t0 t1 out iops
  t0=$(ticks $pid)
  out=$(taskset -c 1 timeout -k 5 $((SECS+20)) iscsi-perf -i iqn.2026-11.io.pinion:bench-$RANDOM "$@" -t $SECS "$url" 2>&1 | tr '\r' '\n' | sed -n 's/.*iops average \([0-9]*\).*/\1/p' | tail -n1)
  t1=$(ticks $pid)
  iops=${out:-0}
  printf '%s\t%s\t%s\t%s\n' "$sys" "$*" "$iops" "$(awk -v t=$((t1-t0)) -v hz=$HZ -v n=$iops -v s=$SECS 'BEGIN{ if (n>0) printf "%.1f", t/hz*1e6/(n*s); else print "NA"}')"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq $ROUNDS); do
  if ((r % 2)); then order="A B T"; else order="T B A"; fi
  for wl in "-r -b 8 -m 32" "-b 256 -m 32"; do
    for s in $order; do
      case $s in
        A) cell "main-file r$r" $PA iscsi://127.0.0.1:3290/iqn.2026-11.io.pinion:f/0 $wl ;;
        B) cell "new-file  r$r" $PB iscsi://127.0.0.1:3291/iqn.2026-11.io.pinion:f/0 $wl ;;
        T) cell "tgtd-file r$r" $PT iscsi://127.0.0.1:3292/iqn.2026-11.io.tgt:f/1 $wl ;;
      esac
    done
  done
  echo "load after round $r: $(cut -d' ' -f1-3 /proc/loadavg)"
done
if [[ ${PERF:-0} == 1 ]]; then
  # pinion perf on the RAM LUN: 4k randread/randwrite qd32, 128k read/write qd16
  for r in $(seq $ROUNDS); do
    for wl in "--rw randread --bs 4k --qd 32" "--rw randwrite --bs 4k --qd 32" "--rw read --bs 128k --qd 16" "--rw write --bs 128k --qd 16"; do
      for s in A B; do
        if [[ $s == A ]]; then pid=$PA port=3290; else pid=$PB port=3291; fi
        t0=$(ticks $pid)
        j=$(taskset -c 1 timeout $((SECS+30)) $B perf iscsi://127.0.0.1:$port/iqn.2026-11.io.pinion:r/0 $wl --time $SECS --json 2>/dev/null)
        t1=$(ticks $pid)
        iops=$(echo "$j" | awk -v k='"iops":' '$1 == k {gsub(/,/, "", $2); print $2; exit}')
        printf 'perf-%s r%s\t%s\t%.0f\t%s\n' $s $r "$wl" "${iops:-0}" "$(awk -v t=$((t1-t0)) -v hz=$HZ -v n=${iops:-0} -v s=$SECS 'BEGIN{ if (n>0) printf "%.1f", t/hz*1e6/(n*s); else print "NA"}')"
      done
    done
  done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
