#!/usr/bin/env bash
# Two Pinion binaries side by side on one NVMe/TCP workload (a benchmark,
# not a test; run it under the heavy lock): rounds alternate the order, each
# cell starts a fresh target (one reactor, CPU 0, a 1 GiB RAM volume written
# once) and runs `pinion perf` on CPU 1. One line per round: IOPS, the
# target's CPU time per I/O (from /proc/PID/stat around the cell) and p50.
#
#   flock /tmp/pinion-heavy.lock deploy/bench/ab.sh BIN_A BIN_B ROUNDS SECS RW [perf args...]
#   e.g. ... ab.sh /tmp/main/pinion build/cargo/release/pinion 8 4 randread --bs 4k --qd 32 --poll
#
# Env: BENCH_NVME_PORT (4510). Every process it starts is stopped by PID.
set -euo pipefail
(($# >= 5)) || { sed -n 2,12p "$0" >&2; exit 2; }
A=$1 B=$2 ROUNDS=$3 SECS=$4 RW=$5
shift 5
EXTRA=("$@")
PORT=${BENCH_NVME_PORT:-4510}
NQN=nqn.2026-11.io.pinion:bench
D=$(mktemp -d /tmp/pinion-ab.XXXXXX)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
cat >"$D/t.toml" <<EOT
[nvme_tcp]
listen = ["127.0.0.1:$PORT"]
[iscsi]
listen = []
[log]
level = "warn"
[runtime]
cores = 1
[[volume]]
name = "ram"
backend = "ram"
size = "1GiB"
[[subsystem]]
nqn = "$NQN"
namespaces = ["ram"]
EOT
cell() { # BINARY
  taskset -c 0 "$1" serve --config "$D/t.toml" >"$D/serve.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  "$1" perf "nvme-tcp://127.0.0.1:$PORT/$NQN" --rw write --bs 128k --qd 16 --ios 8192 --json >/dev/null
  local t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  timeout -k 5 $((SECS + 30)) taskset -c 1 "$1" perf "nvme-tcp://127.0.0.1:$PORT/$NQN" --rw "$RW" --time "$SECS" --json "${EXTRA[@]}" >"$D/out.json"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("%.1fK %.2fus p50=%.0f" % (d["iops"] / 1e3, int(sys.argv[2]) / int(sys.argv[3]) / max(d["ios"], 1) * 1e6, d["latency"]["p50_us"]))' \
    "$D/out.json" $((t1 - t0)) "$(getconf CLK_TCK)"
}
echo "A: $A"
echo "B: $B"
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then
    echo "round $r ($(cut -d' ' -f1 /proc/loadavg) load): A $(cell "$A") | B $(cell "$B")"
  else
    echo "round $r ($(cut -d' ' -f1 /proc/loadavg) load): B $(cell "$B") | A $(cell "$A")"
  fi
done
