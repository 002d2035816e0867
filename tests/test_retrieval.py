"""Retrieval from a published index: the serving side, and retrieval evals stored per version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slmops
from slmops.cli import app
from slmops.errors import ConfigError
from slmops.pipelines.ingest import run_ingest
from slmops.rag.evals import load_questions
from slmops.rag.hybrid import Bm25Side, fuse
from slmops.rag.plan import IngestReport
from slmops.rag.retrieval import load_index
from slmops.store.local import LocalStore
from slmops.store.versions import INDEXES, VersionedArtifact

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, IngestReport]:
    """The whole bundled example, ingested once for this module."""
    root = tmp_path_factory.mktemp("retrieval")
    store = LocalStore(root / "store")
    report = run_ingest(
        str(EXAMPLE / "docs"),
        store,
        "support",
        workdir=root / "w",
        questions=EXAMPLE / "retrieval-questions.jsonl",
        k=5,
    )
    return store, report


def test_the_bundled_docs_are_a_real_corpus(indexed: tuple[LocalStore, IngestReport]) -> None:
    _, report = indexed
    formats = {Path(p).suffix for p in report.plan.added}
    assert len([p for p in report.plan.added if p.endswith(".md")]) >= 40
    assert formats == {".md", ".html", ".pdf"} and not report.plan.skipped


def test_retrieve_returns_chunks_with_source_and_score(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    store, _ = indexed
    hits = slmops.retrieve("support", "Can a Deckhand reply to a customer?", 3, store=store)
    assert len(hits) == 3
    assert hits[0].source == "crew/deckhands.md"
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert "Deckhand" in hits[0].text
    codes = slmops.retrieve("support", "what does error TW-161 mean", 5, store=store)
    assert "api/error-codes.md" in [h.source for h in codes]


def test_a_question_no_chunk_is_near_gets_no_context(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    """min_similarity: the nearest chunk's dense similarity decides whether any chunk comes
    back (a RAG client then asks the question alone), whatever the ranking mode."""
    store, _ = indexed
    loaded = load_index("support", store=store)
    on_topic, off_topic = "Can a Deckhand reply to a customer?", "How do I bake sourdough bread?"
    near, far = loaded.nearest_similarity(on_topic), loaded.nearest_similarity(off_topic)
    assert near > 0.4 > 0.2 > far, (near, far)
    cut = (near + far) / 2
    assert [h.source for h in slmops.retrieve("support", on_topic, 3, store=store)] == [
        h.source for h in slmops.retrieve("support", on_topic, 3, store=store, min_similarity=cut)
    ]
    assert slmops.retrieve("support", off_topic, 3, store=store, min_similarity=cut) == []
    assert len(slmops.retrieve("support", off_topic, 3, store=store)) == 3  # no cut: 3 anyway
    dense = loaded.retrieve(on_topic, 1, mode="dense")[0]
    assert dense.score == pytest.approx(near)
    assert loaded.retrieve(on_topic, 2, mode="bm25", min_similarity=near + 1e-6) == []


def test_retrieval_metrics_are_stored_with_the_version(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    store, _ = indexed
    art = VersionedArtifact(store, INDEXES, "support")
    manifest = art.resolve("latest")
    assert manifest.metrics["retrieval.curated.questions"] == 33
    # The curated questions are answerable from the docs: a regression here is a real one.
    assert manifest.metrics["retrieval.curated.hit_rate@5"] >= 0.9
    assert manifest.metrics["retrieval.curated.mrr"] >= 0.8
    assert manifest.metrics["retrieval.generated.questions"] >= 100
    stored = json.loads(art.read_file(manifest.version, "retrieval-eval.json"))
    modes = ["dense", "bm25", "hybrid"]
    assert [r["name"] for r in stored] == [
        f"{s}{m}" for s in ("curated", "generated") for m in ["", *(f".{m}" for m in modes)]
    ]
    # Each mode side by side; the unsuffixed figures are the mode queries use (hybrid).
    for key in ("hit_rate@5", "mrr"):
        for mode in modes:
            assert 0 < manifest.metrics[f"retrieval.curated.{mode}.{key}"] <= 1
        assert (
            manifest.metrics[f"retrieval.curated.{key}"]
            == (manifest.metrics[f"retrieval.curated.hybrid.{key}"])
        )
    # Fused, neither side is lost: hybrid ranks at least as well as the weaker side here.
    assert manifest.metrics["retrieval.curated.hybrid.mrr"] >= min(
        manifest.metrics[f"retrieval.curated.{m}.mrr"] for m in ("dense", "bm25")
    )


def test_each_version_stores_its_bm25_side_hashed_in_its_manifest(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    store, _ = indexed
    manifest = VersionedArtifact(store, INDEXES, "support").resolve("latest")
    bm25 = {f.path: f.sha256 for f in manifest.files if f.path.startswith("bm25/")}
    assert "bm25/params.index.json" in bm25 and "bm25/vocab.index.json" in bm25
    assert all(len(digest) == 64 for digest in bm25.values())


def test_bm25_finds_the_exact_term_and_hybrid_keeps_it(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    store, _ = indexed
    index = load_index("support", store=store)
    assert not index.bm25.built_on_load  # read from the version, not rebuilt
    lexical = index.retrieve("TW-161", 3, mode="bm25")
    assert lexical and all("161" in hit.text for hit in lexical[:1])
    assert lexical[0].source == "api/error-codes.md"
    fused = index.retrieve("TW-161", 5, mode="hybrid")
    assert "api/error-codes.md" in [h.source for h in fused]
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    dense = index.retrieve("Can a Deckhand reply to a customer?", 3, mode="dense")
    assert dense[0].source == "crew/deckhands.md"
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        index.retrieve("anything", 3, mode="sparse")  # type: ignore[arg-type]
    # No query term in the index: BM25 has nothing, hybrid falls back to the dense side.
    assert index.retrieve("zzqx", 3, mode="bm25") == []
    assert len(index.retrieve("zzqx", 3, mode="hybrid")) == 3


def test_a_version_without_a_bm25_side_builds_it_on_load(
    indexed: tuple[LocalStore, IngestReport], tmp_path: Path
) -> None:
    store, _ = indexed
    saved = load_index("support", store=store)
    rebuilt = Bm25Side(saved.nodes, tmp_path / "absent")
    assert rebuilt.built_on_load
    query = "rate limits per minute for the Harbor API"
    assert rebuilt.search(query, 10) == saved.bm25.search(query, 10)


def test_fusion_follows_query_fusion_retrievers_definitions() -> None:
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]
    sparse = [(3, 12.0), (4, 6.0), (1, 0.0)]
    # relative_score: min-max per side, weighted sum.
    fused = dict(fuse(dense, sparse, fusion="relative_score", dense_weight=0.5))
    assert fused == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 4: 0.25})
    assert [r for r, _ in fuse(dense, sparse, fusion="relative_score", dense_weight=0.8)][:2] == [
        1,
        2,
    ]
    # reciprocal_rerank: 1 / (60 + rank), weights unused.
    rrf = dict(fuse(dense, sparse, fusion="reciprocal_rerank", dense_weight=0.9))
    assert rrf[1] == pytest.approx(1 / 61 + 1 / 63) and rrf[4] == pytest.approx(1 / 62)
    # dist_based_score: scaled by mean +/- 3 std; equal scores on a side count fully.
    dist = dict(fuse([(7, 0.3)], [(7, 2.0)], fusion="dist_based_score", dense_weight=0.3))
    assert dist == pytest.approx({7: 1.0})


def test_query_command_prints_sources_and_scores(
    indexed: tuple[LocalStore, IngestReport],
) -> None:
    store, _ = indexed
    result = CliRunner().invoke(
        app,
        ["query", "support", "How do I forward my mailbox?", "-k", "2", "--store", store.uri],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "1. inlets/email-inlet.md" in result.output and "score" in result.output
    assert "the nearest chunk's similarity 0." in result.output
    off_topic = ["query", "support", "How do I bake sourdough bread?", "--store", store.uri]
    result = CliRunner().invoke(app, [*off_topic, "--min-similarity", "0.28"])
    assert result.exit_code == 0, result.output
    assert "nothing: no chunk is 0.28 similar" in result.output and "1. " not in result.output
    result = CliRunner().invoke(app, [*off_topic, "--min-similarity", "2"])
    assert result.exit_code == 2 and "min-similarity" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "ok?", "expected": ["a.md"]}\nnot json\n', r"q\.jsonl:2: not a question"),
        ('{"question": "", "expected": ["a.md"]}\n', r"q\.jsonl:1:"),
        ('{"question": "no sources", "expected": []}\n', r"q\.jsonl:1:"),
        ("\n\n", "has no questions"),
    ],
)
def test_bad_questions_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_questions(path)
