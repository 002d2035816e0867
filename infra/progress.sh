#!/usr/bin/env bash
# `infra/progress.sh LABEL COMMAND...`: runs COMMAND, saying what it is doing when it starts,
# every 30 s while it runs, and when it ends, so that a long install never looks like a hang.
set -uo pipefail
label=$1
shift
start=$(date +%s)
echo "$label ..."
(
  # One-second sleeps: killed, the ticker leaves no sleep holding the output open for long.
  while sleep 1; do
    elapsed=$(($(date +%s) - start))
    if [ $((elapsed % 30)) -eq 0 ]; then echo "$label: still working, $elapsed s"; fi
  done
) &
ticker=$!
trap 'kill $ticker 2>/dev/null' EXIT
"$@"
rc=$?
kill $ticker 2>/dev/null
if [ $rc -eq 0 ]; then
  echo "$label: done in $(($(date +%s) - start)) s"
else
  echo "$label: FAILED (exit $rc) after $(($(date +%s) - start)) s" >&2
fi
exit $rc
