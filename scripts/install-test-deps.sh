#!/usr/bin/env bash
# Install everything the tests need on a Debian machine (run as root).
# Idempotent: a machine that already has it all is left alone (no apt-get
# update, no download).  Non-interactive (works in CI without stdin).
#
#   scripts/install-test-deps.sh
#
# Installs:
#   * the initiator-VM harness packages (qemu-system-x86, busybox-static,
#     kmod, cpio, nvme-cli, fio, open-iscsi, tgt, ...; list in
#     tests/vm/lib/common.sh) and the guest kernel + initramfs, cached in
#     $GUEST_RUN_CACHE (default /tmp/guest-run-cache), via
#     `tests/vm/guest-setup --install`;
#   * extra packages: libiscsi-bin (iscsi-inq, iscsi-ls, iscsi-test-cu,
#     iscsi-perf for the iSCSI tests, the conformance run and the benchmark),
#     sg3-utils (sg_inq, sg_sync in the iSCSI VM test), python3 (the
#     conformance script's result parser and the ext4 shutdown ioctl of
#     tests/tests/backend_faults.rs), iperf3 and linux-perf
#     (deploy/bench/run.sh: the loopback limit and `perf record` of the
#     target; CI never runs it), e2fsprogs (mkfs.ext4 for the VM test of
#     the read paths: O_DIRECT needs a real file system in the guest; and
#     for the backend fault tests, whose mount/losetup come with util-linux),
#     python3-prometheus-client (its OpenMetrics parser reads /metrics in
#     tests/tests/ops.rs); for tests/rbd.sh a single-node Ceph cluster
#     (ceph-mon, ceph-osd, ceph-mgr, ceph-common, librbd1), qemu-utils and
#     qemu-block-extra (qemu-img's libiscsi driver, the same 7.2 as
#     qemu-system-x86), tgt-rbd (tgtd's bs_rbd, for the benchmark) and curl.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GR_PROG=install-test-deps
# shellcheck source=../tests/vm/lib/common.sh
. "$REPO/tests/vm/lib/common.sh"

EXTRA_PKGS="libiscsi-bin sg3-utils python3 python3-prometheus-client iperf3 linux-perf e2fsprogs libssl-dev pkg-config openssl gnutls-bin"
# the RBD backend's tests (tests/rbd.sh): a throwaway Ceph cluster, librbd (loaded at run
# time, so no -dev package), qemu-img/qemu-io with the libiscsi driver, tgtd's bs_rbd
EXTRA_PKGS="$EXTRA_PKGS ceph-mon ceph-osd ceph-mgr ceph-common librbd1 qemu-utils qemu-block-extra tgt-rbd curl"

export DEBIAN_FRONTEND=noninteractive
[[ $(id -u) == 0 ]] || gr_die "run as root" 1

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

updated=0
apt_update_once() {
  ((updated)) && return 0
  gr_msg "apt-get update"
  apt-get update -q </dev/null || gr_die "apt-get update failed" 1
  updated=1
}

# Same retry pattern as guest-setup: container images may carry an apt hook
# (docker-clean) that deletes downloaded .debs after each dpkg run, so
# installs that apt splits into several dpkg runs fail with "cannot access
# archive"; retrying downloads them again and finishes the job.
apt_install() {
  local i
  for i in 1 2 3; do
    if apt-get install -y -q --no-install-recommends "$@" </dev/null; then return 0; fi
    gr_msg "apt-get install failed (attempt $i), retrying"
    apt-get -f install -y -q </dev/null || true
  done
  return 1
}

missing=()
for p in $GR_ALL_PKGS $EXTRA_PKGS; do installed "$p" || missing+=("$p"); done
cache_ok=0
gr_load_cache && cache_ok=1

# The package lists must be fresh both to install packages and for
# guest-setup's `apt-get download` of the guest kernel.
if ((${#missing[@]})) || ((!cache_ok)); then
  apt_update_once
fi

if ((${#missing[@]})); then
  gr_msg "installing: ${missing[*]}"
  apt_install "${missing[@]}" || gr_die "apt-get install ${missing[*]} failed" 1
else
  gr_msg "all packages present"
fi

# harness packages (a no-op now) + guest kernel and initramfs (downloaded once)
"$REPO/tests/vm/guest-setup" --install </dev/null

for p in $GR_ALL_PKGS $EXTRA_PKGS; do installed "$p" || gr_die "package $p is still missing" 1; done
gr_msg "ok: test dependencies installed"
