#!/usr/bin/env bash
# iscsi-perf against Pinion and tgtd (bs_rbd, Debian's tgt-rbd) on the same
# RBD image of a throwaway single-node cluster (scripts/ceph-up.sh), with
# `rbd bench` (librbd alone, no target) as the ceiling: 4 KiB random reads
# at QD32 and 128 KiB sequential reads at QD32. A benchmark, not a test: it
# prints numbers and never fails on them. Root (tgtd); run it under
# flock /tmp/pinion-heavy.lock.
#
# The `hop` cell is the iSCSI hop alone: the same iscsi-perf against a null
# LUN of the same Pinion (no cluster behind it). With the CPU time per I/O of
# every party (target, OSD, initiator) and how busy the machine was, the
# summary bounds what any iSCSI target can reach here: the rates on this
# machine follow the CPU time a read costs all parties together
# (docs/rbd.md), and a target does librbd's work plus the hop's, so at best
# it reaches rbd bench x (client + OSD) / (client + OSD + hop target +
# hop initiator), CPU time per I/O each.
#
#   deploy/bench/rbd.sh [--rounds N] [--time S] [--ref BIN] [PINION_BIN]
#
# Every cell runs once per round; odd rounds run the systems in one order,
# even rounds in the reverse order; the summary gives the median of each
# cell over the rounds, the ratios of the medians, and each target's CPU
# time per I/O (its whole process: for Pinion and tgtd that includes
# librbd's threads; for `rbd bench` the rbd process). With --ref, a second
# Pinion binary (e.g. main's) is measured beside the first.
#
# The image (1 GiB) is filled first, so reads reach the OSD's objects.
# Both targets export it with 512-byte blocks (tgtd's bs_rbd has no other)
# and stay up for the whole run (both have the image open; reads need no
# lock). Nothing is pinned: the OSD, librbd's threads and the initiator
# share the machine's CPUs as they would on a gateway (Pinion's reactors
# pin themselves, as they always do).
#
# options: --rounds N (3), --time S (seconds per iscsi-perf cell, 8),
#   --depth N (32), --out DIR (build/bench/rbd-<timestamp>)
# environment: PINION_PORT (3276), REF_PORT (3277), TGTD_PORT (3261),
#   TGTD_CONTROL_PORT (1)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS=3 SECS=8 DEPTH=32 REF= OUT= BIN=
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --time) SECS=$2; shift ;;
    --depth) DEPTH=$2; shift ;;
    --ref) REF=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) BIN=$1 ;;
  esac
  shift
done
BIN=${BIN:-$REPO/build/cargo/release/pinion}
[[ -x $BIN ]] || { echo "no pinion binary at $BIN" >&2; exit 2; }
[[ -z $REF || -x $REF ]] || { echo "no pinion binary at $REF" >&2; exit 2; }
for t in tgtd tgtadm iscsi-perf rbd python3; do
  command -v "$t" >/dev/null || { echo "$t missing: run scripts/install-test-deps.sh" >&2; exit 2; }
done
PPORT=${PINION_PORT:-3276} RPORT=${REF_PORT:-3277} TPORT=${TGTD_PORT:-3261} TCTL=${TGTD_CONTROL_PORT:-1}
OUT=${OUT:-$REPO/build/bench/rbd-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS=$OUT/results.tsv
: >"$RESULTS"
say() { printf '%s\n' "$*" | tee -a "$OUT/run.log"; }
CEPH_DIR=$(mktemp -d /tmp/pinion-ceph-bench.XXXXXX)
pids=()
stop_pid() {
  local p=$1
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}
tgtd_pid=
cleanup() {
  if [[ -n $tgtd_pid ]]; then
    tgtadm -C "$TCTL" --op update --mode sys --name State -v offline >/dev/null 2>&1
    tgtadm -C "$TCTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
    tgtadm -C "$TCTL" --op delete --mode system >/dev/null 2>&1
    stop_pid "$tgtd_pid"
  fi
  for p in "${pids[@]}"; do stop_pid "$p"; done
  "$REPO/scripts/ceph-down.sh" "$CEPH_DIR"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# CPU time of a process (all its threads) in clock ticks
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# all CPUs' ticks: in total, and idle (idle + iowait)
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
HZ=$(getconf CLK_TCK)

"$REPO/scripts/ceph-up.sh" "$CEPH_DIR" >"$OUT/ceph-up.log" 2>&1 || { cat "$OUT/ceph-up.log"; exit 1; }
export CEPH_CONF=$CEPH_DIR/ceph.conf
rbd create --size 1G rbd/bench 2>/dev/null
say "fill: $(rbd bench --io-type write --io-size 4M --io-threads 4 --io-total 1G --io-pattern seq rbd/bench 2>/dev/null | tail -n 1)"

pinion() { # pinion BIN PORT NAME
  cat >"$OUT/$3.toml" <<EOF
[nvme_tcp]
listen = []
[iscsi]
listen = ["127.0.0.1:$2"]
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
[[volume]]
name = "null"
backend = "null"
size = "1G"
block_size = 512
[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:bench"
luns = ["v", "null"]
EOF
  "$1" serve --config "$OUT/$3.toml" >"$OUT/$3.log" 2>&1 &
  pids+=($!)
  wait_port "$2" || { cat "$OUT/$3.log"; exit 1; }
}
declare -A URL PID
pinion "$BIN" "$PPORT" pinion
URL[pinion]=iscsi://127.0.0.1:$PPORT/iqn.2026-11.io.pinion:bench/0 PID[pinion]=${pids[-1]}
URL[hop]=iscsi://127.0.0.1:$PPORT/iqn.2026-11.io.pinion:bench/1 PID[hop]=${pids[-1]}
SYSTEMS="rbd-bench pinion"
if [[ -n $REF ]]; then
  pinion "$REF" "$RPORT" pinion-ref
  URL[pinion-ref]=iscsi://127.0.0.1:$RPORT/iqn.2026-11.io.pinion:bench/0 PID[pinion-ref]=${pids[-1]}
  SYSTEMS+=" pinion-ref"
fi
mkdir -p /run/tgtd 2>/dev/null
tgtd -f --iscsi "portal=127.0.0.1:$TPORT" -C "$TCTL" >"$OUT/tgtd.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 100); do tgtadm -C "$TCTL" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C "$TCTL" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.tgt:bench &&
  tgtadm -C "$TCTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd -b rbd/bench --bsopts "conf=$CEPH_CONF" &&
  tgtadm -C "$TCTL" --lld iscsi --op bind --mode target --tid 1 -I ALL ||
  { echo "tgtd could not export the image with bs_rbd"; cat "$OUT/tgtd.log"; exit 1; }
wait_port "$TPORT" || exit 1
URL[tgtd]=iscsi://127.0.0.1:$TPORT/iqn.2026-11.io.tgt:bench/1 PID[tgtd]=$tgtd_pid
SYSTEMS+=" tgtd hop"
OSD_PID=$(cat "$CEPH_DIR/run/osd.0.pid")

say "pinion: $BIN${REF:+; pinion-ref: $REF}; $ROUNDS rounds, ${SECS} s per cell, QD$DEPTH"
say "load before: $(cat /proc/loadavg)"
# cell SYSTEM WORKLOAD ROUND: appends "round system workload iops MB/s
# target_us osd_us initiator_us busy load" to RESULTS: CPU time per I/O of
# the target (for rbd bench its process), the OSD and iscsi-perf; busy is the
# share of the machine's CPU time in use during the cell, by anyone
cell() {
  local sys=$1 wl=$2 round=$3 out iops n t0 t1 o0 o1 c0 c1 i0 i1 cpu_us osd_us init_us busy args
  o0=$(ticks "$OSD_PID")
  read -r c0 i0 < <(cpu_ticks)
  if [[ $sys == rbd-bench ]]; then
    # librbd alone, sized to run about as long as an iscsi-perf cell
    if [[ $wl == 4k-randread ]]; then args="--io-size 4K --io-total 512M --io-pattern rand"; else args="--io-size 128K --io-total 4G --io-pattern seq"; fi
    # shellcheck disable=SC2086
    out=$(/usr/bin/time -f 'cpu %U %S' rbd bench --io-type read $args --io-threads "$DEPTH" rbd/bench 2>&1)
    iops=$(awk '/^elapsed/ {print $6}' <<<"$out")
    n=$(awk '/^elapsed/ {print $4}' <<<"$out")
    cpu_us=$(awk -v n="${n:-0}" '/^cpu/ {if (n > 0) printf "%.1f", ($2 + $3) * 1e6 / n}' <<<"$out")
    init_us=0
  else
    if [[ $wl == 4k-randread ]]; then args="-r -b 8"; else args="-b 256"; fi
    t0=$(ticks "${PID[$sys]}")
    # shellcheck disable=SC2086
    out=$(timeout -k 5 $((SECS + 20)) /usr/bin/time -f 'cpu %U %S' iscsi-perf $args -m "$DEPTH" -t "$SECS" "${URL[$sys]}" 2>&1 | tr '\r' '\n')
    t1=$(ticks "${PID[$sys]}")
    iops=$(grep 'iops average' <<<"$out" | tail -n 1 | sed -n 's/.*iops average \([0-9.]*\).*/\1/p')
    n=$(awk -v i="${iops:-0}" -v s="$SECS" 'BEGIN {print i * s}')
    cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN {if (n > 0) printf "%.1f", d / hz * 1e6 / n}')
    init_us=$(awk -v n="$n" '/^cpu/ {if (n > 0) printf "%.1f", ($2 + $3) * 1e6 / n}' <<<"$out")
  fi
  o1=$(ticks "$OSD_PID")
  read -r c1 i1 < <(cpu_ticks)
  osd_us=$(awk -v d=$((o1 - o0)) -v hz="$HZ" -v n="${n:-0}" 'BEGIN {if (n > 0) printf "%.1f", d / hz * 1e6 / n}')
  busy=$(awk -v c=$((c1 - c0)) -v i=$((i1 - i0)) 'BEGIN {if (c > 0) printf "%.2f", (c - i) / c}')
  local bs=4096; [[ $wl == 128k-read ]] && bs=131072
  local mbs; mbs=$(awk -v i="${iops:-0}" -v b=$bs 'BEGIN {printf "%.0f", i * b / 1e6}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$sys" "$wl" "${iops:-0}" "$mbs" "${cpu_us:-?}" "${osd_us:-?}" "${init_us:-?}" "${busy:-?}" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
  say "$(printf 'round %d  %-10s %-12s %9.0f IOPS %6s MB/s  CPU us/IO: target %6s osd %6s initiator %5s  busy %s  load %s' "$round" "$sys" "$wl" "${iops:-0}" "$mbs" "${cpu_us:-?}" "${osd_us:-?}" "${init_us:-?}" "${busy:-?}" "$(cut -d' ' -f1 /proc/loadavg)")"
}
for round in $(seq "$ROUNDS"); do
  order=$SYSTEMS
  ((round % 2 == 0)) && order=$(tr ' ' '\n' <<<"$SYSTEMS" | tac | tr '\n' ' ')
  for wl in 4k-randread 128k-read; do
    for sys in $order; do cell "$sys" "$wl" "$round"; done
  done
done
say "load after: $(cat /proc/loadavg)"

python3 - "$RESULTS" <<'EOF' | tee "$OUT/table.md"
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
num = lambda x: None if x in ("?", "") else float(x)
cells = {}
for r, sys_, wl, iops, mbs, cpu, osd, init, busy, load in rows:
    cells.setdefault((sys_, wl), []).append((float(iops), float(mbs), num(cpu), num(osd), num(init), num(busy)))
systems = list(dict.fromkeys(r[1] for r in rows))
wls = list(dict.fromkeys(r[2] for r in rows))
def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else float("nan")
print("| workload | system | IOPS per round | median IOPS | MB/s | CPU us/IO: target | OSD | initiator | busy |")
print("|---|---|---|---|---|---|---|---|---|")
m = {}
for wl in wls:
    for s in systems:
        v = cells.get((s, wl), [])
        c = [med([x[k] for x in v]) for k in range(6)]
        m[(s, wl)] = c
        print(f"| {wl} | {s} | {', '.join(f'{x[0]:.0f}' for x in v)} | {c[0]:.0f} | {c[1]:.0f} | {c[2]:.1f} | {c[3]:.1f} | {c[4]:.1f} | {c[5]:.2f} |")
print()
ref = "pinion-ref" in systems
print("| workload | pinion/tgtd (goal >= 1.2) | pinion/rbd-bench (goal >= 0.8) | any target/rbd-bench at best |" + (" pinion/pinion-ref |" if ref else ""))
print("|---|---|---|---|" + ("---|" if ref else ""))
for wl in wls:
    p, rb, hop = m[("pinion", wl)][0], m[("rbd-bench", wl)], m[("hop", wl)]
    # librbd's work (rbd bench's process and the OSD) plus the hop's (target
    # and initiator on the null LUN); meaningful when rbd bench kept the CPUs busy
    lib, h = rb[2] + rb[3], hop[2] + hop[4]
    line = f"| {wl} | {p / m[('tgtd', wl)][0]:.2f} | {p / rb[0]:.2f} | {lib / (lib + h):.2f} (rbd bench: busy {rb[5]:.2f}) |"
    if ref:
        line += f" {p / m[('pinion-ref', wl)][0]:.2f} |"
    print(line)
EOF
say "results: $OUT"
