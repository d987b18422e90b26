#!/usr/bin/env bash
# Runs walbench beside fio on the same filesystem, interleaved so both see
# the same background load. Each walbench run is followed by fio writing
# sequentially with an fdatasync after every write of the size of the WAL's
# mean batch (like for like), appending to a growing file as the log does.
# Submitters are OS threads (drivers=0) or spread over 2 driver threads.
# Usage: crates/storage/bench.sh <directory> [rounds]
set -euo pipefail
directory=${1:?usage: bench.sh <directory> [rounds]}
rounds=${2:-3}
seconds=${SECONDS_PER_RUN:-4}
cd "$(dirname "$0")/../.."
cargo build --release -p synod-storage --example walbench >/dev/null
mkdir -p "$directory"
for round in $(seq 1 "$rounds"); do
  for configuration in 1:0 16:0 256:0 16:2 256:2; do
    submitters=${configuration%%:*}
    drivers=${configuration##*:}
    line=$(./target/release/examples/walbench append --dir "$directory" --submitters "$submitters" \
      --driver-threads "$drivers" --seconds "$seconds")
    batch=$(sed -E 's/.*log_bytes_per_batch=([0-9]+).*/\1/' <<<"$line")
    log_mb=$(sed -E 's/.* log_MB_per_s=([0-9.]+).*/\1/' <<<"$line")
    fio_line=$(fio --name=seq --rw=write --bs="$batch" --size=1G --runtime="$seconds" --fdatasync=1 --fallocate=none \
      --directory="$directory" --output-format=terse --terse-version=3 2>/dev/null)
    rm -f "$directory"/seq.*
    fio_kb=$(cut -d';' -f48 <<<"$fio_line")
    fio_iops=$(cut -d';' -f49 <<<"$fio_line")
    ratio=$(awk -v a="$log_mb" -v b="$fio_kb" 'BEGIN { printf "%.2f", a / (b * 1.024 / 1000) }')
    echo "round=$round $line"
    echo "round=$round fio bs=$batch fdatasync=1 fallocate=none write_MB_per_s=$(awk -v b="$fio_kb" 'BEGIN { printf "%.2f", b * 1.024 / 1000 }') syncs_per_s=$fio_iops wal_log_to_fio_ratio=$ratio"
  done
done
