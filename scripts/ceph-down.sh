#!/usr/bin/env bash
# Stop a cluster started by scripts/ceph-up.sh DIR and remove DIR.
# Stops only the daemons whose pid files are under DIR (never by name).
set -uo pipefail
DIR=${1:?usage: ceph-down.sh DIR}
[[ -d $DIR ]] || exit 0
[[ -f $DIR/ceph.conf ]] || { echo "ceph-down: $DIR is not a ceph-up.sh cluster" >&2; exit 1; }
pids=()
for f in "$DIR"/run/*.pid; do
  [[ -f $f ]] || continue
  p=$(cat "$f")
  [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && { kill "$p"; pids+=("$p"); }
done
for _ in $(seq 100); do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  ((alive)) || break
  sleep 0.1
done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -9 "$p"; done
rm -rf "$DIR"
