#!/usr/bin/env bash
# Benchmarks: builds release binaries, starts apis and workers against the local
# MySQL/MariaDB and RabbitMQ with a fake model, runs the scenarios and ends with one
# Markdown table of them (see tests/src/bin/bench/main.rs for each scenario).
#   scripts/bench.sh                 the quick scenarios (about 3 minutes)
#   scripts/bench.sh chat,pipeline   the scenarios named
#   scripts/bench.sh append          the event store's appends/s with 1, 2 and 4 processes
#   scripts/bench.sh all             every scenario, the long ones (workers, growth,
#                                    memory) and append included (about 25 minutes)
# BENCH_SECONDS sets each timed scenario's length (10 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --workspace --bins
case "${1:-}" in
  append) target/release/append_bench ;;
  all) BENCH_SCENARIOS=all target/release/bench && target/release/append_bench ;;
  "") target/release/bench ;;
  *) BENCH_SCENARIOS="$1" target/release/bench ;;
esac
