#!/usr/bin/env bash
# `make demo`: start llmosd on the default model, ask it a question through the shell, stop it.
set -euo pipefail
STATE="${1:-$PWD/.llmos-state}"
BIN="$(dirname "$0")/../.venv/bin"
export LLMOS_STATE_DIR="$STATE"
export LLMOS_SOCKET="$STATE/llmosd.sock"
mkdir -p "$STATE"
"$BIN/llmosd" --state-dir "$STATE" > "$STATE/ready.txt" 2> "$STATE/llmosd.log" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "serving on" "$STATE/ready.txt" 2>/dev/null && break
  kill -0 $DAEMON 2>/dev/null || { echo "llmosd failed to start:"; tail -20 "$STATE/llmosd.log"; exit 1; }
  sleep 0.5
done
cat "$STATE/ready.txt"
echo '$ llmos run smollm2-135m "What is the capital of France?" --chat --max-tokens 60'
"$BIN/llmos" run smollm2-135m "What is the capital of France?" --chat --max-tokens 60
echo
echo '$ llmos ps'
"$BIN/llmos" ps
echo '$ llmos free'
"$BIN/llmos" free
