#!/usr/bin/env bash
# The demo: start the local stack (Prefect server + worker, S3 server), deploy prefect.yaml,
# and run the pipelines built so far through the worker on the bundled example (the docs and
# support conversations of "Tidewell", a fictional help-desk product): docs ingestion into a
# RAG index, and a base-model release that triggers re-fine-tuning of the support adapter and
# its eval gate.
# Every artifact lands in the S3 store with its lineage.
# Run it with `make demo`; the stack keeps running afterwards so the UI can be browsed.
set -euo pipefail
cd "$(dirname "$0")/.."

slmops stack up
eval "$(slmops stack env)"

echo "== deploying prefect.yaml"
prefect --no-prompt deploy --all >/dev/null
prefect deployment ls

echo "== ingest-docs: examples/support-bot/docs -> index 'support-docs' (new version, alias latest)"
prefect deployment run 'ingest-docs/hourly' --watch --watch-timeout 600 | tail -n 2
slmops store show indexes/support-docs@latest

echo "== ingest-docs again: nothing changed, so no new version and nothing re-embedded"
prefect deployment run 'ingest-docs/hourly' --watch --watch-timeout 600 | tail -n 1

echo "== retrieval from the index (what the serving side calls)"
slmops query support-docs "Can a Deckhand reply to customers?" -k 2

echo "== a base-model release: build the tiny Llama (it stands in for a new revision on the Hub)"
[ -f .slmops/models/tiny-llama/config.json ] || python -m infra.tiny_model .slmops/models/tiny-llama
echo "== watch-base-model sees the revision and emits slmops.base-model.released"
prefect deployment run 'watch-base-model/every-15-minutes' --watch --watch-timeout 300 | tail -n 1
echo "== the event starts refine-tune on the worker: dataset version, LoRA training (~2.5 min),"
echo "   adapter version, then the eval gate (floors only: there is no champion yet)"
for i in $(seq 1 120); do
  slmops store show evals/support-bot >/dev/null 2>&1 && break
  [ $((i % 6)) -eq 0 ] && echo "   ... still training ($((i * 5)) s)"
  sleep 5
done
slmops store show adapters/support-bot@latest
slmops audit --resource slmops.adapter.support-bot | tail -n 4

echo "== the eval gate from the command line: the new adapter against the base model alone"
slmops gate support-bot@latest --champion base || true

echo "== verify-store: every stored version re-hashed against its manifest"
prefect deployment run 'verify-store/daily' --watch --watch-timeout 300 | tail -n 1

echo "== what the store holds"
slmops status
echo
echo "Prefect UI: ${PREFECT_API_URL%/api}   store: ${SLMOPS_STORE} (S3 at ${SLMOPS_S3_ENDPOINT_URL})"
echo "Use the stack from a shell: eval \"\$(.venv/bin/slmops stack env)\"; stop it: .venv/bin/slmops stack down"
