#!/bin/bash
# End-to-end NVMe in-band authentication (DH-HMAC-CHAP).  Runs INSIDE the
# initiator VM (host side: tests/vm/run-e2e.sh auth|auth-nvmet, which boots
# Debian 12's 6.12 kernel: 6.1 is built without NVMe authentication).
#
#   nvme-auth-e2e.sh nvmet                 # reference: kernel nvmet with host keys in configfs
#   nvme-auth-e2e.sh pinion PINION_BINARY  # Pinion with [[subsystem.host]] keys
#
# Steps: with the target set to each hash (SHA-256/384/512, with ffdhe2048,
# ffdhe3072 and the null group), a host with the right secret connects
# (unidirectional) and passes a crc32c-verified fio run; the same with the
# controller secret too (bidirectional); a wrong host secret, a missing one,
# and a wrong controller secret are refused.  Ends with
# "NVME-AUTH-E2E(<target>): PASS".
#
# environment: FIO_SIZE (default 16M), FIO_RUNTIME (default 60),
#   PINION_READY_TIMEOUT (default 30)
set -euo pipefail
exec 2>&1

TARGET=${1:-}
case $TARGET in
  nvmet) ;;
  pinion)
    PINION=${2:-}
    [[ -n $PINION && -x $PINION ]] || { echo "usage: $0 pinion PINION_BINARY (not executable: '${PINION}')"; exit 2; }
    ;;
  *) echo "usage: $0 nvmet | pinion PINION_BINARY"; exit 2 ;;
esac

NQN=nqn.2026-11.io.pinion:auth
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:5e1f0c1a-0000-4000-8000-00000000a117
HOSTID=5e1f0c1a-0000-4000-8000-00000000a117
ADDR=127.0.0.1 PORT=4420
FIO_SIZE=${FIO_SIZE:-16M}
FIO_RUNTIME=${FIO_RUNTIME:-60}
PINION_READY_TIMEOUT=${PINION_READY_TIMEOUT:-30}
IMG=/dev/shm/pinion-auth.img
WORK=/dev/shm/nvme-auth-e2e
CFG=$WORK/pinion.toml
PLOG=$WORK/pinion.log
LAST=$WORK/last.out
NVMET=/sys/kernel/config/nvmet
mkdir -p "$WORK"

cur_step=setup
step() { cur_step=$*; printf '\n===== %s\n' "$*"; }
run() {
  printf '\n$ %s\n' "$*"
  local t=$SECONDS rc=0
  timeout -k 10 "${STEP_TIMEOUT:-120}" "$@" >"$LAST" 2>&1 || rc=$?
  cat "$LAST"
  ((rc == 124)) && echo "(timed out after ${STEP_TIMEOUT:-120}s)"
  printf '[%s: rc=%d, %ds]\n' "$1" "$rc" $((SECONDS - t))
  return $rc
}
check() {
  local what=$1; shift
  if "$@"; then echo "check: $what: ok"; else echo "check: $what: FAILED"; return 1; fi
}
wait_for() {
  local n=$(($1 * 10)); shift
  until "$@" >/dev/null 2>&1; do n=$((n - 1)); ((n > 0)) || return 1; sleep 0.1; done
}
listening() { [[ -n $(ss -ltnH "sport = :$PORT" 2>/dev/null) ]]; }

# secrets as nvme-cli makes them: host keys with each transformation hash
step "secrets (nvme gen-dhchap-key)"
KEY=$(nvme gen-dhchap-key -m 1 -n "$HOSTNQN")
CKEY=$(nvme gen-dhchap-key -m 3 -n "$NQN")
WRONG=$(nvme gen-dhchap-key -m 1 -n "$HOSTNQN")
echo "host key ${KEY:0:10}..., controller key ${CKEY:0:10}..."

pinion_pid=
start_pinion() {
  truncate -s 64M "$IMG"
  cat >"$CFG" <<EOF
[nvme_tcp]
listen = ["$ADDR:$PORT"]
[iscsi]
listen = []
[[volume]]
name = "vol1"
backend = "file"
path = "$IMG"
size = "64MiB"
io_mode = "buffered"
[[subsystem]]
nqn = "$NQN"
namespaces = ["vol1"]
[[subsystem.host]]
nqn = "$HOSTNQN"
dhchap_key = "$KEY"
dhchap_ctrl_key = "$CKEY"
dhchap_hash = "$HASH"
dhchap_dhgroup = "$GROUP"
EOF
  setsid "$PINION" serve --config "$CFG" >"$PLOG" 2>&1 </dev/null &
  pinion_pid=$!
  local n=$((PINION_READY_TIMEOUT * 10))
  until listening; do
    kill -0 "$pinion_pid" 2>/dev/null || { echo "pinion exited before listening"; pinion_pid=; return 1; }
    n=$((n - 1)); ((n > 0)) || { echo "pinion not listening after ${PINION_READY_TIMEOUT}s"; return 1; }
    sleep 0.1
  done
  echo "pinion pid $pinion_pid listening on $ADDR:$PORT"
}
stop_pinion() {
  [[ -n $pinion_pid ]] || return 0
  local pid=$pinion_pid; pinion_pid=
  kill -TERM "$pid" 2>/dev/null || true
  wait_for 10 sh -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
start_nvmet() {
  modprobe nvmet-tcp
  truncate -s 64M "$IMG"
  mkdir "$NVMET/hosts/$HOSTNQN"
  echo -n "$KEY" >"$NVMET/hosts/$HOSTNQN/dhchap_key"
  echo -n "$CKEY" >"$NVMET/hosts/$HOSTNQN/dhchap_ctrl_key"
  echo -n "hmac($HASH)" >"$NVMET/hosts/$HOSTNQN/dhchap_hash"
  echo -n "$GROUP" >"$NVMET/hosts/$HOSTNQN/dhchap_dhgroup"
  mkdir "$NVMET/subsystems/$NQN"
  echo 0 >"$NVMET/subsystems/$NQN/attr_allow_any_host"
  ln -s "$NVMET/hosts/$HOSTNQN" "$NVMET/subsystems/$NQN/allowed_hosts/$HOSTNQN"
  mkdir "$NVMET/subsystems/$NQN/namespaces/1"
  echo -n "$IMG" >"$NVMET/subsystems/$NQN/namespaces/1/device_path"
  echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/buffered_io"
  echo 1 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
  mkdir "$NVMET/ports/1"
  echo tcp >"$NVMET/ports/1/addr_trtype"
  echo ipv4 >"$NVMET/ports/1/addr_adrfam"
  echo "$ADDR" >"$NVMET/ports/1/addr_traddr"
  echo "$PORT" >"$NVMET/ports/1/addr_trsvcid"
  ln -s "$NVMET/subsystems/$NQN" "$NVMET/ports/1/subsystems/$NQN"
}
stop_nvmet() {
  rm -f "$NVMET/ports/1/subsystems/$NQN" "$NVMET/subsystems/$NQN/allowed_hosts/$HOSTNQN"
  rmdir "$NVMET/ports/1" 2>/dev/null || true
  [[ -d $NVMET/subsystems/$NQN/namespaces/1 ]] && echo 0 >"$NVMET/subsystems/$NQN/namespaces/1/enable"
  rmdir "$NVMET/subsystems/$NQN/namespaces/1" "$NVMET/subsystems/$NQN" "$NVMET/hosts/$HOSTNQN" 2>/dev/null || true
}
start_target() { if [[ $TARGET == nvmet ]]; then start_nvmet; else start_pinion; fi; }
stop_target() { if [[ $TARGET == nvmet ]]; then stop_nvmet; else stop_pinion; fi; }

dev=
find_dev() {
  dev=
  local s n
  for _ in $(seq 150); do
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
      [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] || continue
      for n in "$s"/nvme*n1; do [[ -e $n && ${n##*/} != *c*n* ]] && dev=/dev/${n##*/}; done
    done
    [[ -n $dev && -b $dev ]] && break
    sleep 0.1
  done
  [[ -b $dev ]] && echo "namespace: $dev" || { echo "no namespace for $NQN"; return 1; }
}
connected() {
  local s
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$NQN" ]] && compgen -G "$s/nvme[0-9]*" >/dev/null && return 0
  done
  return 1
}
connect() { # connect EXTRA-ARGS...
  run nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" --hostnqn="$HOSTNQN" --hostid="$HOSTID" \
    -i 1 --ctrl-loss-tmo=5 "$@"
}
disconnect() {
  run nvme disconnect -n "$NQN"
  check "disconnected" wait_for 10 sh -c "! ls /sys/class/nvme-subsystem/*/subsysnqn >/dev/null 2>&1 || ! grep -qx '$NQN' /sys/class/nvme-subsystem/*/subsysnqn"
}
refused() { # refused WHAT EXTRA-ARGS...
  local what=$1; shift
  if connect "$@"; then echo "check: $what refused: FAILED (connected)"; return 1; fi
  if connected; then echo "check: $what refused: FAILED (a controller is present)"; return 1; fi
  echo "check: $what refused: ok"
}
fio_verify() {
  STEP_TIMEOUT=$((FIO_RUNTIME * 2 + 60)) run fio --name=auth-verify --filename="$dev" \
    --rw=randwrite --bs=4k --size="$FIO_SIZE" --runtime="$FIO_RUNTIME" \
    --verify=crc32c --direct=1 --ioengine=libaio --iodepth=8
}

cleanup() {
  local rc=$?
  if ((rc)); then
    echo; echo "===== FAILED in step '$cur_step' (rc=$rc)"
    [[ $TARGET == pinion ]] && { echo "----- pinion log, last 100 lines:"; tail -n 100 "$PLOG" 2>/dev/null; }
    echo "----- kernel log (last 40 lines):"; dmesg | tail -n 40
  fi
  connected && timeout 30 nvme disconnect -n "$NQN" >/dev/null 2>&1
  stop_target
  ((rc)) && echo "NVME-AUTH-E2E($TARGET): FAIL (step '$cur_step', rc=$rc)"
  exit "$rc"
}
trap cleanup EXIT

step "environment: kernel $(uname -r), $(nvme version | head -1)"
modprobe nvme-tcp
[[ -e /sys/module/nvme_auth || -n $(modinfo -n nvme-auth 2>/dev/null) ]] ||
  { echo "this kernel has no NVMe authentication (nvme-auth); boot 6.12 (run-e2e.sh auth)"; exit 3; }

for hg in sha256:ffdhe2048 sha384:ffdhe3072 sha512:null; do
  HASH=${hg%:*} GROUP=${hg#*:}
  step "target $TARGET with $HASH and $GROUP"
  stop_target
  start_target

  step "unidirectional, $HASH / $GROUP: the host's secret"
  connect --dhchap-secret="$KEY"
  find_dev
  fio_verify
  disconnect
done

step "bidirectional ($HASH / $GROUP): the host's and the controller's secrets"
connect --dhchap-secret="$KEY" --dhchap-ctrl-secret="$CKEY"
find_dev
fio_verify
disconnect

step "a wrong host secret is refused"
refused "wrong host secret" --dhchap-secret="$WRONG"

step "no secret is refused"
refused "missing host secret"

step "a wrong controller secret is refused (the host rejects the controller)"
refused "wrong controller secret" --dhchap-secret="$KEY" --dhchap-ctrl-secret="$WRONG"

if [[ $TARGET == pinion ]]; then
  step "failures were logged with the peer"
  check "pinion logged the failed authentications" grep -q "NVMe authentication failed" "$PLOG"
fi

cur_step=done
echo
echo "NVME-AUTH-E2E($TARGET): PASS"
