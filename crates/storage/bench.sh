#!/usr/bin/env bash
# Runs walbench beside fio on the same filesystem, interleaved so both see
# the same background load. Each walbench run is followed by two fio runs
# writing sequentially with an fdatasync after every write of the size of the
# WAL's mean batch (like for like):
#   fio_append:    appends to a growing file (--fallocate=none), so every
#                  fdatasync also commits the file size, as an unpreallocated
#                  log would;
#   fio_overwrite: rewrites a file laid out beforehand (--overwrite=1), so an
#                  fdatasync flushes data only: the disk's best synced
#                  sequential bandwidth.
# Submitters are OS threads (drivers=0) or spread over 2 driver threads.
# Usage: crates/storage/bench.sh <directory> [rounds]
set -euo pipefail
directory=${1:?usage: bench.sh <directory> [rounds]}
rounds=${2:-3}
seconds=${SECONDS_PER_RUN:-4}
cd "$(dirname "$0")/../.."
cargo build --release -p synod-storage --example walbench >/dev/null 2>&1
mkdir -p "$directory"

fio_mb_per_s() { # bs mode-flag
  local line
  line=$(fio --name=seq --rw=write --bs="$1" --size=256M --runtime="$seconds" --fdatasync=1 "$2" \
    --directory="$directory" --output-format=terse --terse-version=3 2>/dev/null)
  rm -f "$directory"/seq.*
  awk -v kb="$(cut -d';' -f48 <<<"$line")" -v iops="$(cut -d';' -f49 <<<"$line")" \
    'BEGIN { printf "%.2f %d", kb * 1.024 / 1000, iops }'
}

for round in $(seq 1 "$rounds"); do
  for configuration in 1:0 16:0 256:0 16:2 256:2; do
    submitters=${configuration%%:*}
    drivers=${configuration##*:}
    line=$(./target/release/examples/walbench append --dir "$directory" --submitters "$submitters" \
      --driver-threads "$drivers" --seconds "$seconds")
    batch=$(sed -E 's/.*log_bytes_per_batch=([0-9]+).*/\1/' <<<"$line")
    log_mb=$(sed -E 's/.* log_MB_per_s=([0-9.]+).*/\1/' <<<"$line")
    read -r append_mb append_iops <<<"$(fio_mb_per_s "$batch" --fallocate=none)"
    read -r overwrite_mb overwrite_iops <<<"$(fio_mb_per_s "$batch" --overwrite=1)"
    echo "round=$round $line"
    echo "round=$round submitters=$submitters driver_threads=$drivers fio_bs=$batch" \
      "fio_append_MB_per_s=$append_mb fio_append_syncs_per_s=$append_iops" \
      "fio_overwrite_MB_per_s=$overwrite_mb fio_overwrite_syncs_per_s=$overwrite_iops" \
      "ratio_to_append=$(awk -v a="$log_mb" -v b="$append_mb" 'BEGIN { printf "%.2f", a / b }')" \
      "ratio_to_overwrite=$(awk -v a="$log_mb" -v b="$overwrite_mb" 'BEGIN { printf "%.2f", a / b }')"
  done
done
