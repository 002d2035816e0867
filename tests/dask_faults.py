"""Preloaded into the test cluster's Dask workers (`dask worker --preload`): records every
block a worker embeds, and kills the worker process once, on demand, to show what a crashed
worker costs. SLMOPS_TEST_FANOUT_DIR names the folder both work in:
- `encoded.log`: a line per block embedded: `<pid> <texts>`;
- `crash`: while it exists, the first worker to start its second block takes it and exits
  at once (os._exit: no cleanup, as a killed process)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slmops.rag.embedder import Embedder

_original = Embedder.encode
_calls = 0


def _encode(self: Embedder, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    global _calls
    folder = Path(os.environ["SLMOPS_TEST_FANOUT_DIR"])
    _calls += 1
    if _calls >= 2:
        try:
            os.rename(folder / "crash", folder / f"crashed-{os.getpid()}")
        except FileNotFoundError:
            pass
        else:
            os._exit(1)
    vectors = _original(self, texts, batch_size=batch_size)
    with open(folder / "encoded.log", "a") as log:
        log.write(f"{os.getpid()} {len(texts)}\n")
    return vectors


Embedder.encode = _encode  # type: ignore[method-assign]
