#!/usr/bin/env bash
# Mean wall time of one `etcdctl get` on each member of a `synod dev` group, 40 gets per member.
# Each get is a whole etcdctl process, so the figure includes the process start.
# Usage: bench/etcdctl-get-latency.sh SYNOD_BINARY   (needs etcdctl and bc; uses ports 2379-2580)
set -euo pipefail
binary=$1
data_dir=$(mktemp -d)
"$binary" dev --data-dir "$data_dir" >"$data_dir/log" 2>&1 &
group=$!
trap 'kill $group 2>/dev/null; wait $group 2>/dev/null; rm -rf "$data_dir"' EXIT
sleep 4
ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 put k v >/dev/null
for port in 2379 2479 2579; do
  started=$(date +%s.%N)
  for _ in $(seq 40); do ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$port get k >/dev/null; done
  ended=$(date +%s.%N)
  echo "$port $(echo "($ended - $started) / 40 * 1000" | bc -l | cut -c1-6) ms/get"
done
