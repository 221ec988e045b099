# Sourced by the fio-file*.sh scripts: the one Pinion they measure, on the
# image fio-file.sh makes (the traces read what the benchmark wrote) or, in
# fio-file-nullblk.sh, on a null_blk device.
FIO_FILE_PORT=${BENCH_NVME_PORT:-4521}
# O_DIRECT needs a real file system (not tmpfs): the image lives beside the build
FIO_FILE_IMG=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/bench/data/fio-file.img

# fio_file_config PORT IMAGE > pinion.toml: one reactor, the image as an
# O_DIRECT file volume behind nqn.2026-11.io.pinion:fio-file.
fio_file_config() {
  cat <<CFG
[nvme_tcp]
listen = ["127.0.0.1:$1"]
[iscsi]
listen = []
[runtime]
cores = 1
[log]
level = "warn"
[[volume]]
name = "f"
backend = "file"
path = "$2"
io_mode = "direct"
[[subsystem]]
nqn = "nqn.2026-11.io.pinion:fio-file"
namespaces = ["f"]
hosts = ["*"]
CFG
}

# fio_file_trace_setup NAME: for the trace scripts, which read the image
# fio-file.sh made, with perf: checks both, makes the scratch directory OUT
# and stops at exit what they start: the target (`pid`, see fio_file_serve)
# and the host or local fio (`hp`).
fio_file_trace_setup() {
  [[ -f $FIO_FILE_IMG ]] || { echo "no $FIO_FILE_IMG: run deploy/bench/fio-file.sh first" >&2; exit 2; }
  command -v perf >/dev/null || { echo "perf missing" >&2; exit 2; }
  OUT=$(mktemp -d "/tmp/pinion-fio-$1.XXXXXX")
  pid= hp=
  trap fio_file_trace_cleanup EXIT
}
fio_file_trace_cleanup() {
  [[ -n $hp ]] && kill "$hp" 2>/dev/null
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$OUT"
}

# fio_file_serve BIN DIR: Pinion on CPU 0 serving the image, its config and
# log in DIR; sets `pid` and returns once its port answers.
fio_file_serve() {
  fio_file_config "$FIO_FILE_PORT" "$FIO_FILE_IMG" >"$2/pinion.toml"
  taskset -c 0 "$1" serve --config "$2/pinion.toml" >"$2/pinion.log" 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$FIO_FILE_PORT) 2>/dev/null && break; sleep 0.1; done
}

# med N...: the median (the lower middle one of an even count)
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
