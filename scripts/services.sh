#!/usr/bin/env bash
# Makes sure a local MariaDB/MySQL (127.0.0.1:3306) and RabbitMQ (127.0.0.1:5672) are
# running, starting the ones installed on this machine if they are not. Used by
# .ci/run and scripts/run-local.sh; harmless when both are already up.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do
    if port_open "$2"; then return 0; fi
    sleep 1
  done
  echo "error: $1 did not come up on 127.0.0.1:$2 within $3s" >&2
  return 1
}

if ! port_open 3306; then
  echo "starting MariaDB..."
  if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  else
    echo "error: no MySQL/MariaDB on 127.0.0.1:3306 and no mariadbd to start; install one or use docker compose" >&2
    exit 1
  fi
  wait_for MariaDB 3306 60
fi

if ! port_open 5672; then
  echo "starting RabbitMQ..."
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached
  else
    echo "error: no RabbitMQ on 127.0.0.1:5672 and no rabbitmq-server to start; install it or use docker compose" >&2
    exit 1
  fi
  wait_for RabbitMQ 5672 120
fi
# The port opens before the broker accepts logins; wait until it is fully booted.
if command -v rabbitmqctl >/dev/null; then
  rabbitmqctl -q await_startup --timeout 120 >/dev/null 2>&1 || true
fi
echo "MariaDB and RabbitMQ are up."
