"""Flows under the Prefect test harness: flows/ -> tasks/ -> slmops, on both store backends."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from flows.verify_store import VerifyStoreParams, verify_store
from slmops.errors import ConfigError, IntegrityError
from slmops.store.base import ObjectStore
from slmops.store.manifest import Manifest
from slmops.store.versions import VersionedArtifact
from tests.helpers import EXAMPLE, corrupt, latest_artifact, read_task_runs

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_verify_store_checks_every_version_and_reports(
    store: ObjectStore, store_uri_env: str
) -> None:
    bot = VersionedArtifact(store, "adapters", "bot")
    docs = VersionedArtifact(store, "indexes", "docs")
    versions = [
        bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"1"}).version,
        bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"2"}).version,
        docs.publish(Manifest(kind="index", name="docs"), {"i": b"3"}).version,
    ]

    checks = verify_store()  # store from SLMOPS_STORE, as a deployment's worker would see it
    assert sorted(c.version for c in checks) == sorted(versions)
    assert all(not c.problems and c.files == 1 for c in checks)
    report = asyncio.run(latest_artifact("store-verification"))
    assert "3 versions checked" in report and versions[0] in report


def test_verify_store_fails_the_run_on_a_damaged_version(
    store: ObjectStore, store_uri_env: str
) -> None:
    bot = VersionedArtifact(store, "adapters", "bot")
    good = bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"good"}).version
    bad = bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"fine"}).version
    corrupt(store, f"adapters/bot/versions/{bad}/w", b"rot!")

    with pytest.raises(IntegrityError, match=f"1 damaged versions.*adapters/bot@{bad}"):
        verify_store(VerifyStoreParams(store=store.uri))
    checks = verify_store(VerifyStoreParams(store=store.uri, fail_on_problems=False))
    by_version = {c.version: c for c in checks}
    assert by_version[good].problems == []
    assert "sha256" in by_version[bad].problems[0]


def test_ingest_docs_flow_publishes_a_version_and_reports_it(
    store: ObjectStore, store_uri_env: str, tmp_path: Path
) -> None:
    from flows.ingest_docs import IngestDocsParams, ingest_docs
    from slmops.rag.ingest_config import IngestConfig

    docs = tmp_path / "docs"
    for rel in ("crew/deckhands.md", "api/error-codes.md", "html/keyboard-shortcuts.html"):
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE / "docs" / rel, docs / rel)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"question": "Can a Deckhand reply?", "expected": ["crew/deckhands.md"]}\n'
    )
    params = IngestDocsParams(
        source=str(docs),
        index="support",
        questions=str(questions),
        config=IngestConfig(chunk_size=128),
    )

    report = ingest_docs(params)
    assert report.version and sorted(report.plan.added) == [
        "api/error-codes.md",
        "crew/deckhands.md",
        "html/keyboard-shortcuts.html",
    ]
    assert [s.path for s in report.plan.skipped] == ["broken.pdf"]
    manifest = VersionedArtifact(store, "indexes", "support").resolve("latest")
    assert manifest.version == report.version
    assert manifest.metrics["retrieval.curated.hit_rate@5"] == 1.0
    assert manifest.trigger.type == "api" and manifest.trigger.flow_run_id
    # The flow runs the same pipeline as the CLI: every stage is timed in the manifest.
    assert {"scan", "parse_and_split", "embed", "assemble", "evaluate"} <= set(manifest.timings)
    summary = asyncio.run(latest_artifact("ingest-support"))
    assert "3 added" in summary and "curated.mrr" in summary
    documents = asyncio.run(latest_artifact("ingest-support-documents"))
    assert "broken.pdf" in documents and "PDF does not parse" in documents

    again = ingest_docs(params)
    assert again.version is None and again.chunks_embedded == 0
    assert VersionedArtifact(store, "indexes", "support").resolve("latest").version == (
        report.version
    )


def test_ingest_docs_flow_fails_fast_on_bad_input_without_retrying(
    store: ObjectStore, store_uri_env: str, tmp_path: Path
) -> None:
    from flows.ingest_docs import IngestDocsParams, ingest_docs

    state = ingest_docs(
        IngestDocsParams(source=str(tmp_path / "nope"), index="support"), return_state=True
    )
    assert state.is_failed() and "does not exist or is not a folder" in str(state.message)
    [plan_task] = asyncio.run(read_task_runs(state.state_details.flow_run_id))
    assert plan_task.name.startswith("plan-and-split") and plan_task.run_count == 1
    bad = tmp_path / "q.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(ConfigError, match=r"q\.jsonl:1"):
        ingest_docs(IngestDocsParams(source=str(tmp_path), index="support", questions=str(bad)))
