#!/usr/bin/env bash
# The README's second command: set up everything and run the whole test suite.
#   Python deps (.venv), Prometheus + promtool (Debian package), Apache Kafka 4.x (Maven Central),
#   a local KRaft broker for the integration tests, then pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/prometheus-local.sh install
started_kafka=0
if ! bash scripts/kafka-local.sh status >/dev/null 2>&1; then
  bash scripts/kafka-local.sh start
  started_kafka=1
fi
cleanup() { if [[ $started_kafka == 1 ]]; then bash scripts/kafka-local.sh stop || true; fi; }
trap cleanup EXIT
.venv/bin/python -m pytest -p no:cacheprovider "$@"
