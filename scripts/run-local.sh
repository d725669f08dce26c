#!/usr/bin/env bash
# Builds and starts one api and one worker against MySQL/MariaDB and RabbitMQ that
# already run locally (no Docker). Ctrl-C stops both.
#   WORKERS=3 scripts/run-local.sh      # more workers
# Any variable from .env.example can be set in the environment or in .env.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .env ]; then set -a; . ./.env; set +a; fi
scripts/services.sh
cargo build --bin api --bin worker
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 1 "${WORKERS:-1}"); do
  target/debug/worker & pids+=($!)
done
target/debug/api & pids+=($!)
echo "api on http://${BIND_ADDR:-127.0.0.1:8000} with ${WORKERS:-1} worker(s); Ctrl-C to stop"
echo "web client: http://${BIND_ADDR:-127.0.0.1:8000}/app/"
wait
