#!/usr/bin/env bash
# iscsi-perf against Pinion and tgtd (bs_rbd, Debian's tgt-rbd) on the same
# RBD image of a throwaway single-node cluster (scripts/ceph-up.sh), with
# `rbd bench` (librbd alone, no target) as the ceiling: 4 KiB random reads
# at QD32 and 128 KiB sequential reads. A benchmark, not a test: it prints
# numbers and never fails on them. Root (tgtd); run it under
# flock /tmp/pinion-heavy.lock.
#
#   deploy/bench/rbd.sh [PINION_BIN]
#
# The image (1 GiB) is filled first, so reads reach the OSD's objects.
# Both targets export it with 512-byte blocks (tgtd's bs_rbd has no other).
# environment: SECONDS_PER_RUN (10), RUNS (2), DEPTH (32), PINION_PORT
#   (3276), TGTD_PORT (3261), TGTD_CONTROL_PORT (1)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$REPO/build/cargo/release/pinion}
[[ -x $BIN ]] || { echo "no pinion binary at $BIN" >&2; exit 2; }
SECS=${SECONDS_PER_RUN:-10} RUNS=${RUNS:-2} DEPTH=${DEPTH:-32}
PPORT=${PINION_PORT:-3276} TPORT=${TGTD_PORT:-3261} TCTL=${TGTD_CONTROL_PORT:-1}
CEPH_DIR=$(mktemp -d /tmp/pinion-ceph-bench.XXXXXX)
WORK=$(mktemp -d /tmp/rbd-bench.XXXXXX)
pid=
stop() { [[ -n $pid ]] || return 0; kill -TERM "$pid" 2>/dev/null; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }
stop_tgtd() {
  [[ -n $pid ]] || return 0
  tgtadm -C "$TCTL" --op update --mode sys --name State -v offline >/dev/null 2>&1
  tgtadm -C "$TCTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
  tgtadm -C "$TCTL" --op delete --mode system >/dev/null 2>&1
  stop
}
trap 'stop; "$REPO/scripts/ceph-down.sh" "$CEPH_DIR"; rm -rf "$WORK"' EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

"$REPO/scripts/ceph-up.sh" "$CEPH_DIR" >/dev/null || exit 1
export CEPH_CONF=$CEPH_DIR/ceph.conf
rbd create --size 1G rbd/bench 2>/dev/null
rbd bench --io-type write --io-size 4M --io-threads 4 --io-total 1G --io-pattern seq rbd/bench 2>/dev/null | tail -n 1 | sed 's/^/fill: /'

echo "load before: $(uptime)"
echo "== rbd bench (librbd alone: the ceiling)"
for r in $(seq "$RUNS"); do
  echo "rbd-bench 4k-randread run $r: $(rbd bench --io-type read --io-size 4K --io-threads "$DEPTH" --io-total 1G --io-pattern rand rbd/bench 2>/dev/null | grep -E '^elapsed' | sed 's/  */ /g')"
  echo "rbd-bench 128k-read   run $r: $(rbd bench --io-type read --io-size 128K --io-threads "$DEPTH" --io-total 4G --io-pattern seq rbd/bench 2>/dev/null | grep -E '^elapsed' | sed 's/  */ /g')"
done

bench() { # bench NAME URL
  local name=$1 url=$2 kind args r out
  for kind in "4k-randread:-r -b 8" "128k-read:-b 256"; do
    args=${kind#*:}
    for r in $(seq "$RUNS"); do
      # shellcheck disable=SC2086
      out=$(timeout $((SECS + 20)) iscsi-perf $args -m "$DEPTH" -t "$SECS" "$url" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -n 1)
      printf '%-10s %-12s run %d: %s\n' "$name" "${kind%%:*}" "$r" "$out"
    done
  done
}

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
backend = "rbd"
pool = "rbd"
image = "bench"
ceph_conf = "$CEPH_CONF"
block_size = 512
[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:bench"
luns = ["v"]
EOF
"$BIN" serve --config "$WORK/p.toml" >"$WORK/pinion.log" 2>&1 &
pid=$!
wait_port "$PPORT" || { cat "$WORK/pinion.log"; exit 1; }
echo "== Pinion (backend = \"rbd\")"
bench pinion "iscsi://127.0.0.1:$PPORT/iqn.2026-11.io.pinion:bench/0"
stop

mkdir -p /run/tgtd 2>/dev/null
tgtd -f --iscsi "portal=127.0.0.1:$TPORT" -C "$TCTL" >"$WORK/tgtd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do tgtadm -C "$TCTL" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C "$TCTL" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.tgt:bench
tgtadm -C "$TCTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd -b rbd/bench --bsopts "conf=$CEPH_CONF" ||
  { echo "tgtd could not open the image with bs_rbd"; cat "$WORK/tgtd.log"; exit 1; }
tgtadm -C "$TCTL" --lld iscsi --op bind --mode target --tid 1 -I ALL
wait_port "$TPORT" || exit 1
echo "== tgtd (bs_rbd)"
bench tgtd "iscsi://127.0.0.1:$TPORT/iqn.2026-11.io.tgt:bench/1"
stop_tgtd
echo "load after: $(uptime)"
