"""Embedding backends: ONNX Runtime (fp32 and int8) against sentence-transformers' PyTorch.

The backend is part of the embedding model's identity, so an index never mixes vectors of two
backends and its queries are embedded the way its chunks were.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.errors import ConfigError
from slmops.pipelines.ingest import run_ingest
from slmops.rag.embedder import (
    Embedder,
    default_model_path,
    get_embedder,
    model_id,
    token_counter,
)
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import IngestReport
from slmops.rag.retrieval import load_index
from slmops.store.local import LocalStore
from slmops.store.versions import INDEXES, VersionedArtifact

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    paragraphs = [
        p.strip()
        for path in sorted((EXAMPLE / "docs").rglob("*.md"))
        for p in path.read_text().split("\n\n")
        if len(p.strip()) > 40
    ]
    return [*paragraphs[:120], "short", "Rate limits: 600 requests per minute " * 40]


def test_onnx_gives_the_pytorch_vectors_and_int8_stays_close(texts: list[str]) -> None:
    reference = get_embedder().encode(texts)
    fp32 = get_embedder(backend="onnx").encode(texts)
    assert fp32.shape == reference.shape and fp32.dtype == np.float32
    assert np.abs(fp32 - reference).max() < 1e-5
    int8 = get_embedder(backend="onnx-int8").encode(texts)
    cosines = (int8 * reference).sum(axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.99
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    # The same text anywhere in a batch gets the same vector (order is restored).
    assert np.allclose(get_embedder(backend="onnx").encode(texts[::-1])[::-1], fp32, atol=1e-6)


def test_the_tokenizer_alone_counts_and_bounds_tokens_as_the_loaded_model(
    texts: list[str], tmp_path: Path
) -> None:
    """chunk_folder cuts chunks without loading the weights: the same counts and window."""
    count, window = token_counter()
    embedder = get_embedder()
    assert window == embedder.max_tokens == 254
    assert all(count(t) == embedder.count_tokens(t) for t in texts)
    # A folder that does not declare its window in sentence_bert_config.json: the model's.
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    (folder / "sentence_bert_config.json").unlink()
    count, window = token_counter(str(folder))
    assert window == get_embedder(str(folder)).max_tokens
    assert count(texts[0]) == embedder.count_tokens(texts[0])


def test_the_backend_is_part_of_the_model_identity() -> None:
    path = default_model_path().resolve()
    torch_id = model_id(path)
    assert "+" not in torch_id  # indexes built before backends existed keep their id
    assert model_id(path, "onnx") == f"{torch_id}+onnx"
    assert model_id(path, "onnx-int8") == f"{torch_id}+onnx-int8"
    with pytest.raises(ConfigError, match="unknown embedding backend 'tensorrt'"):
        model_id(path, "tensorrt")


def test_the_export_is_made_once_and_cached() -> None:
    onnx = get_embedder(backend="onnx")
    assert onnx._onnx is not None
    file = onnx._onnx.file
    stamp = file.stat().st_mtime_ns
    again = Embedder(default_model_path().resolve(), backend="onnx")
    assert again._onnx is not None and again._onnx.file == file
    assert file.stat().st_mtime_ns == stamp
    assert not [p for p in file.parent.parent.iterdir() if p.name.startswith(".")]


def test_an_index_never_mixes_backends_and_queries_match_its_chunks(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for rel in ("crew/deckhands.md", "api/error-codes.md", "inlets/email-inlet.md"):
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_bytes((EXAMPLE / "docs" / rel).read_bytes())
    store = LocalStore(tmp_path / "store")
    run = 0

    def ingest(backend: str) -> IngestReport:
        nonlocal run
        run += 1
        return run_ingest(
            str(docs),
            store,
            "support",
            IngestConfig(embed_backend=backend),
            workdir=tmp_path / f"w{run}",
            evaluate=False,
        )

    first = ingest("torch")
    switched = ingest("onnx-int8")
    assert switched.plan.rebuild and "embedding model changed" in switched.plan.rebuild
    assert switched.chunks_embedded == switched.chunks_total == first.chunks_total
    manifest = VersionedArtifact(store, INDEXES, "support").resolve("latest")
    assert manifest.config["embed_backend"] == "onnx-int8"
    model_input = next(i for i in manifest.inputs if i.kind == "embedding-model")
    assert model_input.version and model_input.version.endswith("+onnx-int8")
    hits = load_index("support", store=store).retrieve("Can a Deckhand reply?", 2, mode="dense")
    assert hits[0].source == "crew/deckhands.md"
    assert ingest("onnx-int8").version is None  # same backend: nothing to re-embed


def test_modules_the_onnx_path_cannot_run_are_refused_by_name(tmp_path: Path) -> None:
    import importlib

    from sentence_transformers import SentenceTransformer

    models = importlib.import_module("sentence_transformers.models")
    base = SentenceTransformer(str(default_model_path()), device="cpu")
    dense = models.Dense(in_features=384, out_features=64)
    folder = tmp_path / "with-dense"
    SentenceTransformer(modules=[base[0], base[1], dense], device="cpu").save(str(folder))
    with pytest.raises(ConfigError, match="module Dense is not supported by the onnx backends"):
        Embedder(folder, backend="onnx")


def test_without_onnxruntime_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'slmops\[onnx\]'"):
        Embedder(default_model_path().resolve(), backend="onnx-int8")
