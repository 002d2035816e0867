"""slmops: keep a self-hosted, fine-tuned, RAG-backed language model current in production.

The core package: plain Python, no Prefect import. flows/ and tasks/ orchestrate it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmops.rag.retrieval import Retrieved

__version__ = "0.1.0"

# bitsandbytes warns on import that an optional fast CPU kernel (a Hub kernel repo, which
# `kernels` then says it cannot verify offline) is missing; it falls back to its own kernels,
# and the two warnings only clutter every command's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)


def retrieve(index: str, query: str, k: int = 5, **kwargs: Any) -> list[Retrieved]:
    """The `k` chunks of an index's `latest` version closest to `query` (source, score, text).

    `store=` (URI or ObjectStore) and `version=` pick another store or version;
    `min_similarity=` returns nothing for a question no chunk is near (serve it without
    context: the gate's suites set the value they were measured with).
    """
    from slmops.rag.retrieval import retrieve as _retrieve

    return _retrieve(index, query, k, **kwargs)
