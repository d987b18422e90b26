#!/usr/bin/env bash
# synod beside etcd under `synod bench`: a 3-member group of each on loopback, one at a time,
# every workload run ROUNDS times alternating the two systems, each run on a fresh group.
# Prints the median throughput and latencies of each system and the synod/etcd ratios, and
# writes them with every run's JSON report and plot under bench/results/.
#
# Durability is equal: etcd syncs its WAL before acknowledging a write (its default), and synod
# acknowledges only after its group commit's fdatasync on a majority (docs/storage.md); both
# groups keep their data under one temporary directory, so on one file system.
#
# Usage: bench/compare.sh [SYNOD_BINARY]     (default: target/release/synod, built if missing)
# Environment (defaults in brackets):
#   DURATION_S [10]  seconds per run          ROUNDS [3]        runs per system and workload
#   WORKLOADS ["put range range-serializable txn mixed watch lease"]
#   CLIENTS [64]  CONNECTIONS [4]  VALUE_SIZE_BYTES [256]  KEY_SPACE [10000]  WATCHERS [16]
#   DATA_ROOT [/var/tmp]   where the groups' data directories go
# Installs Debian's etcd-server (etcd 3.4) when `etcd` is missing; needs root for that.
# Ports: synod 2379-2580 (`synod dev`), etcd 12379-12580.
set -euo pipefail
cd "$(dirname "$0")/.."

synod=${1:-${CARGO_TARGET_DIR:-target}/release/synod}
duration_s=${DURATION_S:-10}
rounds=${ROUNDS:-3}
workloads=${WORKLOADS:-put range range-serializable txn mixed watch lease}
clients=${CLIENTS:-64}
connections=${CONNECTIONS:-4}
value_size_bytes=${VALUE_SIZE_BYTES:-256}
key_space=${KEY_SPACE:-10000}
watchers=${WATCHERS:-16}
results=bench/results

if [ ! -x "$synod" ]; then
  echo "building $synod"
  cargo build --release -p synod
fi
if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing etcd-server"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  else
    echo "etcd is missing: install Debian's etcd-server (as root) and run again" >&2
    exit 1
  fi
fi

root=$(mktemp -d "${DATA_ROOT:-/var/tmp}/synod-compare.XXXXXX")
mkdir -p "$results"
group_pids=()
stop_group() {
  for pid in "${group_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${group_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  group_pids=()
}
trap 'stop_group; rm -rf "$root"' EXIT
trap 'exit 130' INT TERM

synod_endpoints=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579
etcd_endpoints=127.0.0.1:12379,127.0.0.1:12479,127.0.0.1:12579

start_synod() {
  local dir=$1
  "$synod" dev --data-dir "$dir" >"$dir.log" 2>&1 &
  group_pids+=($!)
}

start_etcd() {
  local dir=$1 cluster="" index
  for index in 1 2 3; do
    cluster+="${cluster:+,}e$index=http://127.0.0.1:$((12280 + 100 * index))"
  done
  mkdir -p "$dir"
  for index in 1 2 3; do
    local client=$((12279 + 100 * index)) peer=$((12280 + 100 * index))
    etcd --name "e$index" --data-dir "$dir/e$index" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token synod-compare \
      >"$dir/e$index.log" 2>&1 &
    group_pids+=($!)
  done
}

# Waits until the group takes a burst of writes through every member without one error: a
# member can accept a first write a little before the group is settled.
wait_ready() {
  local endpoints=$1 attempt probe="$root/ready.json"
  for attempt in $(seq 60); do
    if "$synod" bench put --total 100 --clients 6 --connections 3 --key-space 1 --quiet \
      --request-timeout-ms 2000 --endpoints "$endpoints" --json "$probe" >/dev/null 2>&1 &&
      [ "$(field "$probe" errors_total)" = 0 ]; then
      return 0
    fi
    sleep 0.5
  done
  echo "$endpoints did not become ready" >&2
  return 1
}

# The number after "FIELD": in a report (the reports are pretty-printed, one field a line).
field() {
  sed -n "s/^ *\"$2\": \([0-9.e+-]*\),\{0,1\}$/\1/p" "$1" | head -n 1
}

median() {
  sort -g | awk '{ value[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print value[(NR + 1) / 2]; else print (value[NR / 2] + value[NR / 2 + 1]) / 2 }'
}

run_once() {
  local system=$1 workload=$2 round=$3 dir endpoints
  dir="$root/$system-$workload-$round"
  if [ "$system" = synod ]; then
    endpoints=$synod_endpoints
    start_synod "$dir"
  else
    endpoints=$etcd_endpoints
    start_etcd "$dir"
  fi
  wait_ready "$endpoints"
  local out="$results/$system-$workload-$round"
  echo "== $system $workload round $round"
  "$synod" bench "$workload" --endpoints "$endpoints" --duration-s "$duration_s" \
    --clients "$clients" --connections "$connections" --value-size-bytes "$value_size_bytes" \
    --key-space "$key_space" --watchers "$watchers" --quiet --json "$out.json" --plot "$out.svg" |
    tee "$out.txt"
  stop_group
  rm -rf "$dir" "$dir.log"
}

for workload in $workloads; do
  for round in $(seq "$rounds"); do
    # Alternate which system goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) = 1 ]; then order="synod etcd"; else order="etcd synod"; fi
    for system in $order; do run_once "$system" "$workload" "$round"; done
  done
done

summary="$results/summary.md"
{
  echo "# synod beside etcd"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; synod $("$synod" --version | cut -d' ' -f2), $(etcd --version | head -n 1)."
  echo "Medians of $rounds runs of ${duration_s} s each; $clients clients on $connections connections," \
    "$value_size_bytes-byte values, $key_space keys, $watchers watchers (watch)."
  echo
  echo "| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | synod/etcd ops/s | synod/etcd p99 |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for workload in $workloads; do
    declare -A ops=() p99=() row_ops=()
    for system in synod etcd; do
      files=()
      for round in $(seq "$rounds"); do files+=("$results/$system-$workload-$round.json"); done
      ops[$system]=$(for file in "${files[@]}"; do field "$file" throughput_ops_per_s; done | median)
      p50=$(for file in "${files[@]}"; do field "$file" p50; done | median)
      p99[$system]=$(for file in "${files[@]}"; do field "$file" p99; done | median)
      p999=$(for file in "${files[@]}"; do field "$file" p999; done | median)
      errors=$(for file in "${files[@]}"; do field "$file" errors_total; done | awk '{ sum += $1 } END { print sum }')
      row_ops[$system]=$(printf '| %s | %s | %.0f | %.2f | %.2f | %.2f | %s |' "$workload" "$system" \
        "${ops[$system]}" "$(echo "$p50" | awk '{ print $1 / 1000 }')" \
        "$(echo "${p99[$system]}" | awk '{ print $1 / 1000 }')" "$(echo "$p999" | awk '{ print $1 / 1000 }')" "$errors")
    done
    ratio_ops=$(awk -v s="${ops[synod]}" -v e="${ops[etcd]}" 'BEGIN { if (e > 0) printf "%.2f", s / e; else print "-" }')
    ratio_p99=$(awk -v s="${p99[synod]}" -v e="${p99[etcd]}" 'BEGIN { if (e > 0) printf "%.2f", s / e; else print "-" }')
    echo "${row_ops[synod]} $ratio_ops | $ratio_p99 |"
    echo "${row_ops[etcd]} | |"
  done
} >"$summary"
echo
cat "$summary"
