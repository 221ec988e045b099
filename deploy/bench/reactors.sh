#!/usr/bin/env bash
# Reactor benchmarks (benchmarks, not tests; run under the heavy lock):
#
#   qd1   NVMe/TCP 4 KiB random read at QD1 on a RAM volume, target on CPU 0,
#         `pinion perf` on CPU 1: target busy polling off / on
#         ([runtime] busy_poll_us) x initiator sleeping in poll(2) / spinning
#         (`pinion perf --poll`), plus an optional reference binary (REF).
#   qd32  4 KiB random read and write at QD32 on one queue, one reactor on
#         CPU 0: target busy polling off / on x initiator sleeping / spinning
#         (SPDK's reference figures were taken with both sides polling).
#   scale 4 KiB random read and write at QD32 on 2 queues (one connection
#         each): target with 1 reactor on CPU 0 against 2 reactors on CPUs 0
#         and 1, `pinion perf` on CPU 1 (the machine has 2 cores, so with 2
#         reactors reactor 1 shares CPU 1 with the initiator).
#   scale-file  the same on a buffered file volume read from the page
#         cache: more target work per I/O than RAM, so reactor 1 has CPU
#         left beside the initiator. (On RAM one reactor now serves about
#         what the initiator's core leaves room for: 2 reactors cannot show
#         more there on 2 cores; their CPU per I/O says whether they would.)
#
# Every cell gives IOPS, p50/p99 latency, the target's CPU time per I/O (from
# /proc/PID/stat around the cell) and its CPU as a share of one core, and the
# initiator's CPU. Rounds alternate the order of the systems; the table shows
# medians.
#
#   flock /tmp/pinion-heavy.lock deploy/bench/reactors.sh [qd1|qd32|scale|scale-file|all]
#   env: BIN (default build/cargo/release/pinion), REF (another pinion binary,
#        compared at QD1 and with 2 reactors), ROUNDS=3, SECS=5, BUSY_US=50, OUT (default build/bench/reactors-<time>)
set -euo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-all}
BIN=${BIN:-$PWD/build/cargo/release/pinion}
REF=${REF:-}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
BUSY_US=${BUSY_US:-50}
OUT=${OUT:-$PWD/build/bench/reactors-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
[[ -x $BIN ]] || { echo "no binary $BIN (cargo build --release -p pinion-target)" >&2; exit 2; }
pids=()
DATA=$PWD/build/bench/data
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$DATA"/reactors-*.img
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
NQN=nqn.2026-11.io.pinion:bench
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

# serve NAME BIN PORT CPUS RUNTIME-TOML [file]: a RAM volume, or with
# `file` a buffered file volume (its image under build/bench/data, removed
# at exit), written once either way
serve() {
  local volume='backend = "ram"
size = "1GiB"'
  if [[ ${6:-} == file ]]; then
    mkdir -p "$DATA"
    truncate -s 1G "$DATA/reactors-$1.img"
    volume="backend = \"file\"
path = \"$DATA/reactors-$1.img\"
io_mode = \"buffered\""
  fi
  cat >"$OUT/$1.toml" <<EOT
[nvme_tcp]
listen = ["127.0.0.1:$3"]
[iscsi]
listen = []
[log]
level = "warn"
[runtime]
$5
[[volume]]
name = "vol"
$volume
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol"]
EOT
  taskset -c "$4" "$2" serve --config "$OUT/$1.toml" >"$OUT/$1.log" 2>&1 </dev/null &
  pids+=($!)
  echo $! >"$OUT/$1.pid"
  echo "$3" >"$OUT/$1.port"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$3) 2>/dev/null && break; sleep 0.1; done
  # fill the volume once so reads move real data
  "$BIN" perf "nvme-tcp://127.0.0.1:$3/$NQN" --rw write --bs 128k --qd 16 --ios 8192 --json >/dev/null
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# cell ROUND PART SYSTEM INIT ARGS... -> appends a TSV row
cell() {
  local round=$1 part=$2 sys=$3 init=$4; shift 4
  local pid port j t0 t1
  pid=$(cat "$OUT/$sys.pid"); port=$(cat "$OUT/$sys.port")
  j="$OUT/$part-$sys-$init-$round-$(echo "$*" | tr ' ' '_').json"
  local extra=(); [[ $init == poll ]] && extra=(--poll)
  t0=$(cpu_ticks "$pid")
  timeout -k 5 $((SECS + 60)) taskset -c 1 "$BIN" perf "nvme-tcp://127.0.0.1:$port/$NQN" --time "$SECS" --json "${extra[@]}" "$@" >"$j"
  t1=$(cpu_ticks "$pid")
  python3 - "$j" "$round" "$part" "$sys" "$init" "$*" $((t1 - t0)) "$hz" >>"$OUT/results.tsv" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
rnd, part, system, init, args, ticks, hz = sys.argv[2:9]
cpu_s = int(ticks) / int(hz)
ios = max(j["ios"], 1)
print("\t".join(str(x) for x in [part, args, system, init, rnd, round(j["iops"]), j["latency"]["p50_us"], j["latency"]["p99_us"],
    round(cpu_s / ios * 1e6, 2), round(cpu_s / j["runtime_s"] * 100), round(j["cpu"]["percent_of_one_core"]), j["errors"]]))
EOF
}

printf 'part\targs\tsystem\tinitiator\tround\tiops\tp50_us\tp99_us\ttarget_us_per_io\ttarget_cpu_pct\tperf_cpu_pct\terrors\n' >"$OUT/results.tsv"
say "machine: $(nproc) CPUs, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg); rounds=$ROUNDS secs=$SECS busy_poll_us=$BUSY_US"
say "bin: $BIN${REF:+; ref: $REF}"

if [[ $PART == qd1 || $PART == all ]]; then
  systems=(off on)
  serve off "$BIN" 4481 0 ""
  serve on "$BIN" 4482 0 "busy_poll_us = $BUSY_US"
  if [[ -n $REF ]]; then serve ref "$REF" 4483 0 ""; systems=(ref off on); fi
  for r in $(seq "$ROUNDS"); do
    say "qd1 round $r (load $(cut -d' ' -f1 /proc/loadavg))"
    order=("${systems[@]}"); ((r % 2)) || order=($(printf '%s\n' "${systems[@]}" | tac))
    for s in "${order[@]}"; do
      for i in sleep poll; do cell "$r" qd1 "$s" "$i" --rw randread --bs 4k --qd 1; done
    done
  done
  cleanup; pids=()
fi

if [[ $PART == qd32 || $PART == all ]]; then
  # The issue's reference figures for 4 KiB QD32 come from SPDK's target
  # and its perf tool, both busy polling; this part puts Pinion next to
  # them the same way (one reactor, one queue), and the default way.
  serve q-off "$BIN" 4487 0 "cores = 1"
  serve q-on "$BIN" 4488 0 "cores = 1
busy_poll_us = $BUSY_US"
  for r in $(seq "$ROUNDS"); do
    say "qd32 round $r (load $(cut -d' ' -f1 /proc/loadavg))"
    order=(q-off q-on); ((r % 2)) || order=(q-on q-off)
    for s in "${order[@]}"; do
      for i in sleep poll; do
        for rw in randread randwrite; do cell "$r" qd32 "$s" "$i" --rw $rw --bs 4k --qd 32; done
      done
    done
  done
  cleanup; pids=()
fi

for part in scale scale-file; do
  [[ $PART == "$part" || $PART == all ]] || continue
  kind=; [[ $part == scale-file ]] && kind=file
  serve r1 "$BIN" 4484 0 "cores = 1" $kind
  serve r2 "$BIN" 4485 0,1 "cores = 2" $kind
  systems=(r1 r2)
  if [[ -n $REF ]]; then serve ref-r2 "$REF" 4486 0,1 "cores = 2" $kind; systems=(r1 r2 ref-r2); fi
  for r in $(seq "$ROUNDS"); do
    say "$part round $r (load $(cut -d' ' -f1 /proc/loadavg))"
    order=("${systems[@]}"); ((r % 2)) || order=($(printf '%s\n' "${systems[@]}" | tac))
    for s in "${order[@]}"; do
      for rw in randread randwrite; do cell "$r" $part "$s" sleep --rw $rw --bs 4k --qd 32 --queues 2; done
    done
  done
  cleanup; pids=()
done
say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

# medians per (part, args, system, initiator)
python3 - "$OUT/results.tsv" <<'EOF' | tee "$OUT/table.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = []
for r in rows:
    k = (r["part"], r["args"], r["system"], r["initiator"])
    if k not in keys:
        keys.append(k)
print("| part | workload | target | initiator | IOPS | p50 us | p99 us | target us/IO | target CPU | perf CPU | rounds (IOPS) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for k in keys:
    rs = [r for r in rows if (r["part"], r["args"], r["system"], r["initiator"]) == k]
    med = lambda f: statistics.median(float(r[f]) for r in rs)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {med('iops')/1000:.1f}K | {med('p50_us'):.1f} | {med('p99_us'):.1f} | "
          f"{med('target_us_per_io'):.2f} | {med('target_cpu_pct'):.0f}% | {med('perf_cpu_pct'):.0f}% | "
          + ", ".join(f"{int(r['iops'])/1000:.1f}K" for r in rs) + " |")
EOF
echo "results: $OUT"
