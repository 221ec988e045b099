#!/usr/bin/env bash
# Issue 9's O_DIRECT goal (4 KiB random read at QD32 over NVMe/TCP >= 0.9x
# what fio reads locally) on a disk that serves reads in parallel with a
# fixed latency, the shape of an SSD: Linux null_blk with timer completions
# (irqmode=2, completion_nsec = latency), which the host kernel cannot load
# but the initiator VM (tests/vm/guest-run: Debian 6.1 under QEMU/TCG, so
# every CPU cost is 10-50x the host's) can.  One guest (2 vCPUs) is booted;
# for each latency null_blk is loaded afresh, and rounds alternate the order
# of three cells: local fio on CPU 0 (io_uring, direct, QD32 on /dev/nullb0),
# and Pinion on CPU 0 serving /dev/nullb0 as an O_DIRECT block volume to
# `pinion perf` on CPU 1, sleeping in poll(2) ("sleep") and spinning
# (`--poll`).  Each cell gives IOPS, the CPU time per I/O (Pinion's from
# /proc/PID/stat around the cell, fio's from its own JSON), how busy each
# guest CPU was (/proc/stat), and the disk's bound 32/latency: a cell near
# the bound is disk-limited, one with CPU 0 near 100% busy is CPU-limited.
# "+ms" in the table is Little's law: how much longer than the disk latency
# each read's loop took (32 / IOPS - latency); a fixed +ms costs less the
# slower the disk, so the ratio to fio tends to 1 as the latency grows.
# (Under TCG with main 97259af: fio +0.6-1.1 ms, Pinion +2.5-3.9 ms at every
# latency, even with the target CPU 10-30% busy: 0.48x fio at 500 us, 0.92x
# at 20 ms.)  Prints one line per cell and the medians per latency; ~5.5 min
# with the defaults.  Run it under the heavy lock:
#
#   flock /tmp/pinion-heavy.lock deploy/bench/fio-file-nullblk.sh [--bin PATH] [--latency-us N ...] [--rounds R] [--time S]
#
# Defaults: --bin build/cargo/release/pinion, --latency-us 500 2000 5000 20000 50000,
# --rounds 3, --time 5.  The results leave the guest through a scratch
# directory under /tmp/nullblk/ (removed at the end) and are printed here.
# Env: BENCH_NVME_PORT (4521), GUEST_RUN_CACHE.  Every process it starts (in
# the guest: fio, the target, perf) is stopped by PID; the guest has a
# timeout sized from the cells.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF=$REPO/deploy/bench/fio-file-nullblk.sh
ROUNDS=3 TIME=5 BIN= LAT=() GUEST=
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift ;;
    --latency-us)
      shift
      while (($#)) && [[ $1 =~ ^[0-9]+$ ]]; do LAT+=("$1"); shift; done
      continue ;;
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --guest) GUEST=$2; shift ;; # internal: the part that runs in the guest
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
((${#LAT[@]})) || LAT=(500 2000 5000 20000 50000)
BIN=$(realpath -e -- "${BIN:-$REPO/build/cargo/release/pinion}")

# --------------------------------------------------------------------- host
if [[ -z $GUEST ]]; then
  [[ -x $BIN ]] || { echo "no Pinion binary $BIN" >&2; exit 2; }
  mkdir -p /tmp/nullblk
  S=$(mktemp -d /tmp/nullblk/run.XXXXXX)
  trap 'rm -rf "$S"' EXIT
  # per cell: TIME plus ~10 s of TCG start/stop; boot and module loads on top
  bound=$((120 + ${#LAT[@]} * (20 + ROUNDS * 3 * (TIME + 12))))
  opts=(--smp 2 --mem 2048 --timeout "$bound" --modules "" --rw "$S" --cwd "$REPO")
  # the guest's /tmp is an empty tmpfs unless it shows the host's
  [[ $BIN == /tmp/* || $REPO == /tmp/* ]] && opts+=(--host-tmp)
  [[ -n ${BENCH_NVME_PORT:-} ]] && opts+=(-e BENCH_NVME_PORT)
  echo "fio-file-nullblk: latencies ${LAT[*]} us, $ROUNDS rounds of ${TIME}s, $BIN; guest bound ${bound}s" >&2
  t0=${EPOCHREALTIME/./}
  rc=0
  "$REPO/tests/vm/guest-run" "${opts[@]}" -- "$SELF" --guest "$S" --bin "$BIN" --latency-us "${LAT[@]}" \
    --rounds "$ROUNDS" --time "$TIME" || rc=$?
  us=$((${EPOCHREALTIME/./} - t0))
  [[ -f $S/report ]] && cat "$S/report"
  printf 'total %d.%ds (guest-run rc=%d)\n' $((us / 1000000)) $((us % 1000000 / 100000)) "$rc"
  exit "$rc"
fi

# -------------------------------------------------------------------- guest
[[ ${GUEST_RUN:-} == 1 ]] || { echo "--guest runs only inside guest-run" >&2; exit 2; }
S=$GUEST
REPORT=$S/report
OUT=/tmp/fio-file-nullblk
mkdir -p "$OUT"
DEV=/dev/nullb0
TCPU=0 ICPU=1
say() { echo "$*" | tee -a "$REPORT" >&2; } # progress on stderr; the host prints the report
warn() { echo "$*" | tee -a "$REPORT" >&2; } # inside cells, whose stdout is their result
say "guest $(uname -r): command started $(cut -d' ' -f1 /proc/uptime)s after the kernel"
command -v fio >/dev/null || { say "fio missing"; exit 2; }
# shellcheck source=fio-file-config.sh
. "$(dirname "${BASH_SOURCE[0]}")/fio-file-config.sh"
PORT=$FIO_FILE_PORT
NQN=nqn.2026-11.io.pinion:fio-file
# the fio-file.sh target, on the device: a block device is backend "block"
# (a "file" volume refuses one); 4 KiB blocks and io_mode "direct" as there
fio_file_config "$PORT" "$DEV" | sed 's/^backend = "file"$/backend = "block"/' >"$OUT/pinion.toml"
grep -q '^backend = "block"$' "$OUT/pinion.toml" || { say "fio_file_config changed: no backend line"; exit 2; }

pid= fpid=
stop() { # PID: TERM, up to 10 s, then KILL
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  [[ -n $fpid ]] && kill -KILL -- "-$fpid" 2>/dev/null
  [[ -n $pid ]] && stop "$pid"
  rmmod null_blk 2>/dev/null || true
}
trap cleanup EXIT

# "busy0 busy1" in percent between two samples of `cpus`
cpus() { awk '/^cpu[01] / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat | tr '\n' ' '; }
busy() {
  python3 -c 'import sys; a=list(map(int,sys.argv[1:5])); b=list(map(int,sys.argv[5:9]))
def p(i): w=b[i]-a[i]; t=w+b[i+1]-a[i+1]; return 100.0*w/max(t,1)
print("%.0f %.0f" % (p(0), p(2)))' $1 $2
}

# fio cell: "IOPS fio-CPU-us/IO busy0 busy1"
fio_cell() {
  local c0 c1 rc=0
  c0=$(cpus)
  # timeout makes its own process group: on a hang everything in it dies
  timeout -s KILL $((TIME + 60)) taskset -c "$TCPU" fio --name=local --filename="$DEV" --direct=1 --ioengine=io_uring \
    --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$TIME" --output-format=json \
    >"$OUT/fio.json" 2>"$OUT/fio.err" </dev/null &
  fpid=$!
  wait "$fpid" || rc=$?
  kill -KILL -- "-$fpid" 2>/dev/null || true # no fio job survives its cell
  fpid=
  c1=$(cpus)
  ((rc == 0)) || { warn "fio failed rc=$rc: $(tail -n 3 "$OUT/fio.err")"; echo "0 0 0 0"; return; }
  echo "$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; r=j["read"]
print(round(r["iops"]), round((j["usr_cpu"] + j["sys_cpu"]) / 100 * 1e6 / max(r["iops"], 1e-9), 1))' "$OUT/fio.json") $(busy "$c0" "$c1")"
}

# Pinion cell [--poll]: "IOPS target-CPU-us/IO busy0 busy1 initiator-CPU%"
pinion_cell() {
  local c0 c1 t0 t1 rc=0
  taskset -c "$TCPU" "$BIN" serve --config "$OUT/pinion.toml" >"$OUT/pinion.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true; pid=
    warn "pinion did not start: $(tail -n 5 "$OUT/pinion.log")"; echo "0 0 0 0 0"; return
  fi
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  c0=$(cpus)
  timeout -s KILL $((TIME + 60)) taskset -c "$ICPU" "$BIN" perf "nvme-tcp://127.0.0.1:$PORT/$NQN" --rw randread --bs 4096 \
    --qd 32 --time "$TIME" "$@" --json >"$OUT/perf.json" 2>>"$OUT/pinion.log" </dev/null || rc=$?
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  c1=$(cpus)
  stop "$pid"; pid=
  ((rc == 0)) || { warn "perf $* failed rc=$rc: $(tail -n 3 "$OUT/pinion.log")"; echo "0 0 0 0 0"; return; }
  local b
  b=$(busy "$c0" "$c1")
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); ticks=int(sys.argv[2]); hz=int(sys.argv[3])
print(round(j["iops"]), round(ticks * 1e6 / hz / max(j["ios"], 1), 1), sys.argv[4], sys.argv[5], round(j["cpu"]["percent_of_one_core"]))' \
    "$OUT/perf.json" $((t1 - t0)) "$(getconf CLK_TCK)" $b
}

cells=(fio sleep poll)
declare -A R
table=()
for L in "${LAT[@]}"; do
  rmmod null_blk 2>/dev/null || true
  modprobe null_blk nr_devices=1 gb=1 bs=4096 irqmode=2 completion_nsec=$((L * 1000)) hw_queue_depth=64 ||
    { say "modprobe null_blk failed"; exit 1; }
  for _ in $(seq 50); do [[ -b $DEV ]] && break; sleep 0.1; done
  [[ -b $DEV ]] || { say "no $DEV"; exit 1; }
  bound=$((32000000 / L))
  say "latency ${L} us: disk bound 32/latency = $bound IOPS (null_blk irqmode=2 completion_nsec=$((L * 1000)) hw_queue_depth=64, $(cat /sys/block/nullb0/queue/nr_requests) requests, scheduler $(cat /sys/block/nullb0/queue/scheduler))"
  R=()
  for r in $(seq "$ROUNDS"); do
    order=("${cells[@]}")
    ((r % 2)) || order=($(printf '%s\n' "${cells[@]}" | tac))
    line="  round $r:"
    for c in "${order[@]}"; do
      case $c in
        fio)
          v=($(fio_cell))
          line+=" | fio ${v[0]} IOPS (fio ${v[1]} us CPU/IO; cpu0 ${v[2]}% cpu1 ${v[3]}%)" ;;
        sleep | poll)
          if [[ $c == poll ]]; then v=($(pinion_cell --poll)); else v=($(pinion_cell)); fi
          line+=" | pinion $c ${v[0]} IOPS (target ${v[1]} us CPU/IO; cpu0 ${v[2]}% cpu1 ${v[3]}%; initiator ${v[4]}% of a core)" ;;
      esac
      R[$c.iops]+="${v[0]} " R[$c.cpu]+="${v[1]} " R[$c.busy0]+="${v[2]} "
    done
    say "$line"
  done
  mf=$(med ${R[fio.iops]})
  # the time each read's loop takes beyond the disk's latency (Little: QD32 / IOPS - latency)
  extra() { echo "32000 / ($1 + 0.000001) - $L / 1000" | bc -l; }
  row=$(printf '%6s %8s %8s %5.2f %7s %6s' "$L" "$bound" "$mf" "$(extra "$mf")" "$(med ${R[fio.cpu]})" "$(med ${R[fio.busy0]})%")
  for c in sleep poll; do
    m=$(med ${R[$c.iops]})
    row+=$(printf ' | %8s %5.2fx %5.2f %7s %5s' "$m" "$(echo "$m / ($mf + 0.000001)" | bc -l)" "$(extra "$m")" "$(med ${R[$c.cpu]})" "$(med ${R[$c.busy0]})%")
  done
  table+=("$row")
  rmmod null_blk || { say "rmmod null_blk failed"; exit 1; }
done
say ""
say "medians of $ROUNDS rounds, ${TIME}s cells (guest CPU under TCG; us/IO = CPU time per I/O, cpu0 = how busy the target CPU was):"
say "+ms = how much longer than the disk latency each read's loop took (32 / IOPS - latency)"
say "$(printf '%6s %8s %8s %5s %7s %6s | %8s %6s %5s %7s %5s | %8s %6s %5s %7s %5s' lat_us bound fio +ms fio_us cpu0 sleep ratio +ms tgt_us cpu0 poll ratio +ms tgt_us cpu0)"
for row in "${table[@]}"; do say "$row"; done
say "guest time at the end: $(cut -d' ' -f1 /proc/uptime)s after the kernel"
