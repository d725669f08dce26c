#!/usr/bin/env bash
# Replay benchmark: builds release binaries, seeds event logs of 100k and 1M events
# (REPLAY_BENCH_EVENTS overrides) in fresh databases on the local MySQL/MariaDB, and
# prints events/s and peak RSS for `worker replay rebuild`, `verify` and a one-user
# `export`, plus the log's size on disk. The databases are dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --workspace --bins
target/release/replay_bench
