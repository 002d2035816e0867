"""Retrieval from a published index: the serving side, and retrieval evals stored per version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slmops
from slmops.cli import app
from slmops.errors import ConfigError
from slmops.rag.evals import load_questions
from slmops.rag.ingest import IngestReport, run_ingest
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
    assert [r["name"] for r in stored] == ["curated", "generated"]


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
