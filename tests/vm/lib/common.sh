# shellcheck shell=bash
# Shared helpers for guest-run / guest-setup.  Sourced, not executed.

GR_PROG=${GR_PROG:-${0##*/}}
GR_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Where the guest kernel + initramfs are cached.  Scratch under /tmp by default.
GR_CACHE=${GUEST_RUN_CACHE:-/tmp/guest-run-cache}

# Debian package providing the guest kernel.  The "linux-image-amd64"
# meta-package is resolved to the concrete linux-image-<abi>-amd64 package.
GR_KERNEL_PKG=${GUEST_RUN_KERNEL_PKG:-linux-image-amd64}

# Modules that must be in the initramfs (to reach the 9p root); everything
# else is loaded from the full module tree exported over 9p.
GR_EARLY_MODULES="virtio_pci virtio_console 9pnet_virtio 9p overlay"

gr_msg()  { printf '%s: %s\n' "$GR_PROG" "$*" >&2; }
gr_die()  { local rc=${2:-125}; printf '%s: error: %s\n' "$GR_PROG" "$1" >&2; exit "$rc"; }

# command -> Debian package, for the tools the harness itself needs on the host
declare -A GR_CORE_CMDS=(
  [qemu-system-x86_64]=qemu-system-x86
  [busybox]=busybox-static
  [depmod]=kmod
  [modprobe]=kmod
  [cpio]=cpio
  [gzip]=gzip
  [dpkg-deb]=dpkg
  [apt-get]=apt
)
# tools the validation tests run *inside* the guest (they come from the host root)
declare -A GR_TEST_CMDS=(
  [nvme]=nvme-cli
  [fio]=fio
  [iscsiadm]=open-iscsi
  [iscsid]=open-iscsi
  [tgtd]=tgt
  [tgtadm]=tgt
  [ss]=iproute2
  [sg_persist]=sg3-utils
)
# everything `guest-setup --install` installs (harness + in-guest test tools;
# open-iscsi/tgt are for the iSCSI tests).  xz-utils: extract the vmlinux.
GR_ALL_PKGS="qemu-system-x86 busybox-static kmod cpio gzip xz-utils iproute2 nvme-cli fio open-iscsi tgt sg3-utils"

# gr_check_cmds ASSOC_ARRAY_NAME -> prints missing packages (space separated)
gr_missing_pkgs() {
  local -n _map=$1
  local c missing=()
  for c in "${!_map[@]}"; do
    if ! PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1; then
      missing+=("${_map[$c]}")
    fi
  done
  printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//'
}

gr_require_core() {
  local m
  m=$(gr_missing_pkgs GR_CORE_CMDS)
  if [[ -n $m ]]; then
    gr_die "missing Debian package(s): $m
  install them with:  apt-get install --no-install-recommends $m
  or run:             $GR_HOME/guest-setup --install"
  fi
  # busybox must be static: it runs alone in the initramfs
  local out
  out=$(LC_ALL=C ldd "$(command -v busybox)" 2>&1 || true)
  if [[ $out != *"not a dynamic"* ]]; then
    gr_die "$(command -v busybox) is dynamically linked; install busybox-static (apt-get install busybox-static)"
  fi
}

# Sets GR_KVER, GR_KDIR (extracted kernel package), GR_VMLINUZ, GR_INITRD
# from the cache; returns 1 if the cache is not populated.
gr_load_cache() {
  [[ -f $GR_CACHE/current ]] || return 1
  GR_KVER=$(<"$GR_CACHE/current")
  GR_KDIR=$GR_CACHE/kernel-$GR_KVER
  GR_VMLINUZ=$GR_KDIR/boot/vmlinuz-$GR_KVER
  # Prefer the uncompressed ELF vmlinux (booted through PVH): decompressing the
  # xz bzImage under TCG costs ~3.5 s per boot.  GUEST_RUN_BZIMAGE=1 disables.
  GR_KERNEL=$GR_VMLINUZ
  if [[ -z ${GUEST_RUN_BZIMAGE:-} && -f $GR_KDIR/boot/vmlinux-$GR_KVER ]]; then
    GR_KERNEL=$GR_KDIR/boot/vmlinux-$GR_KVER
  fi
  GR_INITRD=$GR_CACHE/initrd-$GR_KVER.gz
  [[ -f $GR_VMLINUZ && -f $GR_INITRD && -f $GR_KDIR/lib/modules/$GR_KVER/modules.dep ]] || return 1
}

# Hash of everything that goes into the initramfs, to rebuild it when the
# harness's init script changes.
gr_initrd_stamp() {
  { cat "$GR_HOME/lib/init"; echo "$GR_EARLY_MODULES"; ls -l "$(command -v busybox)"; } | sha256sum | cut -d' ' -f1
}
