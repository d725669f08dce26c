#!/usr/bin/env bash
# The test command: builds the api and worker binaries (the system tests start them
# as child processes), then runs every test of the workspace. Needs MySQL/MariaDB on
# 127.0.0.1:3306 (root, no password) and RabbitMQ on 127.0.0.1:5672 (guest/guest);
# `scripts/services.sh` starts local ones; `scripts/test-tools.sh` brings the Python
# tools the API-description tests run. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
scripts/test-tools.sh
cargo test --workspace "$@"
