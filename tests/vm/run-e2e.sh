#!/usr/bin/env bash
# Host side of the end-to-end tests: boots the initiator VM
# (tests/vm/guest-run, QEMU/TCG) and runs tests/vm/nvme-e2e.sh (NVMe/TCP) or
# tests/vm/iscsi-e2e.sh (iSCSI) in it.
#
#   tests/vm/run-e2e.sh [nvmet|pinion|iscsi|paths|resv] [PINION_BIN]
#
#   nvmet    NVMe/TCP reference run against the kernel's nvmet-tcp target
#   pinion   (default) NVMe/TCP run against Pinion; PINION_BIN defaults to
#            build/cargo/release/pinion, else build/cargo/debug/pinion
#   iscsi    iSCSI run against Pinion (open-iscsi, with and without CHAP)
#   resv     reservations: nvme-cli resv-* and sg_persist on one volume over
#            both protocols, a second NVMe host (pinion perf) in conflict
#            (tests/vm/resv-e2e.sh)
#   paths    the per-I/O read path (splice, direct, copy) of `auto` file
#            volumes on the guest kernel, from Pinion's metrics (nvme-paths.sh)
#   multipath  NVMe multipath (ANA) with the kernel host: two listeners,
#            path states switched by `pinion reload` under fio (nvme-multipath.sh)
#   auth     NVMe DH-HMAC-CHAP run against Pinion (tests/vm/nvme-auth-e2e.sh)
#   reload   live reconfiguration and restarts with both kernel hosts
#            (tests/vm/reload-e2e.sh)
#   tls      NVMe/TCP TLS 1.3 with kTLS against Pinion (tests/vm/nvme-tls-e2e.sh:
#            s_client and `pinion perf --tls` as hosts, the guest kernel's tls module)
#   auth-nvmet  the same against the kernel's nvmet
#            (auth targets boot Debian 12's 6.12 kernel, linux-image-6.12-amd64:
#            6.1 has no NVMe authentication; its cache defaults to
#            /tmp/guest-run-cache-6.12 so the 6.1 default cache stays as it is)
#
# The transcript is streamed and kept in $VM_E2E_OUT/<target>.log (default
# OUT build/vm-e2e under the repository root), the guest console in
# <target>.console.log.  Exit status: the guest test's (0 = PASS; 124 guest
# timeout; 125 harness failure).  Needs root and the packages of
# scripts/install-test-deps.sh; the guest kernel is prepared on first use.
#
# environment: VM_E2E_OUT, VM_E2E_TIMEOUT (guest timeout, default 600 s),
#   GUEST_RUN_OPTS (extra guest-run options), GUEST_RUN_CACHE;
#   passed into the guest when set: FIO_SIZE FIO_MIX_SIZE FIO_RUNTIME
#   CTRL_LOSS_TMO PINION_READY_TIMEOUT RUST_LOG RUST_BACKTRACE
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

target=${1:-pinion}
args=() bin=
script=nvme-e2e.sh
case $target in
  auth|auth-nvmet)
    export GUEST_RUN_KERNEL_PKG=${GUEST_RUN_KERNEL_PKG:-linux-image-6.12-amd64}
    export GUEST_RUN_CACHE=${GUEST_RUN_CACHE:-/tmp/guest-run-cache-6.12}
    ;;&
  nvmet) ;;
  auth-nvmet) script=nvme-auth-e2e.sh ;;
  pinion|iscsi|paths|auth|resv|reload|tls|multipath)
    [[ $target == iscsi ]] && script=iscsi-e2e.sh
    [[ $target == resv ]] && script=resv-e2e.sh
    [[ $target == reload ]] && script=reload-e2e.sh
    [[ $target == multipath ]] && script=nvme-multipath.sh
    [[ $target == paths ]] && script=nvme-paths.sh
    [[ $target == auth ]] && script=nvme-auth-e2e.sh
    [[ $target == tls ]] && script=nvme-tls-e2e.sh
    bin=${2:-}
    if [[ -z $bin ]]; then
      for b in "$REPO/build/cargo/release/pinion" "$REPO/build/cargo/debug/pinion"; do
        [[ -x $b ]] && { bin=$b; break; }
      done
    fi
    [[ -n $bin && -x $bin ]] || { echo "run-e2e: no Pinion binary (looked for build/cargo/{release,debug}/pinion; got '${bin}')" >&2; exit 2; }
    bin=$(realpath -e -- "$bin")
    args=("$bin")
    [[ $target == pinion || $target == auth ]] && args=(pinion "$bin")
    ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [nvmet|pinion|iscsi|paths|auth|auth-nvmet|resv|reload|tls|multipath] [PINION_BIN]" >&2; exit 2 ;;
esac

OUT=${VM_E2E_OUT:-$REPO/build/vm-e2e}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
log=$OUT/$target.log

opts=(--timeout "${VM_E2E_TIMEOUT:-600}" --cwd "$REPO" --console "$OUT/$target.console.log")
# the guest's /tmp is an empty tmpfs: show the host's /tmp (copy-on-write)
# when the repository or the binary lives there
[[ $REPO == /tmp/* || ${bin:-} == /tmp/* ]] && opts+=(--host-tmp)
for v in FIO_SIZE FIO_MIX_SIZE FIO_RUNTIME CTRL_LOSS_TMO PINION_READY_TIMEOUT RUST_LOG RUST_BACKTRACE BENCH_TIME MP_FIO_RUNTIME MP_PHASE; do
  [[ -n ${!v+x} ]] && opts+=(-e "$v")
done
# shellcheck disable=SC2206
opts+=(${GUEST_RUN_OPTS:-})

echo "run-e2e: $target ($script${args[*]:+ ${args[*]}}); transcript $log"
start=${EPOCHREALTIME/./}
if [[ $target == nvmet || $target == auth-nvmet ]]; then args=(nvmet); fi
"$HERE/guest-run" "${opts[@]}" -- "$HERE/$script" "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
us=$((${EPOCHREALTIME/./} - start))
printf 'run-e2e: %s rc=%d wall=%d.%ds transcript=%s\n' "$target" "$rc" \
  $((us / 1000000)) $((us % 1000000 / 100000)) "$log"
exit "$rc"
