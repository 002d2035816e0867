"""Docs and retrieval: loading docs (`docs`), incremental ingestion into versioned indices
(`ingest`, `index_files`), the embedder, retrieval and its evals."""
