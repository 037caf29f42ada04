#!/usr/bin/env bash
# The README's first command: set up and run the detector on a generated stream (no Kafka needed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS=test bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/cdr-detector" demo "$@"
