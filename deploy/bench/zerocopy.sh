#!/usr/bin/env bash
# Zero-copy data path benchmark (a benchmark, not a test): 128 KiB sequential
# reads from a page-cache-hot file, splice against the copy path, side by side
# in alternating rounds; and 4 KiB random reads (file and RAM), so the cost of
# the path choice and tracking on small I/O shows. Target pinned to core 0,
# initiator to core 1. Prints medians of ROUNDS rounds and the ratios.
#
# The file volume is read-only: on loopback the initiator is local, and a
# local receiver holds spliced pages in its socket queue after our send is
# acknowledged, so Pinion splices to local peers only from volumes that
# cannot change (writable ones are copied; see ReadOpts::local_peer).
#
#   deploy/bench/zerocopy.sh            # ROUNDS=3 SECS=5 by default
#   CORES=2 deploy/bench/zerocopy.sh    # two reactors, the target on CPUs 0 and 1
#
# The initiator is tests/examples/loopback_bench.rs (one thread, QD commands
# in flight, checks every status).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
CORES=${CORES:-}
TCPUS=0; [[ -n $CORES ]] && TCPUS=0-$((CORES - 1))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/build/cargo}
cargo build -q --release -p pinion-target -p pinion-tests --example loopback_bench
BIN=$CARGO_TARGET_DIR/release/pinion
BENCH=$CARGO_TARGET_DIR/release/examples/loopback_bench
work=$(mktemp -d "${TMPDIR:-/var/tmp}/pinion-zc-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A 1 GiB file with real blocks (not a hole), then read once so it is hot.
dd if=/dev/zero of="$work/vol.img" bs=1M count=1024 status=none
cat "$work/vol.img" >/dev/null

serve() { # name port splice_min zerocopy_min
  cat >"$work/$1.toml" <<EOT
[nvme_tcp]
listen = ["127.0.0.1:$2"]
[iscsi]
listen = []
[memory]
splice_min = "$3"
zerocopy_min = "$4"
[log]
level = "warn"
$([[ -n $CORES ]] && printf '[runtime]\ncores = %s\n' "$CORES")
[[volume]]
name = "file"
backend = "file"
path = "$work/vol.img"
io_mode = "auto"
read_only = true
[[volume]]
name = "ram"
backend = "ram"
size = "1GiB"
[[subsystem]]
nqn = "nqn.2026-11.io.pinion:bench"
namespaces = ["file", "ram"]
EOT
  taskset -c "$TCPUS" "$BIN" serve --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$1.pid"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return; sleep 0.1; done
  echo "server $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
serve splice 4471 32KiB 32KiB
serve copy 4472 1MiB 0

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # server port rw bs qd nsid -> "iops mibs p50 p99 cpu%"
  local pid; pid=$(cat "$work/$1.pid")
  local t0; t0=$(cpu_ticks "$pid")
  local out; out=$(taskset -c 1 "$BENCH" "127.0.0.1:$2" nqn.2026-11.io.pinion:bench "$3" "$4" "$5" "$SECS" 1 "$6")
  local t1; t1=$(cpu_ticks "$pid")
  # "read bs=131072 qd=16 queues=1: 29675 IOPS, 3709.4 MiB/s, lat us p50 504 p90 598 p99 2230 ..."
  echo "$out" | awk -v cpu="$(( (t1 - t0) * 100 / hz / SECS ))" '{for(i=1;i<=NF;i++){if($i=="IOPS,")iops=$(i-1); if($i=="MiB/s,")mibs=$(i-1); if($i=="p50")p50=$(i+1); if($i=="p99")p99=$(i+1)}} END{print iops, mibs, p50, p99, cpu}'
}

declare -A res
cases=("file-128k read 131072 16 1" "file-4k randread 4096 32 1" "ram-4k randread 4096 32 2")
for r in $(seq "$ROUNDS"); do
  for c in "${cases[@]}"; do
    set -- $c
    for s in splice copy; do
      port=4471; [ $s = copy ] && port=4472
      res["$1/$s/$r"]=$(run $s $port "$2" "$3" "$4" "$5")
    done
  done
done

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
printf '%-10s %-7s %10s %10s %8s %8s %6s\n' workload path IOPS MiB/s p50_us p99_us cpu%
for c in "${cases[@]}"; do
  set -- $c
  for s in splice copy; do
    vals=(); for r in $(seq "$ROUNDS"); do vals+=("${res[$1/$s/$r]}"); done
    m() { printf '%s\n' "${vals[@]}" | awk -v k="$1" '{print $k}' | median; }
    printf '%-10s %-7s %10s %10s %8s %8s %6s\n' "$1" "$s" "$(m 1)" "$(m 2)" "$(m 3)" "$(m 4)" "$(m 5)"
    eval "med_${s}=$(m 1)"
  done
  awk -v a="$med_splice" -v b="$med_copy" -v w="$1" 'BEGIN{printf "%-10s splice/copy IOPS ratio %.2f\n", w, a/b}'
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r); rounds=$ROUNDS secs=$SECS cores=${CORES:-default}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
