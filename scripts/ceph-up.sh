#!/usr/bin/env bash
# Start a throwaway single-node Ceph cluster for the RBD tests: one monitor,
# one OSD on memstore (RAM, nothing on disk but keyrings and logs), pools of
# size 1, everything on 127.0.0.1, cephx on.  Debian 12's own packages
# (scripts/install-test-deps.sh installs them).
#
#   scripts/ceph-up.sh DIR [POOL]     -> prints "CEPH_CONF=DIR/ceph.conf"
#   scripts/ceph-down.sh DIR          -> stops it and removes DIR
#
# DIR must not exist yet (or be empty).  Every daemon runs as the calling
# user with its pid file, socket, log and data under DIR, so two clusters
# (two DIRs) do not meet: the monitor port is picked free at start.  A
# manager (ceph-mgr) is started too unless CEPH_NO_MGR=1: I/O does not need
# it, `ceph -s` and pool statistics do.  Exits non-zero with the daemon's log
# tail if the cluster is not serving I/O on POOL (default "rbd") within
# CEPH_UP_TIMEOUT seconds (default 60).  Start it under the shared lock
# (flock /tmp/pinion-heavy.lock) on a shared machine.
set -euo pipefail
DIR=${1:?usage: ceph-up.sh DIR [POOL]}
POOL=${2:-rbd}
TIMEOUT=${CEPH_UP_TIMEOUT:-60}
MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-2147483648}
msg() { printf 'ceph-up: %s\n' "$*" >&2; }
die() {
  msg "$*"
  for l in "$DIR"/log/*.log; do [[ -f $l ]] && { msg "--- $l"; tail -n 30 "$l" >&2; }; done
  exit 1
}
for b in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
  command -v "$b" >/dev/null || die "$b not found (scripts/install-test-deps.sh installs Ceph)"
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
[[ -z $(ls -A "$DIR") ]] || die "$DIR is not empty"
mkdir -p "$DIR"/{log,run,mon,osd,mgr}

# a free TCP port on 127.0.0.1 for the monitor (msgr2)
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 20000))
    ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return 0; }
  done
  return 1
}
PORT=$(free_port) || die "no free port"
FSID=$(cat /proc/sys/kernel/random/uuid)
CONF=$DIR/ceph.conf
cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$PORT
public addr = 127.0.0.1
ms bind msgr1 = false
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.\$pid.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon max pg per osd = 1000
debug ms = 0
[mon]
mon data = $DIR/mon/\$name
mon cluster log file = $DIR/log/cluster.log
[mgr]
mgr data = $DIR/mgr/\$name
keyring = $DIR/mgr/\$name/keyring
mgr disabled modules = dashboard prometheus restful
[osd]
osd data = $DIR/osd/\$name
keyring = $DIR/osd/\$name/keyring
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd class load list = *
osd class default list = *
osd op num shards = 2
osd op num threads per shard = 1
osd heartbeat grace = 20
# a stopped OSD saves its memstore and a restarted one loads it (the fast
# shutdown would exit without unmounting the store, and memstore would come
# back empty)
osd fast shutdown = false
EOF

K=$DIR/keyring
ceph-authtool --create-keyring "$K" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$K" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
  --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$PORT]" "$DIR/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$K" >/dev/null 2>&1 ||
  die "ceph-mon --mkfs failed"
ceph-mon -c "$CONF" -i a || die "ceph-mon did not start"

C() { timeout 30 ceph -c "$CONF" "$@"; }
C mon enable-msgr2 >/dev/null 2>&1 || true

# the OSD: registered with the monitor, then its store made and started
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_KEY=$(ceph-authtool --gen-print-key)
printf '{"cephx_secret": "%s"}' "$OSD_KEY" >"$DIR/osd-secret.json"
ID=$(C osd new "$OSD_UUID" -i "$DIR/osd-secret.json") || die "ceph osd new failed"
rm -f "$DIR/osd-secret.json"
mkdir -p "$DIR/osd/osd.$ID"
printf '[osd.%s]\n\tkey = %s\n' "$ID" "$OSD_KEY" >"$DIR/osd/osd.$ID/keyring"
ceph-osd -c "$CONF" -i "$ID" --mkfs --key "$OSD_KEY" --osd-uuid "$OSD_UUID" >"$DIR/log/osd-mkfs.log" 2>&1 ||
  die "ceph-osd --mkfs failed"
ceph-osd -c "$CONF" -i "$ID" 2>>"$DIR/log/osd-start.log" || die "ceph-osd did not start"

if [[ ${CEPH_NO_MGR:-} != 1 ]] && command -v ceph-mgr >/dev/null; then
  mkdir -p "$DIR/mgr/mgr.x"
  C auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$DIR/mgr/mgr.x/keyring" >/dev/null 2>&1 || die "mgr key failed"
  ceph-mgr -c "$CONF" -i x || die "ceph-mgr did not start"
fi

C osd pool create "$POOL" 8 8 >/dev/null 2>&1 || die "pool create failed"
C osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
C osd pool application enable "$POOL" rbd >/dev/null 2>&1 || die "pool application enable failed"

# serving I/O: an object written and read back through the OSD
deadline=$((SECONDS + TIMEOUT))
until timeout 10 rados -c "$CONF" -p "$POOL" put ceph-up-probe "$CONF" 2>/dev/null &&
  timeout 10 rados -c "$CONF" -p "$POOL" rm ceph-up-probe 2>/dev/null; do
  ((SECONDS < deadline)) || die "the cluster does not serve I/O after ${TIMEOUT}s"
  sleep 0.5
done
timeout 30 rbd -c "$CONF" pool init "$POOL" >/dev/null 2>&1 || die "rbd pool init failed"
msg "up in ${SECONDS}s: mon v2:127.0.0.1:$PORT, osd.$ID (memstore $((MEMSTORE_BYTES >> 20)) MiB), pool $POOL"
echo "CEPH_CONF=$CONF"
