#!/usr/bin/env bash
# The standard comparison on this machine: Pinion (NVMe/TCP and iSCSI)
# against tgtd (iSCSI) and against the loopback limit (iperf3, iperf3 -Z).
# Targets run pinned to one core, initiators to another; every cell runs
# once per round, rounds alternate the order of the systems, and the table
# shows medians over the rounds and the ratios.
#
#   deploy/bench/run.sh                 # full run (~15 min)
#   deploy/bench/run.sh --quick         # RAM volume, 1 round, 2 s cells (~1 min)
#   deploy/bench/run.sh --profile       # also `perf record -g` the target under load
#
# Options: --rounds N (3), --time S (3 s per cell), --size SIZE (1G volumes),
# --volumes "ram filehot filedirect", --bin PINION_BINARY, --out DIR
# (build/bench/<timestamp>), --target-cpu N (0), --initiator-cpu N (1).
# Ports (override with env): BENCH_NVME_PORT 4520, BENCH_ISCSI_PORT 3280,
# BENCH_TGTD_PORT 3262, BENCH_TGTD_CTL 2 (tgtadm -C), BENCH_IPERF_PORT 4529.
#
# Workloads: 4 KiB randread / randwrite at QD1 and QD32, 128 KiB read /
# write at QD16. Volumes: ram (Pinion RAM; tgtd: a file on /dev/shm),
# filehot (file, page cache, warmed first), filedirect (file, O_DIRECT).
# Initiators: `pinion perf` for every system; libiscsi's `iscsi-perf` too
# for reads (it cannot write). Needs root only for `perf record`.
# Every process this script starts is stopped by its PID on exit.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

ARGS="$*"
ROUNDS=3 TIME=3 SIZE=1G VOLUMES="ram filehot filedirect" PROFILE=0 QUICK=0
BIN= OUT= TCPU=0 ICPU=1
while (($#)); do
  case $1 in
    --quick) QUICK=1; ROUNDS=1; TIME=2; SIZE=256M; VOLUMES=ram ;;
    --profile) PROFILE=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --volumes) VOLUMES=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    --target-cpu) TCPU=$2; shift ;;
    --initiator-cpu) ICPU=$2; shift ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
NVME_PORT=${BENCH_NVME_PORT:-4520}
ISCSI_PORT=${BENCH_ISCSI_PORT:-3280}
TGTD_PORT=${BENCH_TGTD_PORT:-3262}
TGTD_CTL=${BENCH_TGTD_CTL:-2}
IPERF_PORT=${BENCH_IPERF_PORT:-4529}
OUT=${OUT:-$REPO/build/bench/$(date +%Y%m%d-%H%M%S)}
# O_DIRECT needs a real filesystem (not tmpfs); keep the images beside the build
DATA=$REPO/build/bench/data
mkdir -p "$OUT" "$DATA"
RESULTS=$OUT/results.tsv
LOG=$OUT/run.log
: >"$RESULTS"
: >"$LOG"
say() { printf '%s\n' "$*" | tee -a "$LOG" >&2; }
# a step that fails unexpectedly ends the run (set -e): say which one
trap 'say "run.sh: line $LINENO: \"$BASH_COMMAND\" failed (rc=$?); stopping"' ERR

if [[ -z $BIN ]]; then
  BIN=$REPO/build/cargo/release/pinion
  say "building $BIN"
  (cd "$REPO" && CARGO_TARGET_DIR=$REPO/build/cargo cargo build --release -p pinion-target --quiet)
fi
[[ -x $BIN ]] || { echo "no pinion binary at $BIN" >&2; exit 2; }
for t in taskset iperf3 tgtd tgtadm iscsi-perf; do
  command -v "$t" >/dev/null || { echo "$t missing: run scripts/install-test-deps.sh" >&2; exit 2; }
done
if ((PROFILE)) && ! command -v perf >/dev/null; then echo "perf missing (linux-perf)" >&2; exit 2; fi

pids=()
stop_pid() { # stop_pid PID: TERM, then KILL after 5 s
  local p=$1 n=50
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  while kill -0 "$p" 2>/dev/null && ((n-- > 0)); do sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  # tgtadm answers 22 for tids this run never made; that is not a failure of the run
  set +e; trap - ERR
  if [[ -n ${tgtd_pid:-} ]] && kill -0 "$tgtd_pid" 2>/dev/null; then
    # tgtd ignores SIGTERM while it has targets: delete them, then the system
    for tid in 1 2 3; do tgtadm -C "$TGTD_CTL" --lld iscsi --op delete --mode target --tid $tid --force >/dev/null 2>&1; done
    tgtadm -C "$TGTD_CTL" --mode system --op delete >/dev/null 2>&1
  fi
  for p in "${pids[@]}"; do stop_pid "$p"; done
}
trap cleanup EXIT

listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() { local n=100; until listening "$1"; do ((n-- > 0)) || return 1; sleep 0.1; done; }

for p in "$NVME_PORT" "$ISCSI_PORT" "$TGTD_PORT" "$IPERF_PORT"; do
  if listening "$p"; then echo "port $p is already in use (another run?); see BENCH_*_PORT" >&2; exit 2; fi
done

# ---- machine -------------------------------------------------------------------
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
say "machine: $MACHINE"
say "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
say "target on CPU $TCPU, initiators on CPU $ICPU; $ROUNDS round(s) of ${TIME} s cells; volumes: $VOLUMES; output $OUT"

# ---- volumes -------------------------------------------------------------------
bytes() { numfmt --from=iec "${1^^}"; }
VOL_BYTES=$(bytes "$SIZE")
mkimg() { # mkimg FILE: allocated (not sparse) image of VOL_BYTES
  if [[ ! -f $1 || $(stat -c %s "$1") != "$VOL_BYTES" ]]; then
    rm -f "$1"
    dd if=/dev/zero of="$1" bs=1M count=$((VOL_BYTES >> 20)) conv=fsync status=none
  fi
}
for v in $VOLUMES; do
  case $v in
    ram) mkimg /dev/shm/pinion-bench-tgtd-ram.img ;;
    filehot) mkimg "$DATA/pinion-hot.img"; mkimg "$DATA/tgtd-hot.img" ;;
    filedirect) mkimg "$DATA/pinion-direct.img"; mkimg "$DATA/tgtd-direct.img" ;;
    *) echo "unknown volume $v" >&2; exit 2 ;;
  esac
done
warm() { cat "$DATA/pinion-hot.img" "$DATA/tgtd-hot.img" >/dev/null 2>&1 || true; }

# ---- Pinion -------------------------------------------------------------------------
CFG=$OUT/pinion.toml
cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["127.0.0.1:$NVME_PORT"]
[iscsi]
listen = ["127.0.0.1:$ISCSI_PORT"]
[memory]
pool = "1GiB"
[log]
level = "warn"
EOF
for v in $VOLUMES; do
  case $v in
    ram) printf '[[volume]]\nname = "ram"\nbackend = "ram"\nsize = %s\n' "$VOL_BYTES" ;;
    filehot) printf '[[volume]]\nname = "filehot"\nbackend = "file"\npath = "%s"\nsize = %s\nio_mode = "buffered"\n' "$DATA/pinion-hot.img" "$VOL_BYTES" ;;
    filedirect) printf '[[volume]]\nname = "filedirect"\nbackend = "file"\npath = "%s"\nsize = %s\nio_mode = "direct"\n' "$DATA/pinion-direct.img" "$VOL_BYTES" ;;
  esac >>"$CFG"
  printf '[[subsystem]]\nnqn = "nqn.2026-11.io.pinion:bench-%s"\nnamespaces = ["%s"]\nhosts = ["*"]\n' "$v" "$v" >>"$CFG"
  printf '[[iscsi_target]]\niqn = "iqn.2026-11.io.pinion:bench-%s"\nluns = ["%s"]\n' "$v" "$v" >>"$CFG"
done
taskset -c "$TCPU" "$BIN" serve --config "$CFG" >"$OUT/pinion.log" 2>&1 </dev/null &
pinion_pid=$!
pids+=("$pinion_pid")
wait_listen "$NVME_PORT" || { cat "$OUT/pinion.log"; echo "pinion did not start" >&2; exit 1; }
PINION_ISCSI=0
if wait_listen "$ISCSI_PORT" 2>/dev/null; then PINION_ISCSI=1; else say "Pinion does not serve iSCSI (not built in this binary): iSCSI cells for Pinion are n/a"; fi

# ---- tgtd ------------------------------------------------------------------------------
taskset -c "$TCPU" tgtd -f --iscsi portal=127.0.0.1:$TGTD_PORT -C "$TGTD_CTL" >"$OUT/tgtd.log" 2>&1 </dev/null &
tgtd_pid=$!
pids+=("$tgtd_pid")
wait_listen "$TGTD_PORT" || { cat "$OUT/tgtd.log"; echo "tgtd did not start" >&2; exit 1; }
tgt() { tgtadm -C "$TGTD_CTL" --lld iscsi "$@"; }
tid=0
declare -A TGT_IQN
for v in $VOLUMES; do
  tid=$((tid + 1))
  iqn=iqn.2026-11.io.pinion:tgtd-$v
  TGT_IQN[$v]=$iqn
  case $v in
    ram) img=/dev/shm/pinion-bench-tgtd-ram.img flags= ;;
    filehot) img=$DATA/tgtd-hot.img flags= ;;
    filedirect) img=$DATA/tgtd-direct.img flags="--bsoflags direct" ;;
  esac
  tgt --op new --mode target --tid $tid -T "$iqn"
  # shellcheck disable=SC2086
  tgt --op new --mode logicalunit --tid $tid --lun 1 -b "$img" $flags
  tgt --op bind --mode target --tid $tid -I ALL
done

# ---- one cell ----------------------------------------------------------------------------
# record ROUND VOLUME WORKLOAD SYSTEM IOPS MIBS P99US CPU% TARGET_US_PER_IO
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }
HZ=$(getconf CLK_TCK)
# The target's CPU time (all its threads, user + system, in clock ticks): read
# around every cell, divided by the cell's I/Os. The steadiest figure on a
# shared machine, where rates move with whatever else runs.
target_pid() { case $1 in *tgtd) echo "$tgtd_pid" ;; *) echo "$pinion_pid" ;; esac; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo NA; }
# us_per_io TICKS_BEFORE TICKS_AFTER IOS
us_per_io() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$HZ" 'BEGIN {if (a == "NA" || b == "NA" || n + 0 <= 0) print "NA"; else printf "%.2f", (b - a) / hz * 1e6 / n}'; }
jnum() { awk -v k="\"$1\":" '$1 == k {gsub(/,/, "", $2); print $2; exit}' "$2"; }

# pperf ROUND VOL WL SYSTEM URL ARGS...: one `pinion perf` cell
pperf() {
  local r=$1 v=$2 wl=$3 sys=$4 url=$5; shift 5
  local j=$OUT/cell.json rc=0 tp t0 t1
  tp=$(target_pid "$sys"); t0=$(ticks "$tp")
  timeout -k 5 $((TIME + 60)) taskset -c "$ICPU" "$BIN" perf "$url" --time "$TIME" --json "$@" >"$j" 2>>"$LOG" || rc=$?
  t1=$(ticks "$tp")
  if ((rc != 0)) || [[ ! -s $j ]]; then
    say "  $sys $v $wl: FAILED (rc=$rc)"; cat "$j" >>"$LOG" 2>/dev/null
    record "$r" "$v" "$wl" "$sys" NA NA NA NA NA; return 0
  fi
  local iops mibs p99 cpu us
  iops=$(jnum iops "$j"); mibs=$(jnum mib_s "$j"); p99=$(jnum p99_us "$j"); cpu=$(jnum percent_of_one_core "$j")
  us=$(us_per_io "$t0" "$t1" "$(jnum ios "$j")")
  record "$r" "$v" "$wl" "$sys" "$iops" "$mibs" "$p99" "$cpu" "$us"
  say "  $(printf '%-18s %-10s %-16s %10.0f IOPS %8.1f MiB/s  p99 %8.1f us  target %6s us/IO  initiator cpu %3.0f%%' "$sys" "$v" "$wl" "$iops" "$mibs" "$p99" "$us" "$cpu")"
}

# iperf ROUND VOL WL SYSTEM URL LUN BS QD RANDOM: one iscsi-perf (read) cell
iperf_cell() {
  local r=$1 v=$2 wl=$3 sys=$4 url=$5 bs=$6 qd=$7 rnd=$8
  local cap blk out rc=0 iops
  # iscsi-perf counts in LUN blocks: never guess the block length
  # (a fresh session may first get a unit attention: retry, bounded)
  local try
  for try in 1 2 3; do
    cap=$(timeout -k 2 10 iscsi-readcapacity16 "$url" 2>>"$LOG" | awk -F: 'toupper($1) ~ /LOGICAL BLOCK LENGTH/ {gsub(/ /, "", $2); print $2}') || cap=
    [[ $cap =~ ^[0-9]+$ ]] && break
  done
  if [[ ! $cap =~ ^[0-9]+$ ]] || ((cap == 0 || bs % cap)); then
    say "  $sys $v $wl: FAILED (no block length from iscsi-readcapacity16)"
    record "$r" "$v" "$wl" "$sys" NA NA NA NA NA; return 0
  fi
  blk=$((bs / cap))
  out=$OUT/cell.iscsi-perf
  local tp t0 t1 start end
  tp=$(target_pid "$sys"); t0=$(ticks "$tp"); start=$(date +%s.%N)
  # shellcheck disable=SC2046
  timeout -k 5 $((TIME + 30)) taskset -c "$ICPU" iscsi-perf -i iqn.2026-11.io.pinion:iscsi-perf -m "$qd" -b "$blk" -t "$TIME" $( ((rnd)) && echo -r) "$url" >"$out" 2>&1 || rc=$?
  t1=$(ticks "$tp"); end=$(date +%s.%N)
  iops=$(tr '\r' '\n' <"$out" | sed -n 's/.*iops average \([0-9]*\).*/\1/p' | tail -n 1)
  if [[ -z $iops ]] || ! grep -q finished "$out"; then
    say "  $sys $v $wl: FAILED (rc=$rc): $(tr '\r' '\n' <"$out" | tail -n 3 | tr '\n' ' ')"
    record "$r" "$v" "$wl" "$sys" NA NA NA NA NA; return 0
  fi
  # iscsi-perf prints a rate, not a count: its I/Os are the rate over the
  # time the target was measured (login and logout included, a few ms)
  local mibs us
  mibs=$(awk -v i="$iops" -v b="$bs" 'BEGIN {printf "%.1f", i * b / 1048576}')
  us=$(us_per_io "$t0" "$t1" "$(awk -v i="$iops" -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", i * (b - a)}')")
  record "$r" "$v" "$wl" "$sys" "$iops" "$mibs" NA NA "$us"
  say "  $(printf '%-18s %-10s %-16s %10.0f IOPS %8.1f MiB/s  target %6s us/IO' "$sys" "$v" "$wl" "$iops" "$mibs" "$us")"
}

# loopback ROUND: iperf3 and iperf3 -Z, single stream, server on the target CPU
loopback() {
  local r=$1 z
  for z in "" "-Z"; do
    local j=$OUT/iperf.json srv
    taskset -c "$TCPU" iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
    srv=$!
    pids+=("$srv")
    wait_listen "$IPERF_PORT" || true
    # shellcheck disable=SC2086
    if timeout -k 5 $((TIME + 30)) taskset -c "$ICPU" iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$TIME" $z -J >"$j" 2>>"$LOG"; then
      local bps mibs
      bps=$(awk '/"sum_received"/ {f=1} f && /"bits_per_second"/ {gsub(/,/, "", $2); print $2; exit}' "$j")
      mibs=$(awk -v b="$bps" 'BEGIN {printf "%.1f", b / 8 / 1048576}')
      record "$r" loopback "tcp stream" "iperf3${z:+ $z}" NA "$mibs" NA NA NA
      say "  $(printf '%-18s %-10s %-16s %19s %8.1f MiB/s' "iperf3${z:+ $z}" loopback "tcp stream" "" "$mibs")"
    else
      record "$r" loopback "tcp stream" "iperf3${z:+ $z}" NA NA NA NA NA
    fi
    stop_pid "$srv"
  done
}

WORKLOADS=("randread 4k qd1" "randread 4k qd32" "randwrite 4k qd1" "randwrite 4k qd32" "read 128k qd16" "write 128k qd16")
nvme_url() { echo "nvme-tcp://127.0.0.1:$NVME_PORT/nqn.2026-11.io.pinion:bench-$1"; }
pin_iscsi() { echo "iscsi://127.0.0.1:$ISCSI_PORT/iqn.2026-11.io.pinion:bench-$1/0"; }
tgt_iscsi() { echo "iscsi://127.0.0.1:$TGTD_PORT/${TGT_IQN[$1]}/1"; }

# run_system ROUND VOL WL SYSTEM
run_system() {
  local r=$1 v=$2 wl=$3 sys=$4
  local rw bs qd
  read -r rw bs qd <<<"$wl"
  local args=(--rw "$rw" --bs "$bs" --qd "${qd#qd}")
  local rnd=0
  [[ $rw == rand* ]] && rnd=1
  case $sys in
    "nvme pinion") pperf "$r" "$v" "$wl" "$sys" "$(nvme_url "$v")" "${args[@]}" ;;
    "iscsi pinion") ((PINION_ISCSI)) && pperf "$r" "$v" "$wl" "$sys" "$(pin_iscsi "$v")" "${args[@]}" ;;
    "iscsi tgtd") pperf "$r" "$v" "$wl" "$sys" "$(tgt_iscsi "$v")" "${args[@]}" ;;
    "iscsi-perf pinion") ((PINION_ISCSI)) && [[ $rw == *read ]] && iperf_cell "$r" "$v" "$wl" "$sys" "$(pin_iscsi "$v")" "$(bytes "$bs")" "${qd#qd}" $rnd ;;
    "iscsi-perf tgtd") [[ $rw == *read ]] && iperf_cell "$r" "$v" "$wl" "$sys" "$(tgt_iscsi "$v")" "$(bytes "$bs")" "${qd#qd}" $rnd ;;
  esac
  return 0
}

SYSTEMS=("nvme pinion" "iscsi pinion" "iscsi tgtd" "iscsi-perf pinion" "iscsi-perf tgtd")
# prefill: a sequential write pass over every volume, so reads read data
say "prefill"
for v in $VOLUMES; do
  "$BIN" perf "$(nvme_url "$v")" --rw write --bs 128k --qd 16 --ios $((VOL_BYTES / 131072)) --json >/dev/null 2>>"$LOG" || say "prefill of $v failed"
done
for ((r = 1; r <= ROUNDS; r++)); do
  say "round $r/$ROUNDS (load $(cut -d' ' -f1 /proc/loadavg))"
  loopback "$r"
  for v in $VOLUMES; do
    [[ $v == filehot ]] && warm
    for wl in "${WORKLOADS[@]}"; do
      # alternate the order of the systems between rounds
      if ((r % 2)); then order=("${SYSTEMS[@]}"); else order=(); for ((i = ${#SYSTEMS[@]} - 1; i >= 0; i--)); do order+=("${SYSTEMS[i]}"); done; fi
      for sys in "${order[@]}"; do run_system "$r" "$v" "$wl" "$sys"; done
    done
  done
done

# ---- profile ---------------------------------------------------------------------------------
if ((PROFILE)); then
  for spec in "randread 4k 32" "read 128k 16" "write 128k 16"; do
    read -r rw bs qd <<<"$spec"
    name=$rw-$bs-qd$qd
    say "profile: Pinion NVMe/TCP ram $name"
    taskset -c "$ICPU" "$BIN" perf "$(nvme_url ram)" --rw "$rw" --bs "$bs" --qd "$qd" --time $((TIME + 4)) --json >"$OUT/profile-$name.perf.json" 2>>"$LOG" &
    lp=$!
    pids+=("$lp")
    sleep 1
    perf record -g -o "$OUT/profile-$name.data" -p "$pinion_pid" -- sleep "$TIME" >>"$LOG" 2>&1 || say "perf record failed"
    wait "$lp" || true
    perf report -i "$OUT/profile-$name.data" --stdio --no-children --percent-limit 1.5 --sort symbol 2>/dev/null | grep -v '^$' | head -n 80 >"$OUT/profile-$name.txt" || true
    perf report -i "$OUT/profile-$name.data" --stdio --children --percent-limit 4 --sort symbol -g none 2>/dev/null | grep -E '^ +[0-9]' | head -n 40 >"$OUT/profile-$name.children.txt" || true
  done
fi

# ---- table --------------------------------------------------------------------------------------
say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
TABLE=$OUT/table.md
awk -F'\t' -v rounds="$ROUNDS" -v time="$TIME" '
function median(key,    n, i, j, t, a) {
  n = split(vals[key], a, " ")
  if (n == 0) return ""
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
  return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(key, v) { if (v != "NA" && v != "") vals[key] = vals[key] " " v }
# a rate, with the target CPU time per I/O when known
function cell(v, us) { if (v == "") return "n/a"; return sprintf("%.0fK", v / 1000) (us == "" ? "" : sprintf(" (%.1f us)", us)) }
function rcell(r, sys) { return cell(median(r SUBSEP sys SUBSEP "iops"), median(r SUBSEP sys SUBSEP "us")) }
function ratio(a, b) { if (a == "" || b == "" || b + 0 == 0) return "n/a"; return sprintf("%.2fx", a / b) }
{
  row = $2 SUBSEP $3
  if (!(row in seen)) { seen[row] = 1; rows[++nrows] = row }
  add(row SUBSEP $4 SUBSEP "iops", $5); add(row SUBSEP $4 SUBSEP "mibs", $6)
  add(row SUBSEP $4 SUBSEP "p99", $7); add(row SUBSEP $4 SUBSEP "cpu", $8); add(row SUBSEP $4 SUBSEP "us", $9)
}
END {
  lp = median("loopback" SUBSEP "tcp stream" SUBSEP "iperf3" SUBSEP "mibs")
  lz = median("loopback" SUBSEP "tcp stream" SUBSEP "iperf3 -Z" SUBSEP "mibs")
  printf "Loopback limit (one TCP stream, iperf3 server on the target core): %s MiB/s; with -Z (sendfile): %s MiB/s. Medians of %d round(s), %s s per cell.\n\n", lp, lz, rounds, time
  print "Rates are IOPS with, in parentheses, the target'"'"'s CPU time per I/O (user + system, all its threads, from /proc/PID/stat around the cell; on loopback it includes delivering its sends to the initiator'"'"'s socket). The last column is the initiator'"'"'s (`pinion perf`) CPU on the NVMe/TCP cell.\n"
  print "| volume | workload | NVMe/TCP Pinion IOPS | NVMe MiB/s | iSCSI Pinion | iSCSI tgtd | Pinion/tgtd | iscsi-perf Pinion | iscsi-perf tgtd | Pinion/tgtd (iscsi-perf) | NVMe MiB/s vs iperf3 | NVMe p99 us | initiator CPU |"
  print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for (i = 1; i <= nrows; i++) {
    split(rows[i], rk, SUBSEP)
    if (rk[1] == "loopback") continue
    r = rows[i]
    ni = median(r SUBSEP "nvme pinion" SUBSEP "iops"); nm = median(r SUBSEP "nvme pinion" SUBSEP "mibs")
    pi = median(r SUBSEP "iscsi pinion" SUBSEP "iops"); ti = median(r SUBSEP "iscsi tgtd" SUBSEP "iops")
    xp = median(r SUBSEP "iscsi-perf pinion" SUBSEP "iops"); xt = median(r SUBSEP "iscsi-perf tgtd" SUBSEP "iops")
    np99 = median(r SUBSEP "nvme pinion" SUBSEP "p99"); ncpu = median(r SUBSEP "nvme pinion" SUBSEP "cpu")
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", rk[1], rk[2], rcell(r, "nvme pinion"), (nm == "" ? "n/a" : sprintf("%.0f", nm)), rcell(r, "iscsi pinion"), rcell(r, "iscsi tgtd"), ratio(pi, ti), rcell(r, "iscsi-perf pinion"), rcell(r, "iscsi-perf tgtd"), ratio(xp, xt), (nm == "" || lp == "" ? "n/a" : sprintf("%.0f%%", 100 * nm / lp)), (np99 == "" ? "n/a" : sprintf("%.0f", np99)), (ncpu == "" ? "n/a" : sprintf("%.0f%%", ncpu))
  }
}' "$RESULTS" >"$TABLE"
{
  echo
  echo "machine: $MACHINE"
  echo "command: deploy/bench/run.sh${ARGS:+ $ARGS}"
  echo
  cat "$TABLE"
  echo
  echo "per-cell results: $RESULTS; log: $LOG"
} | tee -a "$LOG"
