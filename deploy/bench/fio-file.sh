#!/usr/bin/env bash
# O_DIRECT file volume, 4 KiB random read at QD32: what fio (io_uring,
# direct) reads locally from a file against what `pinion perf` reads from
# Pinion serving the same file over NVMe/TCP (issue 9's goal: >= 0.9x).
# fio and the target run on the target CPU, the initiator on the other;
# rounds alternate fio and Pinion, and each Pinion round runs both I/O
# engines (io_uring, and the blocking thread pool via
# PINION_RUNTIME__IO_ENGINE=threads) so one binary gives before and after.
# Prints one line per cell and the medians; each cell also says how many
# reads the disk under the image had in flight on average and how long each
# took there (from /proc/diskstats around the cell; other I/O on that disk
# counts too). Run it under the heavy lock:
#
#   flock /tmp/pinion-heavy.lock deploy/bench/fio-file.sh [--rounds 3] [--time 5] [--bin PATH] [--base PATH] [--no-threads] [--poll] [--busy-poll US]
#
# --base PATH adds a column: another binary (e.g. main's) on io_uring, in
# the same rounds, for before/after; --no-threads drops the thread-pool one;
# --poll makes the initiator spin (`pinion perf --poll`, as SPDK's perf
# does) instead of sleeping in poll(2); --busy-poll US adds a column: Pinion
# on io_uring with `[runtime] busy_poll_us = US` (and, with --base, the base
# binary the same way).
#
# Env: BENCH_NVME_PORT (4521). Every process it starts is stopped by PID.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=3 TIME=5 BIN= BASE= THREADS=1 TCPU=0 ICPU=1 SIZE=1G POLL=() BUSY=
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --base) BASE=$2; shift ;;
    --no-threads) THREADS=0 ;;
    --poll) POLL=(--poll) ;;
    --busy-poll) BUSY=$2; shift ;;
    --size) SIZE=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BIN=${BIN:-$REPO/build/cargo/release/pinion}
# shellcheck source=fio-file-config.sh
. "$(dirname "${BASH_SOURCE[0]}")/fio-file-config.sh"
PORT=$FIO_FILE_PORT
command -v fio >/dev/null || { echo "fio missing" >&2; exit 2; }
IMG=$FIO_FILE_IMG
DATA=$(dirname "$IMG")
OUT=$(mktemp -d /tmp/pinion-fio-file.XXXXXX)
mkdir -p "$DATA"
if [[ ! -f $IMG ]] || (($(stat -c %s "$IMG") != $(numfmt --from=iec "$SIZE"))); then
  # written, not sparse: reads of holes would not touch the device
  dd if=/dev/urandom of="$IMG" bs=1M count=$(($(numfmt --from=iec "$SIZE") >> 20)) status=none
fi
# The device under the image, for its reads in flight (Little's law over
# /proc/diskstats: milliseconds spent reading / elapsed ms) and latency.
dev=$((0x$(stat -c %D "$IMG")))
DEV=$(basename "$(readlink -f "/sys/dev/block/$(((dev >> 8) & 0xfff)):$((dev & 0xff))")")
disk() { awk -v d="$DEV" '$3 == d {print $4, $7}' /proc/diskstats; date +%s%N; }
# "reads in flight, device latency us" between two `disk` samples
disk_delta() {
  local a=($1) b=($2)
  python3 -c 'import sys; r0,m0,t0,r1,m1,t1=map(int,sys.argv[1:]); n=max(r1-r0,1); print("%.1f %.0f" % ((m1-m0)*1e6/(t1-t0), (m1-m0)*1e3/n))' "${a[@]}" "${b[@]}"
}
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT

fio_file_config "$PORT" "$IMG" >"$OUT/pinion.toml"

fio_cell() {
  local d0 d1
  d0=$(disk)
  taskset -c "$TCPU" fio --name=local --filename="$IMG" --direct=1 --ioengine=io_uring --rw=randread --bs=4k \
    --iodepth=32 --time_based --runtime="$TIME" --output-format=json >"$OUT/fio.json" 2>/dev/null
  d1=$(disk)
  echo "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$OUT/fio.json") $(disk_delta "$d0" "$d1")"
}

pinion_cell() { # ENGINE [BINARY]
  local env=() bin=${2:-$BIN}
  [[ $1 == threads ]] && env=(PINION_RUNTIME__IO_ENGINE=threads)
  [[ $1 == busy ]] && env=(PINION_RUNTIME__BUSY_POLL_US=$BUSY)
  env "${env[@]}" taskset -c "$TCPU" "$bin" serve --config "$OUT/pinion.toml" >"$OUT/pinion.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  local t0 t1 d0 d1
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  d0=$(disk)
  taskset -c "$ICPU" "$BIN" perf "nvme-tcp://127.0.0.1:$PORT/nqn.2026-11.io.pinion:fio-file" --rw randread --bs 4096 \
    --qd 32 --time "$TIME" "${POLL[@]}" --json >"$OUT/perf.json" 2>>"$OUT/pinion.log"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  d1=$(disk)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(round(j["iops"]), round((int(sys.argv[2]) * 1e4) / (j["iops"] * float(sys.argv[3])), 2))' \
    "$OUT/perf.json" $((t1 - t0)) "$TIME") $(disk_delta "$d0" "$d1")"
}

# cells in the order of a round; odd rounds run it forwards, even backwards
cells=(fio uring)
[[ -n $BASE ]] && cells+=(base)
((THREADS)) && cells+=(threads)
[[ -n $BUSY ]] && cells+=(busy)
[[ -n $BUSY && -n $BASE ]] && cells+=(basebusy)
cell() {
  case $1 in
    fio) fio_cell ;;
    uring) pinion_cell uring ;;
    base) pinion_cell uring "$BASE" ;;
    threads) pinion_cell threads ;;
    busy) pinion_cell busy ;;
    basebusy) pinion_cell busy "$BASE" ;;
  esac
}
declare -A R
label() { case $1 in fio) echo "fio" ;; uring) echo "pinion io_uring" ;; base) echo "base io_uring" ;; threads) echo "pinion threads" ;; busy) echo "pinion busy_poll_us=$BUSY" ;; basebusy) echo "base busy_poll_us=$BUSY" ;; esac; }
for r in $(seq "$ROUNDS"); do
  order=("${cells[@]}")
  ((r % 2)) || order=($(printf '%s\n' "${cells[@]}" | tac))
  line="round $r ($(cut -d' ' -f1 /proc/loadavg) load):"
  for c in "${order[@]}"; do
    v=($(cell "$c"))
    R[$c]+="${v[0]} "
    if [[ $c == fio ]]; then
      line+=" | fio ${v[0]} IOPS [${v[1]} reads at the device, ${v[2]} us each]"
    else
      line+=" | $(label "$c") ${v[0]} IOPS (${v[1]} us target CPU/IO) [${v[2]} at the device, ${v[3]} us]"
    fi
  done
  echo "$line"
done
mf=$(med ${R[fio]})
line="median: fio $mf"
for c in "${cells[@]}"; do
  [[ $c == fio ]] && continue
  m=$(med ${R[$c]})
  line+=" | $(label "$c") $m ($(printf '%.2f' "$(echo "$m / $mf" | bc -l)")x fio)"
done
echo "$line"
