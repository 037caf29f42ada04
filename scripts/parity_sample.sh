#!/usr/bin/env bash
# Full-sample parity: the daemon on the local broker decides exactly what the backtest decides.
#   scripts/parity_sample.sh [DATADIR]   (default ../shared/data/sample; needs scripts/kafka-local.sh start)
# Uses fresh topics and a fresh group (a random tag), so it can be run again at will.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
D="${1:-$ROOT/../shared/data/sample}"
TAG="parity-$(date +%s)"
export CDR_DETECTOR__KAFKA__GROUP_ID="$TAG"
for t in records subscribers outcomes suspensions dlq; do
  export "CDR_DETECTOR__KAFKA__TOPICS__${t^^}=$TAG.$t"
done
PORT="${METRICS_PORT:-9451}"
.venv/bin/cdr-detector backtest --cdrs "$D/cdrs.jsonl.gz" --subscribers "$D/subscribers.jsonl" \
    --out "var/$TAG-backtest.jsonl" --quiet
.venv/bin/cdr-detector replay --cdrs "$D/cdrs.jsonl.gz" --subscribers "$D/subscribers.jsonl"
.venv/bin/cdr-detector run --metrics-port "$PORT" > "var/$TAG-daemon.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
t0=$(date +%s)
until curl -sf "localhost:$PORT/healthz" | grep -q '"ready": true, "assigned": \[[0-9, ]*\], "lag": 0,'; do sleep 3; done
echo "daemon caught up after $(( $(date +%s) - t0 )) s"
.venv/bin/python scripts/parity_check.py --events "var/$TAG-backtest.jsonl"
