#!/usr/bin/env bash
# Where an O_DIRECT 4 KiB read served over NVMe/TCP spends its time: runs
# the fio-file.sh workload against one Pinion binary (target on CPU 0,
# `pinion perf` on CPU 1, QD32) and records 0.5 s of kernel tracepoints in
# the middle (block issue/complete, io_uring submit/complete, the target's
# send/receive/epoll system calls), then prints per phase the mean, median
# and p90 in microseconds, and how the reads move in bursts. Needs perf and
# root; run it under the heavy lock, after fio-file.sh made the image:
#
#   flock /tmp/pinion-heavy.lock deploy/bench/fio-file-trace.sh [--bin PATH] [--time 5]
#
# Env: BENCH_NVME_PORT (4521); other PINION_* variables reach the target.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN= TIME=5
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift ;;
    --time) TIME=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BIN=${BIN:-$REPO/build/cargo/release/pinion}
# shellcheck source=fio-file-config.sh
. "$(dirname "${BASH_SOURCE[0]}")/fio-file-config.sh"
PORT=$FIO_FILE_PORT IMG=$FIO_FILE_IMG
fio_file_trace_setup trace
fio_file_serve "$BIN" "$OUT"
taskset -c 1 "$BIN" perf "nvme-tcp://127.0.0.1:$PORT/nqn.2026-11.io.pinion:fio-file" --rw randread --bs 4096 \
  --qd 32 --time "$TIME" --json >"$OUT/perf.json" 2>>"$OUT/pinion.log" &
hp=$!
sleep $((TIME / 2))
perf record -q -a -o "$OUT/trace.data" -e block:block_rq_issue,block:block_rq_complete,io_uring:io_uring_submit_req,io_uring:io_uring_complete,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_io_uring_enter,syscalls:sys_exit_io_uring_enter -- sleep 0.5 >/dev/null 2>&1
wait "$hp"; hp=
kill "$pid"; wait "$pid" 2>/dev/null || true
perf script -i "$OUT/trace.data" -F pid,time,event,trace >"$OUT/trace.txt" 2>/dev/null
python3 - "$OUT/trace.txt" "$pid" "$OUT/perf.json" <<'PY'
import bisect, json, re, statistics as st, sys
path, tgt = sys.argv[1], int(sys.argv[2])
j = json.load(open(sys.argv[3]))
print(f"pinion perf: {j['iops']:.0f} IOPS, latency p50 {j['latency']['p50_us']:.0f} us")
pat = re.compile(r'^\s*(\d+)\s+([\d.]+):\s+\S+:(\S+):\s*(.*)$')
ev = []
for l in open(path):
    m = pat.match(l)
    if m:
        ev.append((float(m.group(2)) * 1e6, int(m.group(1)), m.group(3), m.group(4)))
ev.sort(key=lambda e: e[0])
sub, issue, blk = {}, {}, {}
ph = {k: [] for k in ("submit->block issue", "block issue->complete (device)", "block complete->CQE", "CQE->next target sendmsg", "target sendmsg->next submit", "io_uring_enter", "target epoll_wait")}
subs, sends, cqes, last, t_enter, t_wait = [], [], [], None, None, None
req_of = lambda r: r.split('req ')[1].split(',')[0]
sector = lambda r: r.split(') ')[1].split(' ')[0]
for t, pid, e, r in ev:
    mine = pid == tgt
    if e == 'io_uring_submit_req' and mine:
        last = req_of(r); sub[last] = t; subs.append(t)
    elif e == 'block_rq_issue' and mine and last in sub:
        issue[sector(r)] = (t, last); ph["submit->block issue"].append(t - sub[last])
    elif e == 'block_rq_complete' and sector(r) in issue:
        ti, q = issue.pop(sector(r)); ph["block issue->complete (device)"].append(t - ti); blk[q] = t
    elif e == 'io_uring_complete' and mine:
        q = req_of(r); cqes.append(t)
        if q in blk:
            ph["block complete->CQE"].append(t - blk.pop(q))
    elif e == 'sys_enter_sendmsg' and mine:
        sends.append(t)
    elif e == 'sys_enter_io_uring_enter' and mine:
        t_enter = t
    elif e == 'sys_exit_io_uring_enter' and mine and t_enter:
        ph["io_uring_enter"].append(t - t_enter)
    elif e == 'sys_enter_epoll_wait' and mine:
        t_wait = t
    elif e == 'sys_exit_epoll_wait' and mine and t_wait:
        ph["target epoll_wait"].append(t - t_wait)
for c in cqes:
    i = bisect.bisect_left(sends, c)
    if i < len(sends):
        ph["CQE->next target sendmsg"].append(sends[i] - c)
for s in sends:
    i = bisect.bisect_right(subs, s)
    if i < len(subs):
        ph["target sendmsg->next submit"].append(subs[i] - s)
for k, v in ph.items():
    if v:
        v.sort()
        print(f"{k:32} n {len(v):6}  mean {st.mean(v):7.1f}  p50 {st.median(v):7.1f}  p90 {v[int(len(v) * .9)]:7.1f} us")
bursts, n = [], 1
for a, b in zip(subs, subs[1:]):
    if b - a < 50:
        n += 1
    else:
        bursts.append(n); n = 1
span = (ev[-1][0] - ev[0][0]) / 1e6 if ev else 1
if bursts:
    print(f"reads submitted in bursts of {st.mean(bursts):.1f} (median {st.median(bursts)}); {len(subs) / max(len(sends), 1):.1f} completions per target sendmsg; target asleep {sum(ph['target epoll_wait']) / 1e6 / span:.0%} of the time")
PY
