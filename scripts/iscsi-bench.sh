#!/usr/bin/env bash
# iscsi-perf against Pinion and tgtd side by side: 4 KiB random reads and
# 128 KiB sequential reads, the target pinned to one core and iscsi-perf to
# another. A benchmark, not a test: it prints numbers and never fails on them.
#
#   scripts/iscsi-bench.sh [PINION_BIN]        (root, for tgtd)
#
# Both targets serve a 1 GiB volume with 512-byte blocks: Pinion twice (a
# RAM volume, never written, so reads come from the memfd's holes; and a file
# on /dev/shm filled with random data, like tgtd's), tgtd the same file
# contents on /dev/shm (its rdwr backing store).
#
# environment: SECONDS_PER_RUN (10), RUNS (3), DEPTH (iscsi-perf -m, 32),
#   TARGET_CPU (0), INITIATOR_CPU (1), PINION_PORT (3275), TGTD_PORT (3261),
#   TGTD_CONTROL_PORT (1)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$REPO/build/cargo/release/pinion}
[[ -x $BIN ]] || { echo "no pinion binary at $BIN (cargo build --release -p pinion-target)" >&2; exit 2; }
SECS=${SECONDS_PER_RUN:-10} RUNS=${RUNS:-3} DEPTH=${DEPTH:-32}
TCPU=${TARGET_CPU:-0} ICPU=${INITIATOR_CPU:-1}
PPORT=${PINION_PORT:-3275} TPORT=${TGTD_PORT:-3261} TCTL=${TGTD_CONTROL_PORT:-1}
WORK=$(mktemp -d /dev/shm/iscsi-bench.XXXXXX)
pid=
stop() { [[ -n $pid ]] || return 0; kill -TERM "$pid" 2>/dev/null; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }
stop_tgtd() {
  tgtadm -C "$TCTL" --op update --mode sys --name State -v offline >/dev/null 2>&1
  tgtadm -C "$TCTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
  tgtadm -C "$TCTL" --op delete --mode system >/dev/null 2>&1
  stop
}
trap 'stop_tgtd; rm -rf "$WORK"' EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# CPU time (user + system, all threads) of a process, in clock ticks
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# bench NAME URL: RUNS runs of each workload; prints the iops average of each
# and the target's CPU time per I/O (a measure of its cost that other load on
# the machine disturbs less than the rate does)
bench() {
  local name=$1 url=$2 kind args r out t0 t1 iops hz
  hz=$(getconf CLK_TCK)
  for kind in "4k-randread:-r -b 8" "128k-read:-b 256"; do
    args=${kind#*:}
    for r in $(seq "$RUNS"); do
      t0=$(cputicks "$pid")
      # shellcheck disable=SC2086
      out=$(taskset -c "$ICPU" timeout -k 5 $((SECS + 20)) iscsi-perf $args -m "$DEPTH" -t "$SECS" "$url" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -n 1)
      t1=$(cputicks "$pid")
      iops=$(echo "$out" | awk '{print $3}')
      printf '%-14s %-12s run %d: %-40s target CPU %s us/IO\n' "$name" "${kind%%:*}" "$r" "$(echo "$out" | sed 's/ *$//')" \
        "$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="${iops:-0}" -v s="$SECS" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / (n * s); else print "?" }')"
    done
  done
}

echo "load before: $(uptime)"
echo "iscsi-perf: taskset -c $ICPU iscsi-perf {-r -b 8 | -b 256} -m $DEPTH -t $SECS URL; targets: taskset -c $TCPU"
dd if=/dev/urandom of="$WORK/data.img" bs=1M count=1024 status=none
cp "$WORK/data.img" "$WORK/tgt.img"
for kind in ram file; do
  if [[ $kind == ram ]]; then vol='backend = "ram"'; else vol="backend = \"file\"
path = \"$WORK/data.img\"
io_mode = \"buffered\""; fi
  cat >"$WORK/p.toml" <<EOF
[nvme_tcp]
listen = []
[iscsi]
listen = ["127.0.0.1:$PPORT"]
nop_interval = 0
[log]
level = "warn"
[[volume]]
name = "v"
$vol
size = "1GiB"
block_size = 512
[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:bench"
luns = ["v"]
EOF
  taskset -c "$TCPU" "$BIN" serve --config "$WORK/p.toml" >"$WORK/pinion-$kind.log" 2>&1 &
  pid=$!
  wait_port "$PPORT" || { cat "$WORK/pinion-$kind.log"; exit 1; }
  bench "pinion-$kind" "iscsi://127.0.0.1:$PPORT/iqn.2026-11.io.pinion:bench/0"
  stop
done

mkdir -p /run/tgtd 2>/dev/null
taskset -c "$TCPU" tgtd -f --iscsi "portal=127.0.0.1:$TPORT" -C "$TCTL" >"$WORK/tgtd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do tgtadm -C "$TCTL" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C "$TCTL" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.tgt:bench
tgtadm -C "$TCTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgt.img"
tgtadm -C "$TCTL" --lld iscsi --op bind --mode target --tid 1 -I ALL
wait_port "$TPORT" || exit 1
bench tgtd-file "iscsi://127.0.0.1:$TPORT/iqn.2026-11.io.tgt:bench/1"
stop_tgtd
echo "load after: $(uptime)"
