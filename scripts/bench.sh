#!/usr/bin/env bash
# Throughput benchmark: builds release binaries, starts an api and a worker against
# the local MySQL/MariaDB and RabbitMQ with a fake instant (then 500 ms) model, and
# prints req/s and latency per scenario. BENCH_SECONDS sets each scenario's length.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --workspace --bins
target/release/bench
