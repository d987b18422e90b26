#!/usr/bin/env bash
# What TLS and auth cost synod under `synod bench`: a 3-member `synod dev` group on loopback in
# three set-ups, one at a time, each workload run ROUNDS times alternating the set-ups, each
# run on a fresh group:
#   plain  plain HTTP/2, auth disabled;
#   tls    `synod dev --tls` (TLS 1.3 on the client port, followers forward over TLS);
#   auth   TLS, auth enabled, and the bench running as user `bench`, whose role may read and
#          write `bench/` (so every request is checked against a key-range permission).
# Prints the median throughput and latencies of each and their ratios to plain, and writes them
# with every run's JSON report under bench/results/security/.
#
# Usage: bench/security-cost.sh [SYNOD_BINARY]     (default: target/release/synod)
# Environment (defaults in brackets):
#   DURATION_S [10]  ROUNDS [3]  WORKLOADS ["put range"]  CLIENTS [64]  CONNECTIONS [4]
#   DATA_ROOT [/var/tmp]
# Needs etcdctl (Debian's etcd-client) to set up the users. Ports: 2379-2580 (`synod dev`).
set -euo pipefail
cd "$(dirname "$0")/.."

synod=${1:-${CARGO_TARGET_DIR:-target}/release/synod}
duration_s=${DURATION_S:-10}
rounds=${ROUNDS:-3}
workloads=${WORKLOADS:-put range}
clients=${CLIENTS:-64}
connections=${CONNECTIONS:-4}
results=bench/results/security

if [ ! -x "$synod" ]; then
  echo "building $synod"
  cargo build --release -p synod
fi
command -v etcdctl >/dev/null || { echo "etcdctl is missing: install Debian's etcd-client" >&2; exit 1; }

root=$(mktemp -d "${DATA_ROOT:-/var/tmp}/synod-security.XXXXXX")
mkdir -p "$results"
group_pid=""
stop_group() {
  if [ -n "$group_pid" ]; then
    kill "$group_pid" 2>/dev/null || true
    wait "$group_pid" 2>/dev/null || true
    group_pid=""
  fi
}
trap 'stop_group; rm -rf "$root"' EXIT
trap 'exit 130' INT TERM

hosts=(127.0.0.1:2379 127.0.0.1:2479 127.0.0.1:2579)

# The bench flags that reach set-up $1 in data directory $2.
bench_flags() {
  local setup=$1 dir=$2 scheme=http
  [ "$setup" != plain ] && scheme=https
  local endpoints
  endpoints=$(printf "$scheme://%s," "${hosts[@]}")
  printf -- "--endpoints %s" "${endpoints%,}"
  [ "$setup" != plain ] && printf -- " --cacert %s" "$dir/tls/ca.pem"
  [ "$setup" = auth ] && printf -- " --user bench:benchpw"
  return 0
}

# Waits until the group takes a burst of writes through every member without one error.
wait_ready() {
  local flags=$1 attempt probe="$root/ready.json"
  for attempt in $(seq 60); do
    # shellcheck disable=SC2086
    if "$synod" bench put --total 100 --clients 6 --connections 3 --key-space 1 --quiet \
      --request-timeout-ms 2000 $flags --json "$probe" >/dev/null 2>&1 &&
      [ "$(field "$probe" errors_total)" = 0 ]; then
      return 0
    fi
    sleep 0.5
  done
  echo "the group did not become ready" >&2
  return 1
}

set_up_auth() {
  local dir=$1
  local ctl=(etcdctl --endpoints "https://${hosts[0]}" --cacert "$dir/tls/ca.pem")
  "${ctl[@]}" user add root:rootpw >/dev/null
  "${ctl[@]}" user grant-role root root >/dev/null
  "${ctl[@]}" role add bench >/dev/null
  "${ctl[@]}" role grant-permission bench readwrite bench/ --prefix=true >/dev/null
  "${ctl[@]}" user add bench:benchpw >/dev/null
  "${ctl[@]}" user grant-role bench bench >/dev/null
  "${ctl[@]}" auth enable >/dev/null
}

field() {
  sed -n "s/^ *\"$2\": \([0-9.e+-]*\),\{0,1\}$/\1/p" "$1" | head -n 1
}

median() {
  sort -g | awk '{ value[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print value[(NR + 1) / 2]; else print (value[NR / 2] + value[NR / 2 + 1]) / 2 }'
}

run_once() {
  local setup=$1 workload=$2 round=$3 dir="$root/$1-$2-$3" tls_flag=""
  [ "$setup" != plain ] && tls_flag=--tls
  # shellcheck disable=SC2086
  "$synod" dev --data-dir "$dir" $tls_flag >"$dir.log" 2>&1 &
  group_pid=$!
  wait_ready "$(bench_flags "${setup/auth/tls}" "$dir")"
  [ "$setup" = auth ] && set_up_auth "$dir"
  local out="$results/$setup-$workload-$round"
  echo "== $setup $workload round $round"
  # shellcheck disable=SC2046
  "$synod" bench "$workload" $(bench_flags "$setup" "$dir") --duration-s "$duration_s" \
    --clients "$clients" --connections "$connections" --quiet --json "$out.json" | tee "$out.txt"
  stop_group
  rm -rf "$dir" "$dir.log"
}

setups="plain tls auth"
for workload in $workloads; do
  for round in $(seq "$rounds"); do
    # Rotate which set-up goes first, so none always runs on a warmer machine.
    case $((round % 3)) in
      1) order="plain tls auth" ;;
      2) order="tls auth plain" ;;
      0) order="auth plain tls" ;;
    esac
    for setup in $order; do run_once "$setup" "$workload" "$round"; done
  done
done

summary="$results/summary.md"
{
  echo "# What TLS and auth cost synod"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; synod $("$synod" --version | cut -d' ' -f2)."
  echo "Medians of $rounds runs of ${duration_s} s each; $clients clients on $connections connections."
  echo
  echo "| workload | set-up | ops/s | p50 ms | p99 ms | errors | ops/s / plain | p50 / plain |"
  echo "|---|---|---|---|---|---|---|---|"
  for workload in $workloads; do
    declare -A ops=() p50=()
    for setup in $setups; do
      files=()
      for round in $(seq "$rounds"); do files+=("$results/$setup-$workload-$round.json"); done
      ops[$setup]=$(for f in "${files[@]}"; do field "$f" throughput_ops_per_s; done | median)
      p50[$setup]=$(for f in "${files[@]}"; do field "$f" p50; done | median)
      p99=$(for f in "${files[@]}"; do field "$f" p99; done | median)
      errors=$(for f in "${files[@]}"; do field "$f" errors_total; done | awk '{ sum += $1 } END { print sum }')
      ratio_ops=$(awk -v a="${ops[$setup]}" -v b="${ops[plain]}" 'BEGIN { printf "%.2f", a / b }')
      ratio_p50=$(awk -v a="${p50[$setup]}" -v b="${p50[plain]}" 'BEGIN { printf "%.2f", a / b }')
      printf '| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s |\n' "$workload" "$setup" "${ops[$setup]}" \
        "$(awk -v v="${p50[$setup]}" 'BEGIN { print v / 1000 }')" "$(awk -v v="$p99" 'BEGIN { print v / 1000 }')" \
        "$errors" "$ratio_ops" "$ratio_p50"
    done
  done
} | tee "$summary"
