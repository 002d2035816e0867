"""The files of an index version, and the one llama-index setting every index user needs.

A version holds `nodes.jsonl` (one chunk per line: id, doc, i, title, text), `embeddings.npy`
(float32, row i = line i), `bm25/` (the same chunks' BM25 index, slmops.rag.hybrid), `docs.json`
(the document table the next ingest plans against) and `retrieval-eval.json`. Both ingestion
(which writes them) and retrieval (which reads them) import from here, and neither from the
other's module.
"""

from __future__ import annotations

import contextlib
import io

NODES, EMBEDDINGS, DOCS = "nodes.jsonl", "embeddings.npy", "docs.json"
EVAL_REPORT = "retrieval-eval.json"


def disable_llm() -> None:
    """llama-index must never reach for a hosted LLM (its default); set once per process."""
    from llama_index.core import Settings

    if getattr(Settings, "_llm", None) is None:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice on every set
            Settings.llm = None
