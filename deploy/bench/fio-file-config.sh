# Sourced by fio-file.sh and fio-file-trace.sh: the one Pinion both measure,
# on the image fio-file.sh makes (the trace reads what the benchmark wrote).
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
