#!/bin/bash
# 128 KiB random reads over NVMe/TCP with TLS 1.3 and without, in the same run
# of one Pinion (a TLS-required and a plain listener over the same volume),
# with `pinion perf` as the host: IOPS, latency, and Pinion's and the host's
# CPU time per I/O.  Whether TLS went through kernel TLS or the userspace
# relay (no `tls` module) is read from the metrics and printed.
#
#   deploy/bench/tls.sh [PINION_BIN] [SECONDS]      (hold /tmp/pinion-heavy.lock)
#
# environment: QD (8), VOLUME (ram | ro: a read-only buffered file volume,
#   spliced even for a local host), RUNS (1)
set -euo pipefail
PINION=${1:-build/cargo/release/pinion}
T=${2:-10}
QD=${QD:-8}
VOLUME=${VOLUME:-ro}
RUNS=${RUNS:-1}
WORK=$(mktemp -d /tmp/pinion-tls-bench.XXXXXX)
pid=
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:be4c0000-0000-4000-8000-00000000b4c5
NQN=nqn.2026-11.io.pinion:tlsbench
KEY="NVMeTLSkey-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TP=$(port) PP=$(port) MP=$(port)
if [[ $VOLUME == ro ]]; then
  head -c 256M /dev/urandom >"$WORK/ro.img"
  vol='backend = "file"
path = "'$WORK'/ro.img"
size = "256MiB"
io_mode = "buffered"
read_only = true'
else
  vol='backend = "ram"
size = "256MiB"'
fi
cat >"$WORK/pinion.toml" <<CFG
[nvme_tcp]
listen = ["127.0.0.1:$TP", "127.0.0.1:$PP"]
[[nvme_tcp.listener_tls]]
addr = "127.0.0.1:$TP"
tls = "required"
[iscsi]
listen = []
[metrics]
listen = "127.0.0.1:$MP"
[management]
socket = "$WORK/ctl.sock"
[[volume]]
name = "v"
$vol
[[subsystem]]
nqn = "$NQN"
namespaces = ["v"]
[[subsystem.host]]
nqn = "$HOSTNQN"
tls_key = "$KEY"
CFG
"$PINION" serve --config "$WORK/pinion.toml" >"$WORK/pinion.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [[ -n $(ss -ltnH "sport = :$TP") ]] && break; sleep 0.1; done
[[ $VOLUME == ro ]] && cat "$WORK/ro.img" >/dev/null
hz=$(getconf CLK_TCK)
metric() { curl -s "http://127.0.0.1:$MP/metrics" | awk -v m="$1" '$1 == m { print $2; f=1 } END { if (!f) print 0 }'; }
echo "pinion $("$PINION" --version 2>/dev/null | head -1), $VOLUME volume, 128 KiB randread, qd $QD, ${T}s per run, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
for r in $(seq "$RUNS"); do
  for mode in plain tls; do
    p=$PP extra=()
    [[ $mode == tls ]] && p=$TP extra=(--tls --tls-key "$KEY")
    t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    "$PINION" perf "nvme-tcp://127.0.0.1:$p/$NQN" "${extra[@]}" --hostnqn "$HOSTNQN" --rw randread --bs 128k \
      --qd "$QD" --time "$T" --json >"$WORK/$mode.json"
    t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    python3 - "$WORK/$mode.json" "$mode" $((t1 - t0)) "$hz" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); mode = sys.argv[2]; ticks = int(sys.argv[3]); hz = int(sys.argv[4])
ios = max(j["ios"], 1)
print(f"{mode:5s} {j['iops']:8.0f} IOPS {j['mib_s']:8.1f} MiB/s  p50 {j['latency']['p50_us']:7.0f} us  p99 {j['latency']['p99_us']:7.0f} us  "
      f"target CPU {ticks / hz / ios * 1e6:6.1f} us/IO  host CPU {j['cpu']['total_s'] / ios * 1e6:6.1f} us/IO  errors {j['errors']}")
PY
  done
done
echo "TLS sessions: kTLS $(metric 'pinion_nvme_tls_sessions_total{handoff="ktls"}'), relay $(metric 'pinion_nvme_tls_sessions_total{handoff="relay"}');" \
  "reads spliced $(metric 'pinion_io_total{path="splice"}'), copied $(metric 'pinion_io_total{path="copy"}'), zero-copy sends $(metric 'pinion_io_total{path="zerocopy"}')"
