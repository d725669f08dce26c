#!/usr/bin/env bash
# The Python tools the API-description tests run, in a virtualenv of their own
# under target/py (pinned, so a new release cannot change a green run):
# schemathesis fuzzes the running api against its OpenAPI description, and
# openapi-spec-validator checks the description itself. Quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
want="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
if [ -x "$venv/bin/schemathesis" ] && [ -x "$venv/bin/openapi-spec-validator" ] \
  && [ "$(cat "$venv/.pinned" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $want
echo "$want" > "$venv/.pinned"
