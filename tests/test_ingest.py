"""Docs ingestion: incremental by content, every format, bad input reported, faults survived.

Counts of embedded chunks come from the embedder itself (texts sent through the model), so a
test cannot pass by reporting one number and doing another.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slmops.errors import ConfigError
from slmops.pipelines.ingest import run_ingest
from slmops.rag.docs import FORMATS, DocLimits, DocSource
from slmops.rag.embedder import get_embedder
from slmops.rag.index_files import EMBEDDINGS, NODES
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import IngestReport
from slmops.store.base import ObjectStore
from slmops.store.local import LocalStore
from slmops.store.versions import INDEXES, VersionedArtifact

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"
# A small slice of the example docs keeps each run to a second of embedding.
SLICE = [
    "getting-started/overview.md",
    "getting-started/glossary.md",
    "inlets/email-inlet.md",
    "crew/deckhands.md",
    "api/error-codes.md",
    "html/keyboard-shortcuts.html",
    "pdf/tidewell-admin-handbook.pdf",
]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    for rel in SLICE:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE / "docs" / rel, folder / rel)
    return folder


def ingest(docs: Path, store: ObjectStore, tmp_path: Path, **kw: Any) -> IngestReport:
    run = len(list(tmp_path.glob("work-*")))
    return run_ingest(
        str(docs), store, "support", workdir=tmp_path / f"work-{run}", evaluate=False, **kw
    )


def version_nodes(store: ObjectStore, version: str) -> tuple[list[dict], np.ndarray]:
    art = VersionedArtifact(store, INDEXES, "support")
    nodes = [json.loads(x) for x in art.read_file(version, NODES).decode().splitlines()]
    return nodes, np.load(io.BytesIO(art.read_file(version, EMBEDDINGS)))


def encoded() -> int:
    return get_embedder().encoded


def test_first_ingest_indexes_every_format_and_moves_latest(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    before = encoded()
    report = ingest(docs, store, tmp_path)
    assert sorted(report.plan.added) == sorted(SLICE) and not report.plan.skipped
    assert report.chunks_embedded == report.chunks_total == encoded() - before > 0
    art = VersionedArtifact(store, INDEXES, "support")
    manifest = art.resolve("latest")
    assert manifest.version == report.version
    assert manifest.metrics["documents"] == len(SLICE)
    assert {i.kind for i in manifest.inputs} == {"docs", "embedding-model"}
    nodes, vectors = version_nodes(store, manifest.version)
    assert len(nodes) == len(vectors) == report.chunks_total
    by_doc = {n["doc"]: n for n in nodes}
    html = " ".join(n["text"] for n in nodes if n["doc"] == "html/keyboard-shortcuts.html")
    assert "Move to berth" in html and "Privacy" not in html and "Getting started" not in html
    assert "quarterly admin review" in " ".join(
        n["text"].lower() for n in nodes if n["doc"].endswith(".pdf")
    )
    assert by_doc["crew/deckhands.md"]["title"] == "Deckhands"


def test_unchanged_docs_are_not_reembedded(docs: Path, store: ObjectStore, tmp_path: Path) -> None:
    first = ingest(docs, store, tmp_path)
    before = encoded()
    again = ingest(docs, store, tmp_path)
    assert encoded() == before, "an unchanged corpus reached the embedder"
    assert again.version is None and again.plan.unchanged == sorted(SLICE)
    assert VersionedArtifact(store, INDEXES, "support").resolve("latest").version == first.version


def test_a_changed_doc_reembeds_exactly_its_chunks(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    first = ingest(docs, store, tmp_path)
    old_nodes, old_vectors = version_nodes(store, first.version or "")
    page = docs / "crew/deckhands.md"
    page.write_text(
        page.read_text() + "\n## Deckhand limits\n\nA workspace may have 200 Deckhands.\n"
    )
    before = encoded()
    second = ingest(docs, store, tmp_path)
    assert second.plan.changed == ["crew/deckhands.md"] and not second.plan.added
    new_nodes, new_vectors = version_nodes(store, second.version or "")
    changed = [n for n in new_nodes if n["doc"] == "crew/deckhands.md"]
    assert second.chunks_embedded == len(changed) == encoded() - before
    assert second.chunks_reused == len(new_nodes) - len(changed)
    # Every other chunk and its vector is carried over untouched.
    old = {n["id"]: old_vectors[i] for i, n in enumerate(old_nodes)}
    for i, node in enumerate(new_nodes):
        if node["doc"] != "crew/deckhands.md":
            assert np.array_equal(old[node["id"]], new_vectors[i])
    assert VersionedArtifact(store, INDEXES, "support").resolve("latest").parent == first.version


def test_deleted_docs_leave_the_new_version_and_the_old_one_stays_readable(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    first = ingest(docs, store, tmp_path)
    (docs / "api/error-codes.md").unlink()
    before = encoded()
    second = ingest(docs, store, tmp_path)
    assert second.plan.deleted == ["api/error-codes.md"] and encoded() == before
    assert "api/error-codes.md" not in {
        n["doc"] for n in version_nodes(store, second.version or "")[0]
    }
    assert "api/error-codes.md" in {n["doc"] for n in version_nodes(store, first.version or "")[0]}


def test_document_ids_are_stable_across_checkouts_and_days(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    ingest(docs, store, tmp_path)
    elsewhere = tmp_path / "another-checkout" / "docs"
    shutil.copytree(docs, elsewhere)  # other absolute path, newer file dates
    before = encoded()
    again = ingest(elsewhere, store, tmp_path)
    assert again.version is None and encoded() == before


def test_bad_files_are_reported_by_path_and_the_rest_is_indexed(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    (docs / "bad").mkdir()
    (docs / "bad/empty.md").write_text("")
    (docs / "bad/junk.md").write_bytes(bytes(range(256)) * 40)
    (docs / "bad/latin1.txt").write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    (docs / "bad/broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (docs / "bad/logo.png").write_bytes(b"\x89PNG\r\n")
    with open(docs / "bad/huge.md", "wb") as fh:  # 200 MB, sparse: never read
        fh.truncate(200 * 2**20)
    (docs / ".git").mkdir()
    (docs / ".git/config").write_text("[core]")
    report = ingest(docs, store, tmp_path)
    reasons = {s.path: s.reason for s in report.plan.skipped}
    assert reasons.keys() == {
        "bad/empty.md",
        "bad/junk.md",
        "bad/latin1.txt",
        "bad/broken.pdf",
        "bad/logo.png",
        "bad/huge.md",
    }
    assert reasons["bad/empty.md"] == "empty file"
    assert "binary content" in reasons["bad/junk.md"]
    assert "invalid UTF-8 at byte 3 (line 1)" in reasons["bad/latin1.txt"]
    assert "PDF does not parse" in reasons["bad/broken.pdf"]
    assert "unsupported format '.png'" in reasons["bad/logo.png"]
    assert "too large: 200.0 MiB > 20 MiB" in reasons["bad/huge.md"]
    assert sorted(report.plan.added) == sorted(SLICE) and report.version
    docs_json = json.loads(
        VersionedArtifact(store, INDEXES, "support").read_file(report.version, "docs.json")
    )
    assert {s["path"] for s in docs_json["skipped"]} == reasons.keys()


def test_limits_skip_long_pdfs(docs: Path, store: ObjectStore, tmp_path: Path) -> None:
    limits = DocLimits(max_pdf_pages=2)
    report = ingest(docs, store, tmp_path, config=IngestConfig(limits=limits))
    [skipped] = report.plan.skipped
    assert skipped.path.endswith(".pdf") and "too many pages: 3 > 2" in skipped.reason


def test_a_bad_edit_or_vanished_file_keeps_the_last_good_copy(
    docs: Path, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ingest(docs, store, tmp_path)
    (docs / "inlets/email-inlet.md").write_bytes(b"\xff\xfe garbage \x00\x00")
    page = docs / "crew/deckhands.md"
    page.write_text(page.read_text() + "\nOne more line.\n")
    vanishing = docs / "getting-started/glossary.md"
    real_scan = DocSource.scan

    def scan_then_delete(self: DocSource, limits: object) -> object:
        listed = real_scan(self, limits)  # type: ignore[arg-type]
        vanishing.unlink()  # deleted after listing, before reading
        return listed

    monkeypatch.setattr(DocSource, "scan", scan_then_delete)
    second = ingest(docs, store, tmp_path)
    kept = {k.path: k.reason for k in second.plan.kept}
    assert "binary content" in kept["inlets/email-inlet.md"]
    assert "disappeared during the run" in kept["getting-started/glossary.md"]
    assert second.plan.deleted == [] and second.plan.changed == ["crew/deckhands.md"]
    docs_now = {n["doc"] for n in version_nodes(store, second.version or "")[0]}
    assert {"inlets/email-inlet.md", "getting-started/glossary.md"} <= docs_now
    old_text = [
        n["text"]
        for n in version_nodes(store, first.version or "")[0]
        if n["doc"] == "inlets/email-inlet.md"
    ]
    new_text = [
        n["text"]
        for n in version_nodes(store, second.version or "")[0]
        if n["doc"] == "inlets/email-inlet.md"
    ]
    assert old_text == new_text


def test_a_missing_or_emptied_source_is_refused(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"does not exist or is not a folder"):
        ingest(tmp_path / "no-such-docs", store, tmp_path)
    first = ingest(docs, store, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"refusing to publish an empty index"):
        ingest(empty, store, tmp_path)
    assert VersionedArtifact(store, INDEXES, "support").resolve("latest").version == first.version


def test_a_crash_mid_embedding_resumes_without_reembedding_what_finished(
    docs: Path, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ingest(docs, store, tmp_path)
    for rel in ("crew/deckhands.md", "inlets/email-inlet.md", "api/error-codes.md"):
        page = docs / rel
        page.write_text(page.read_text() + "\n## Changed\n\nA new paragraph for this page.\n")
    config = IngestConfig(checkpoint_every=2)
    embedder = get_embedder()
    real_encode = embedder.encode
    calls = {"n": 0}

    def dies_on_third_batch(texts: list[str], **kw: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("worker killed")  # the process dies mid-run
        return real_encode(texts, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(embedder, "encode", dies_on_third_batch)
    with pytest.raises(MemoryError):
        ingest(docs, store, tmp_path, config=config)
    art = VersionedArtifact(store, INDEXES, "support")
    assert art.resolve("latest").version == first.version and len(art.versions()) == 1
    monkeypatch.setattr(embedder, "encode", real_encode)

    before = encoded()
    resumed = ingest(docs, store, tmp_path, config=config)
    changed_chunks = resumed.chunks_embedded + resumed.chunks_resumed
    assert resumed.chunks_resumed == 4  # two finished checkpoints of two chunks
    assert resumed.chunks_embedded == changed_chunks - 4 == encoded() - before
    assert art.resolve("latest").version == resumed.version
    assert not list(store.list_objects("indexes/support/work/")), "checkpoints left behind"


def test_chunks_are_measured_in_the_embedders_tokens(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    report = ingest(docs, store, tmp_path, config=IngestConfig(chunk_size=64, chunk_overlap=8))
    nodes, _ = version_nodes(store, report.version or "")
    lengths = [len(get_embedder().count_tokens(n["text"])) for n in nodes]
    assert max(lengths) <= 64 and len(nodes) > len(SLICE) * 2
    with pytest.raises(ConfigError, match="larger than the embedding model's window of 254"):
        ingest(docs, store, tmp_path, config=IngestConfig(chunk_size=400))


def test_chunk_folder_gives_the_chunks_an_ingest_of_the_folder_stores(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    """Training conversations are built from chunk_folder: they hold the passages retrieval
    will put into a prompt only if it cuts the docs as ingestion does."""
    from slmops.rag.chunking import chunk_folder

    config = IngestConfig(chunk_size=64, chunk_overlap=8)
    report = ingest(docs, store, tmp_path, config=config)
    nodes, _ = version_nodes(store, report.version or "")
    chunks = chunk_folder(docs, config)
    markdown = sorted(rel for rel in SLICE if rel.endswith(".md"))
    assert sorted(chunks) == markdown
    for rel in markdown:
        stored = [n["text"] for n in sorted(nodes, key=lambda n: n["i"]) if n["doc"] == rel]
        assert chunks[rel] == stored and len(stored) > 1, rel
    # every format ingestion reads (HTML as its main content, PDF as its text), when asked
    every = chunk_folder(docs, config, suffixes=FORMATS)
    assert sorted(every) == sorted(SLICE) and set(every) > set(markdown), sorted(every)
    for rel in SLICE:
        stored = [n["text"] for n in sorted(nodes, key=lambda n: n["i"]) if n["doc"] == rel]
        assert every[rel] == stored, rel


def test_new_chunking_settings_rebuild_every_document(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    ingest(docs, store, tmp_path)
    before = encoded()
    rebuilt = ingest(docs, store, tmp_path, config=IngestConfig(chunk_size=120))
    assert rebuilt.plan.rebuild and "re-embedded" in rebuilt.plan.rebuild
    assert sorted(rebuilt.plan.changed) == sorted(SLICE)
    assert rebuilt.chunks_embedded == rebuilt.chunks_total == encoded() - before


def test_a_source_can_be_an_s3_prefix(docs: Path, tmp_path: Path, s3_endpoint: str) -> None:
    from slmops.store.local import LocalStore
    from slmops.store.s3 import S3Store
    from tests.helpers import make_bucket

    bucket = make_bucket(s3_endpoint)
    S3Store(bucket, endpoint_url=s3_endpoint).put_dir("product/docs", docs)
    store = LocalStore(tmp_path / "store")
    report = run_ingest(
        f"s3://{bucket}/product/docs",
        store,
        "support",
        workdir=tmp_path / "w",
        evaluate=False,
        source_endpoint=s3_endpoint,
    )
    assert sorted(report.plan.added) == sorted(SLICE) and report.version


def test_the_cli_shows_progress_when_its_output_is_a_log(docs: Path, store_uri_env: str) -> None:
    """Not a terminal (CI, a pipe, a log file): a line per stage as it goes, not silence."""
    from typer.testing import CliRunner

    from slmops.cli import app
    from slmops.config import get_settings

    result = CliRunner().invoke(app, ["ingest", str(docs), "--index", "progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for stage in ("read docs of progress", "split docs of progress", "embedding progress"):
        shown = [line for line in lines if line.startswith(stage)]
        assert shown and shown[-1].endswith("(100%)"), result.output
    assert lines.index(next(x for x in lines if x.startswith("read docs"))) < lines.index(
        next(x for x in lines if x.startswith("embedding"))
    )
    get_settings.cache_clear()


def test_page_chrome_never_reaches_a_chunk_and_code_and_tables_do(tmp_path: Path) -> None:
    """Pages with navigation in four styles (semantic tags, DocBook's "Prev | Up | Next"
    tables, Sphinx's bars and sidebar, div soup) and the bundled HTML: every chunk is free of
    the chrome, and the content's code lines and table rows are in the chunks."""
    from benchmarks.html_extraction import bundled_pages, generated_pages

    docs = tmp_path / "docs"
    docs.mkdir()
    pages = generated_pages() + bundled_pages()
    for n, page in enumerate(pages):
        (docs / f"page-{n}.html").write_bytes(page.html)
    report = run_ingest(
        str(docs), LocalStore(tmp_path / "s"), "web", workdir=tmp_path / "w", evaluate=False
    )
    assert len(report.plan.added) == len(pages) and not report.plan.skipped
    nodes = [json.loads(x) for x in (tmp_path / "w" / "index" / NODES).read_text().splitlines()]
    for n, page in enumerate(pages):
        text = "\n".join(node["text"] for node in nodes if node["doc"] == f"page-{n}.html")
        leaked = [phrase for phrase in page.chrome if phrase in text]
        assert not leaked, f"{page.name}: chrome in its chunks: {leaked}"
        lines = {line.strip(" |") for line in text.splitlines()}
        assert all(code in lines for code in page.code_lines), page.name
    generated = "\n".join(n["text"] for n in nodes if n["doc"] == "page-1.html")  # DocBook
    assert "the old secret stays valid for 24 hours" in " ".join(generated.split())
    assert "X-Tidewell-Signature | HMAC-SHA256 of the raw body" in generated


def test_chunks_are_embedded_with_their_title_and_switching_it_rebuilds(
    docs: Path, store: ObjectStore, tmp_path: Path
) -> None:
    report = ingest(docs, store, tmp_path)
    nodes, vectors = version_nodes(store, report.version or "")
    row = next(i for i, n in enumerate(nodes) if n["i"] > 0)  # a chunk from mid-document
    expected = get_embedder().encode([f"{nodes[row]['title']}\n\n{nodes[row]['text']}"])[0]
    assert np.abs(vectors[row] - expected).max() < 1e-5
    plain = ingest(docs, store, tmp_path, config=IngestConfig(embed_title=False))
    assert plain.plan.rebuild and plain.chunks_embedded == plain.chunks_total
    nodes, vectors = version_nodes(store, plain.version or "")
    assert np.abs(vectors[row] - get_embedder().encode([nodes[row]["text"]])[0]).max() < 1e-5
