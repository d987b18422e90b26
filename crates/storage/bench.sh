#!/usr/bin/env bash
# Runs walbench beside fio on the same filesystem, interleaved so both see
# the same background load. Usage: crates/storage/bench.sh <directory> [rounds]
set -euo pipefail
directory=${1:?usage: bench.sh <directory> [rounds]}
rounds=${2:-3}
seconds=${SECONDS_PER_RUN:-4}
cd "$(dirname "$0")/../.."
cargo build --release -p synod-storage --example walbench >/dev/null
mkdir -p "$directory"
for round in $(seq 1 "$rounds"); do
  for submitters in 1 16 256; do
    line=$(./target/release/examples/walbench append --dir "$directory" --submitters "$submitters" --seconds "$seconds")
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
