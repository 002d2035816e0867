"""Serving-side retrieval: load an index version from the store and query it with llama-index.

Versions are immutable, so each is downloaded once into a local cache (checked against its
manifest) and kept in memory per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from slmops.errors import StoreError
from slmops.rag.embedder import Embedder, as_llama_index, get_embedder
from slmops.rag.hybrid import BM25_DIR, Bm25Side, Fusion, Mode, Ranked, fuse
from slmops.rag.index_files import EMBEDDINGS, NODES, disable_llm
from slmops.store import ObjectStore, open_store
from slmops.store.versions import INDEXES, LATEST, VersionedArtifact

_LOADED: dict[tuple[str, str, str], LoadedIndex] = {}
_LOCK = threading.Lock()


class Retrieved(BaseModel):
    """One retrieved chunk: where it comes from and how close it is to the query."""

    source: str
    title: str
    score: float
    text: str
    chunk_id: str


# Candidates each side contributes to a fused ranking (at least; more when k is larger).
FUSION_DEPTH = 20


class LoadedIndex:
    """One index version in memory: a llama-index VectorStoreIndex for the dense side and the
    version's BM25 index for the lexical side."""

    def __init__(self, name: str, version: str, folder: Path, embedder: Embedder):
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import TextNode

        disable_llm()
        self.name, self.version, self.folder = name, version, folder
        with open(folder / NODES, encoding="utf-8") as fh:
            self.nodes = [json.loads(line) for line in fh if line.strip()]
        vectors = np.load(folder / EMBEDDINGS)
        if len(self.nodes) != len(vectors):
            raise StoreError(
                f"index {name} version {version} is inconsistent: "
                f"{len(self.nodes)} chunks but {len(vectors)} vectors"
            )
        text_nodes = [
            TextNode(
                id_=n["id"],
                text=n["text"],
                embedding=vectors[i].tolist(),
                metadata={"source": n["doc"], "title": n["title"]},
            )
            for i, n in enumerate(self.nodes)
        ]
        # Every node carries its vector: building the index calls no model.
        self.index = VectorStoreIndex(text_nodes, embed_model=as_llama_index(embedder))
        self.rows = {n["id"]: i for i, n in enumerate(self.nodes)}
        self.bm25 = Bm25Side(self.nodes, folder / BM25_DIR)

    def dense(self, query: str, n: int) -> Ranked:
        hits = self.index.as_retriever(similarity_top_k=n).retrieve(query)
        return [(self.rows[h.node.node_id], float(h.score or 0.0)) for h in hits]

    def nearest_similarity(self, query: str) -> float:
        """The dense similarity of the chunk nearest to `query` (the relevance of the best
        match, whatever the ranking mode)."""
        ranked = self.dense(query, 1)
        return ranked[0][1] if ranked else 0.0

    def retrieve(
        self,
        query: str,
        k: int = 5,
        *,
        mode: Mode | None = None,
        fusion: Fusion | None = None,
        dense_weight: float | None = None,
        min_similarity: float | None = None,
    ) -> list[Retrieved]:
        """The `k` best chunks for `query`; mode, fusion and weight default to the settings
        (SLMOPS_RETRIEVAL_MODE, _FUSION, _DENSE_WEIGHT).

        min_similarity: none at all when no chunk's dense (cosine) similarity to the query
        reaches it: a question nothing in the docs is near is not about them, and chunks put
        before it anyway read to the model as something to answer from (a RAG client then asks
        the question alone, and the model's own scope decides)."""
        from slmops.config import get_settings

        if not query.strip():
            raise ValueError("empty query")
        if not self.nodes:
            return []
        if min_similarity is not None and self.nearest_similarity(query) < min_similarity:
            return []
        settings = get_settings()
        mode = mode or settings.retrieval_mode
        if mode == "dense":
            ranked = self.dense(query, k)
        elif mode == "bm25":
            ranked = self.bm25.search(query, k)
        elif mode == "hybrid":
            depth = max(k, FUSION_DEPTH)
            ranked = fuse(
                self.dense(query, depth),
                self.bm25.search(query, depth),
                fusion=fusion or settings.retrieval_fusion,
                dense_weight=(
                    settings.retrieval_dense_weight if dense_weight is None else dense_weight
                ),
            )[:k]
        else:
            raise ValueError(f"unknown retrieval mode {mode!r}: use dense, bm25 or hybrid")
        return [
            Retrieved(
                source=self.nodes[row]["doc"],
                title=self.nodes[row]["title"],
                score=score,
                text=self.nodes[row]["text"],
                chunk_id=self.nodes[row]["id"],
            )
            for row, score in ranked
        ]


def _cache_folder(store: ObjectStore, name: str, version: str) -> Path:
    from slmops.config import get_settings

    store_key = hashlib.sha256(store.uri.encode()).hexdigest()[:12]
    return Path(get_settings().cache_dir).expanduser() / INDEXES / store_key / name / version


def download_version(store: ObjectStore, name: str, version: str) -> Path:
    """The version's files in the local cache, downloaded (and verified) once."""
    folder = _cache_folder(store, name, version)
    if (folder / NODES).exists() and (folder / EMBEDDINGS).exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    try:
        VersionedArtifact(store, INDEXES, name).download(version, tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # OSError: another process finished the same download first.
        with contextlib.suppress(OSError):
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_index(
    name: str,
    *,
    store: ObjectStore | str | None = None,
    version: str | None = None,
    alias: str = LATEST,
    embed_model: str | None = None,
) -> LoadedIndex:
    """An index version (default: the one `latest` points at), loaded once per process."""
    obj = store if isinstance(store, ObjectStore) else open_store(store)
    art = VersionedArtifact(obj, INDEXES, name)
    if version is None:
        version = art.resolve(alias).version
    key = (obj.uri, name, version)
    with _LOCK:
        if key not in _LOADED:
            manifest = art.manifest(version)
            # The model the index was built with, when that folder exists here too.
            built_with = manifest.config.get("embed_model")
            if not embed_model and built_with and Path(built_with).is_dir():
                embed_model = built_with
            # Queries are embedded as the chunks were: same model, same backend.
            backend = str(manifest.config.get("embed_backend") or "torch")
            embedder = get_embedder(embed_model, backend=backend)
            expected = next(
                (i.version for i in manifest.inputs if i.kind == "embedding-model"), None
            )
            if expected and expected != embedder.model_id:
                raise StoreError(
                    f"index {name} version {version} was embedded with {expected}, but the "
                    f"embedding model here is {embedder.model_id}: queries would not match. "
                    "Point SLMOPS_EMBED_MODEL at the same model, or re-ingest"
                )
            _LOADED[key] = LoadedIndex(
                name, version, download_version(obj, name, version), embedder
            )
        return _LOADED[key]


def retrieve(
    index: str,
    query: str,
    k: int = 5,
    *,
    store: Any = None,
    version: str | None = None,
    min_similarity: float | None = None,
) -> list[Retrieved]:
    """The `k` chunks of index `index` (its `latest` version) closest to `query`; none when
    no chunk's similarity reaches `min_similarity` (LoadedIndex.retrieve)."""
    return load_index(index, store=store, version=version).retrieve(
        query, k, min_similarity=min_similarity
    )
