"""The lexical side of an index and its fusion with the dense side.

Every index version stores a BM25 index of its chunks (`bm25/`, written by bm25s) beside the
vectors: the same version, the same manifest, files hashed like the others. A chunk's BM25 text
is its document title and its text, tokenized with English stop words removed and Snowball
stems, the tokenizer llama-index's BM25Retriever uses.

Fusion (query time) combines the dense and the BM25 ranking of the same candidates, with the
definitions of llama-index's QueryFusionRetriever:
- `relative_score`: each side's scores min-max scaled to [0, 1] over its candidates, weighted
  (dense_weight, 1 - dense_weight) and summed (a chunk missing from a side gets 0 there);
- `dist_based_score`: the same, scaled by mean +/- 3 standard deviations instead of min-max;
- `reciprocal_rerank`: sum of 1 / (60 + rank) over the sides (weights unused).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

BM25_DIR = "bm25"
Mode = Literal["dense", "bm25", "hybrid"]
Fusion = Literal["relative_score", "dist_based_score", "reciprocal_rerank"]
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")
FUSIONS: tuple[Fusion, ...] = ("relative_score", "dist_based_score", "reciprocal_rerank")
_RRF_K = 60
Ranked = list[tuple[int, float]]  # (row in nodes.jsonl, score), best first


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def bm25_text(node: dict[str, Any]) -> str:
    return f"{node['title']}\n{node['text']}"


def _tokenize(texts: list[str], stemmer: Any) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)


def _indexed(nodes: list[dict[str, Any]], stemmer: Any) -> Any:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_tokenize([bm25_text(n) for n in nodes], stemmer), show_progress=False)
    return retriever


def build_bm25(nodes: list[dict[str, Any]], folder: Path) -> None:
    """Write the BM25 index of `nodes` (row i = line i of nodes.jsonl) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if nodes:
        _indexed(nodes, _stemmer()).save(str(folder))


class Bm25Side:
    """The BM25 index of one version: loaded from its `bm25/` folder, or built in memory for
    versions published before indexes had one."""

    def __init__(self, nodes: list[dict[str, Any]], folder: Path):
        import bm25s

        self.size = len(nodes)
        self.stemmer = _stemmer()
        self.built_on_load = not (folder / "params.index.json").is_file()
        if self.size == 0:
            self.retriever = None
        elif self.built_on_load:
            self.retriever = _indexed(nodes, self.stemmer)
        else:
            self.retriever = bm25s.BM25.load(str(folder))

    def search(self, query: str, n: int) -> Ranked:
        """Up to `n` rows that share a term with the query, best first."""
        if self.retriever is None:
            return []
        import bm25s

        tokens = bm25s.tokenize(
            [query], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        if not tokens or not tokens[0]:
            return []
        rows, scores = self.retriever.retrieve(
            tokens, k=min(n, self.size), show_progress=False, n_threads=1
        )
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]


def _scaled(ranked: Ranked, fusion: Fusion) -> dict[int, float]:
    if not ranked:
        return {}
    scores = np.array([s for _, s in ranked], dtype=np.float64)
    if fusion == "relative_score":
        low, high = scores.min(), scores.max()
    else:  # dist_based_score
        mean, std = scores.mean(), scores.std()
        low, high = mean - 3 * std, mean + 3 * std
    span = high - low
    if span <= 0 or not math.isfinite(span):
        return {row: 1.0 for row, _ in ranked}
    return {row: float((s - low) / span) for row, s in ranked}


def fuse(dense: Ranked, sparse: Ranked, *, fusion: Fusion, dense_weight: float) -> Ranked:
    """One ranking from the dense and the BM25 ranking (best first; ties by dense order)."""
    combined: dict[int, float] = {}
    if fusion == "reciprocal_rerank":
        for ranked in (dense, sparse):
            for rank, (row, _) in enumerate(ranked):
                combined[row] = combined.get(row, 0.0) + 1.0 / (_RRF_K + rank + 1)
    else:
        for ranked, weight in ((dense, dense_weight), (sparse, 1.0 - dense_weight)):
            for row, score in _scaled(ranked, fusion).items():
                combined[row] = combined.get(row, 0.0) + weight * score
    first_seen: dict[int, int] = {}
    for position, (row, _) in enumerate(dense + sparse):
        first_seen.setdefault(row, position)
    order = sorted(combined, key=lambda row: (-combined[row], first_seen[row]))
    return [(row, combined[row]) for row in order]
