#!/bin/bash
# NVMe/TCP over TLS 1.3 with kernel TLS (kTLS).  Runs INSIDE the initiator VM
# (host side: tests/vm/run-e2e.sh tls), whose Debian kernel has the tls
# module the development host may lack.
#
#   nvme-tls-e2e.sh PINION_BINARY
#
# Pinion listens on two ports, 4420 requiring TLS and 4421 plain, over two
# buffered file volumes: a writable one (namespace 1) and a read-only one
# (namespace 2), whose hot reads are spliced from the page cache even to a
# host on this machine (a writable volume's are copied for a local host).  Steps:
# an OpenSSL s_client host (userspace TLS) completes the handshake with the
# PSK identity and a TLS PSK derived here with `openssl kdf`, and gets its
# ICResp through Pinion's kTLS socket; `pinion perf --tls` (kTLS on the host
# side too) runs verified random I/O; the metrics show the sessions went to
# kTLS and reads were spliced into the kTLS socket; a wrong key and a plain
# host on the TLS port are refused.  Then, for the record (no pass/fail),
# 128 KiB random reads over TLS and plain in the same run, with Pinion's CPU
# time per I/O.  The kernel host (nvme connect --tls) needs tlshd from
# ktls-utils, which Debian 12 does not package: not tested here.
# Ends with "NVME-TLS-E2E: PASS".
#
# environment: PINION_READY_TIMEOUT (default 30), BENCH_TIME (default 5)
set -euo pipefail
exec 2>&1

PINION=${1:-}
[[ -n $PINION && -x $PINION ]] || { echo "usage: $0 PINION_BINARY"; exit 2; }
NQN=nqn.2026-11.io.pinion:tls
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:7e570000-0000-4000-8000-0000000071c5
TLS_PORT=4420 PLAIN_PORT=4421 MPORT=9464
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
BENCH_TIME=${BENCH_TIME:-5}
WORK=/dev/shm/nvme-tls-e2e
IMG=$WORK/vol.img
RO_IMG=$WORK/ro.img
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
mkdir -p "$WORK"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
check() {
  local what=$1; shift
  if "$@"; then echo "check: $what: ok"; else echo "check: $what: FAILED"; return 1; fi
}
pinion_pid=
cleanup() {
  local rc=$?
  if [[ -n $pinion_pid ]]; then kill -TERM "$pinion_pid" 2>/dev/null || true; wait "$pinion_pid" 2>/dev/null || true; fi
  if ((rc != 0)); then
    echo "--- pinion log (last 40 lines)"; tail -n 40 "$PLOG" 2>/dev/null || true
    echo "NVME-TLS-E2E: FAIL (step: $cur_step)"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
metric() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1 == m { print $2; f=1 } END { if (!f) print 0 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pinion_pid/stat"; }

step "kernel TLS"
modprobe tls
check "the tls ULP is available" grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp

step "key (nvme gen-tls-key)"
KEY=$(nvme gen-tls-key -m 1)
echo "configured key ${KEY:0:16}..."
WRONG=$(nvme gen-tls-key -m 1)

step "start pinion"
truncate -s 256M "$IMG"
head -c 64M /dev/urandom >"$RO_IMG"
cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["127.0.0.1:$TLS_PORT", "127.0.0.1:$PLAIN_PORT"]
[[nvme_tcp.listener_tls]]
addr = "127.0.0.1:$TLS_PORT"
tls = "required"
[iscsi]
listen = []
[metrics]
listen = "127.0.0.1:$MPORT"
[[volume]]
name = "vol1"
backend = "file"
path = "$IMG"
size = "256MiB"
io_mode = "buffered"
[[volume]]
name = "ro"
backend = "file"
path = "$RO_IMG"
size = "64MiB"
io_mode = "buffered"
read_only = true
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol1", "ro"]
[[subsystem.host]]
nqn = "$HOSTNQN"
tls_key = "$KEY"
EOF
setsid "$PINION" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
pinion_pid=$!
n=$((PINION_READY_TIMEOUT * 10))
until [[ -n $(ss -ltnH "sport = :$TLS_PORT" 2>/dev/null) ]]; do
  kill -0 "$pinion_pid" 2>/dev/null || { echo "pinion exited"; exit 1; }
  n=$((n - 1)); ((n > 0)) || { echo "pinion not listening"; exit 1; }
  sleep 0.1
done

step "s_client (OpenSSL in userspace) against Pinion's kTLS socket"
# TLS PSK for identity NVMe0R01: retained = HKDF-Expand-Label(Extract(0, key), "HostNQN", hostnqn),
# TLS PSK = HKDF-Expand-Label(Extract(0, retained), "nvme-tls-psk", identity), RFC 8446 labels
raw=$(echo "$KEY" | cut -d: -f3 | base64 -d | head -c 32 | xxd -p | tr -d '\n')
hexs() { printf '%s' "$1" | xxd -p | tr -d '\n'; }
kdf() { openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" -kdfopt "hexsalt:$(printf '00%.0s' $(seq 32))" \
  -kdfopt "hexinfo:$2" HKDF | tr -d ':' | tr 'A-F' 'a-f'; }
retained=$(kdf "$raw" "00200d$(hexs 'tls13 HostNQN')$(printf %02x ${#HOSTNQN})$(hexs "$HOSTNQN")")
ID="NVMe0R01 $HOSTNQN $NQN"
PSK=$(kdf "$retained" "002012$(hexs 'tls13 nvme-tls-psk')$(printf %02x ${#ID})$(hexs "$ID")")
icreq() { printf '\x00\x00\x80\x00\x80\x00\x00\x00'; head -c 120 /dev/zero; }
out=$( (icreq; sleep 3) | timeout 10 openssl s_client -connect "127.0.0.1:$TLS_PORT" -tls1_3 -quiet \
  -psk_identity "$ID" -psk "$PSK" 2>/dev/null | head -c 8 | xxd -p || true)
echo "first 8 bytes back: $out"
check "ICResp over kTLS" test "$out" = 0100800080000000
# without -quiet, s_client ends with a close_notify alert when its stdin ends:
# kTLS hands the alert to Pinion's reader as a control record
(icreq; sleep 2) | timeout 10 openssl s_client -connect "127.0.0.1:$TLS_PORT" -tls1_3 \
  -psk_identity "$ID" -psk "$PSK" >/dev/null 2>&1 || true
sleep 1
check "close_notify seen through kTLS" grep -q "TLS control record from the host.*close_notify" "$PLOG"
check "the session used kTLS" test "$(metric 'pinion_nvme_tls_sessions_total{handoff="ktls"}')" -ge 1
check "no relay" test "$(metric 'pinion_nvme_tls_sessions_total{handoff="relay"}')" -eq 0

step "pinion perf --tls: verified random I/O"
splice0=$(metric 'pinion_io_total{path="splice"}')
timeout 120 "$PINION" perf "nvme-tcp://127.0.0.1:$TLS_PORT/$NQN" --tls --tls-key "$KEY" --hostnqn "$HOSTNQN" \
  --rw randrw --bs 4k-128k --qd 16 --queues 2 --verify --time 10 --json >"$WORK/perf.json"
python3 - "$WORK/perf.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print(j["target"]); print("ios", j["ios"], "errors", j["errors"], "verify", j["verify"])
assert "over TLS 1.3" in j["target"] and j["ios"] > 0 and j["errors"] == 0
assert j["verify"]["mismatches"] == 0 and j["verify"]["blocks_checked"] > 0
EOF
echo "check: verified I/O over TLS: ok"
# the read-only namespace: once in the page cache, its reads are spliced
cat "$RO_IMG" >/dev/null
timeout 120 "$PINION" perf "nvme-tcp://127.0.0.1:$TLS_PORT/$NQN/2" --tls --tls-key "$KEY" --hostnqn "$HOSTNQN" \
  --rw randread --bs 128k --qd 8 --time 5 >"$WORK/perf-read.txt"
cat "$WORK/perf-read.txt"
splice1=$(metric 'pinion_io_total{path="splice"}')
echo "spliced reads: $splice0 -> $splice1; sends by writev (send_copy): $(metric 'pinion_io_total{path="send_copy"}')"
check "reads spliced into the kTLS socket" test "$splice1" -gt "$splice0"
check "every TLS session on kTLS" test "$(metric 'pinion_nvme_tls_sessions_total{handoff="relay"}')" -eq 0

step "refusals"
if timeout 60 "$PINION" perf "nvme-tcp://127.0.0.1:$TLS_PORT/$NQN" --tls --tls-key "$WRONG" --hostnqn "$HOSTNQN" --time 1 >/dev/null 2>&1; then
  echo "check: wrong key refused: FAILED"; exit 1
fi
echo "check: wrong key refused: ok"
if timeout 60 "$PINION" perf "nvme-tcp://127.0.0.1:$TLS_PORT/$NQN" --hostnqn "$HOSTNQN" --time 1 >/dev/null 2>&1; then
  echo "check: plain host on the TLS port refused: FAILED"; exit 1
fi
echo "check: plain host on the TLS port refused: ok"

step "bench (for the record): 128 KiB random reads of namespace 2 (spliced), TLS and plain, same run"
for mode in tls plain; do
  port=$PLAIN_PORT extra=()
  [[ $mode == tls ]] && port=$TLS_PORT extra=(--tls --tls-key "$KEY")
  t0=$(cpu_ticks)
  timeout 120 "$PINION" perf "nvme-tcp://127.0.0.1:$port/$NQN/2" "${extra[@]}" --hostnqn "$HOSTNQN" \
    --rw randread --bs 128k --qd 8 --time "$BENCH_TIME" --json >"$WORK/bench-$mode.json"
  t1=$(cpu_ticks)
  python3 - "$WORK/bench-$mode.json" "$mode" $((t1 - t0)) "$(getconf CLK_TCK)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); mode = sys.argv[2]; ticks = int(sys.argv[3]); hz = int(sys.argv[4])
ios = max(j["ios"], 1)
print(f"BENCH {mode:5s} 128KiB randread qd8: {j['iops']:.0f} IOPS {j['mib_s']:.1f} MiB/s "
      f"p50 {j['latency']['p50_us']:.0f} us; target CPU {ticks / hz:.2f} s = {ticks / hz / ios * 1e6:.1f} us/IO; "
      f"initiator CPU {j['cpu']['total_s'] / ios * 1e6:.1f} us/IO")
EOF
done

echo
echo "NVME-TLS-E2E: PASS"
