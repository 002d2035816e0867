"""slmops: keep a self-hosted, fine-tuned, RAG-backed language model current in production.

The core package: plain Python, no Prefect import. flows/ and tasks/ orchestrate it.
"""

__version__ = "0.1.0"


def retrieve(index: str, query: str, k: int = 5, **kwargs: object) -> list[object]:
    """The `k` chunks of an index's `latest` version closest to `query` (source, score, text).

    `store=` (URI or ObjectStore) and `version=` pick another store or version.
    """
    from slmops.retrieval import retrieve as _retrieve

    return list(_retrieve(index, query, k, **kwargs))  # type: ignore[arg-type]
