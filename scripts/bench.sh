#!/usr/bin/env bash
# Throughput benchmark: builds release binaries, starts an api and a worker against
# the local MySQL/MariaDB and RabbitMQ with a fake instant (then 500 ms) model, and
# prints req/s and latency per scenario. BENCH_SECONDS sets each scenario's length;
# BENCH_SCENARIOS picks some (see tests/src/bin/bench.rs).
#   scripts/bench.sh          the service scenarios
#   scripts/bench.sh append   the event store's appends/s with 1, 2 and 4 processes
#   scripts/bench.sh all      both
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --workspace --bins
case "${1:-}" in
  append) target/release/append_bench ;;
  all) target/release/bench && target/release/append_bench ;;
  *) target/release/bench ;;
esac
