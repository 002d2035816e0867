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


class LoadedIndex:
    """One index version in memory as a llama-index VectorStoreIndex."""

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

    def retrieve(self, query: str, k: int = 5) -> list[Retrieved]:
        if not query.strip():
            raise ValueError("empty query")
        if not self.nodes:
            return []
        hits = self.index.as_retriever(similarity_top_k=k).retrieve(query)
        return [
            Retrieved(
                source=h.node.metadata["source"],
                title=h.node.metadata["title"],
                score=float(h.score or 0.0),
                text=h.node.get_content(),
                chunk_id=h.node.node_id,
            )
            for h in hits
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
            embedder = get_embedder(embed_model)
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
    index: str, query: str, k: int = 5, *, store: Any = None, version: str | None = None
) -> list[Retrieved]:
    """The `k` chunks of index `index` (its `latest` version) closest to `query`."""
    return load_index(index, store=store, version=version).retrieve(query, k)
