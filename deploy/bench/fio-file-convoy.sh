#!/usr/bin/env bash
# How the disk under the fio-file.sh image is kept busy: records 0.3 s of
# block and io_uring tracepoints and the target's and host's socket calls in
# the middle of one cell (local fio, or Pinion served to `pinion perf --poll`
# on the other CPU), then prints
#   * per convoy (the disk had no read in flight, then got one again): how
#     long it stood idle and when, after its last completion, the first
#     completion reached the reader, the target sent (and its send returned:
#     how long the send held the target), the host received and sent, the
#     target received and the next read was submitted and issued;
#   * per burst of completions: how many reads it held and how long its
#     first-issued read took (a disk that finishes what it holds at once
#     shows the same completion time for every read of a burst).
# Needs perf and root; run it under the heavy lock, after fio-file.sh made
# the image:
#
#   flock /tmp/pinion-heavy.lock deploy/bench/fio-file-convoy.sh [--fio] [--bin PATH]
#
# Env: BENCH_NVME_PORT (4521); other PINION_* variables reach the target
# (e.g. PINION_RUNTIME__BUSY_POLL_US=300). Every process it starts is
# stopped by PID.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN= FIO=0
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift ;;
    --fio) FIO=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BIN=${BIN:-$REPO/build/cargo/release/pinion}
# shellcheck source=fio-file-config.sh
. "$(dirname "${BASH_SOURCE[0]}")/fio-file-config.sh"
PORT=$FIO_FILE_PORT IMG=$FIO_FILE_IMG
fio_file_trace_setup convoy
if ((FIO)); then
  taskset -c 0 fio --name=local --filename="$IMG" --direct=1 --ioengine=io_uring --rw=randread --bs=4k --iodepth=32 \
    --time_based --runtime=4 --output-format=json >"$OUT/fio.json" 2>/dev/null &
  hp=$! tgt=$!
else
  fio_file_serve "$BIN" "$OUT"
  tgt=$pid
  taskset -c 1 "$BIN" perf "nvme-tcp://127.0.0.1:$PORT/nqn.2026-11.io.pinion:fio-file" --rw randread --bs 4096 \
    --qd 32 --time 4 --poll --json >"$OUT/perf.json" 2>>"$OUT/pinion.log" &
  hp=$!
fi
sleep 2
# recvfrom only when it returned data: the polling host's empty reads
# would flood the buffer
perf record -q -a -o "$OUT/t.data" \
  -e block:block_rq_issue,block:block_rq_complete,io_uring:io_uring_submit_req,io_uring:io_uring_complete,syscalls:sys_enter_sendmsg,syscalls:sys_exit_sendmsg,syscalls:sys_enter_writev,syscalls:sys_exit_epoll_wait \
  -e syscalls:sys_exit_recvfrom --filter 'ret > 0' -- sleep 0.3 >/dev/null 2>&1
wait "$hp" || true; hp=
perf script -i "$OUT/t.data" -F pid,time,event,trace >"$OUT/t.txt" 2>/dev/null
if ((FIO)); then
  python3 -c 'import json,sys; print("fio:", round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]), "IOPS")' "$OUT/fio.json"
else
  python3 -c 'import json,sys; print("pinion perf:", round(json.load(open(sys.argv[1]))["iops"]), "IOPS")' "$OUT/perf.json"
fi
python3 - "$OUT/t.txt" "$tgt" <<'PY'
import re, statistics as st, sys
path, tgt = sys.argv[1], int(sys.argv[2])
pat = re.compile(r'^\s*(\d+)\s+([\d.]+):\s+\S+:(\S+):\s*(.*)$')
ev = []
for l in open(path):
    m = pat.match(l)
    if m:
        ev.append((float(m.group(2)) * 1e6, int(m.group(1)), m.group(3), m.group(4)))
ev.sort(key=lambda e: e[0])
sector = lambda r: r.split(') ')[1].split(' ')[0]
# convoys: the disk's reads in flight (matched by sector, so reads issued
# before the trace began do not count) fall to none, then one is issued
live, cur, convoys = set(), None, []
for t, pid, e, r in ev:
    if e == 'block_rq_issue':
        if not live and cur is not None:
            cur['issue'] = t
            convoys.append(cur)
            cur = None
        live.add(sector(r))
    elif e == 'block_rq_complete':
        if sector(r) in live:
            live.discard(sector(r))
            if not live:
                cur = {'idle': t}
    elif cur is not None:
        mine = pid == tgt
        k = {('io_uring_complete', True): 'completion reaped', ('sys_enter_sendmsg', True): 'target sends',
             ('sys_exit_recvfrom', False): 'host receives', ('sys_enter_writev', False): 'host sends',
             ('sys_exit_recvfrom', True): 'target receives', ('io_uring_submit_req', True): 'next read submitted'}.get((e, mine))
        if k and k not in cur:
            cur[k] = t
        # the target's first send after the burst: how long it held the CPU
        if e == 'sys_exit_sendmsg' and mine and 'target sends' in cur and 'target send returns' not in cur:
            cur['target send returns'] = t
print(f"convoys (the disk idle, then busy again): {len(convoys)} in 0.3 s")
for k in ['completion reaped', 'target sends', 'target send returns', 'host receives', 'host sends', 'target receives', 'next read submitted', 'issue']:
    v = sorted(c[k] - c['idle'] for c in convoys if k in c)
    if v:
        print(f"  first {k:20} +{st.median(v):6.1f} us after the last completion (p50), p90 {v[int(len(v) * .9)]:6.1f}")
# bursts of completions (< 5 us apart) and their reads' issue times
issued, rows = {}, []
for t, pid, e, r in ev:
    if e == 'block_rq_issue':
        issued[sector(r)] = t
    elif e == 'block_rq_complete' and sector(r) in issued:
        rows.append((t, issued.pop(sector(r))))
bursts, b = [], []
for c, i in rows:
    if b and c - b[-1][0] >= 5:
        bursts.append(b)
        b = []
    b.append((c, i))
if bursts:
    sizes = [len(b) for b in bursts]
    first = [b[0][0] - min(i for _, i in b) for b in bursts]
    spread = [max(i for _, i in b) - min(i for _, i in b) for b in bursts]
    print(f"completion bursts: {len(bursts)}, reads per burst p50 {st.median(sizes)} (mean {st.mean(sizes):.1f}); "
          f"first-issued read of a burst done after p50 {st.median(first):.0f} us; its reads issued over p50 {st.median(spread):.0f} us")
PY
