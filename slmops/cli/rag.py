"""`slmops ingest` and `slmops query`: docs into a versioned index, and what it retrieves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slmops.cli.common import (
    StageProgress,
    StoreOpt,
    app,
    console,
)
from slmops.store import open_store
from slmops.store.manifest import Trigger


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="Docs folder or s3://bucket/prefix.")],
    index: Annotated[str, typer.Option(help="Index name.")] = "docs",
    questions: Annotated[
        Path | None, typer.Option(help="Retrieval eval questions (JSONL).")
    ] = None,
    k: Annotated[int, typer.Option(help="Retrieval eval cut-off.")] = 5,
    chunk_size: Annotated[int, typer.Option(help="Chunk size in embedder tokens.")] = 200,
    chunk_overlap: Annotated[int, typer.Option(help="Tokens shared by neighbours.")] = 20,
    embed_model: Annotated[
        str | None, typer.Option(help="sentence-transformers model folder.")
    ] = None,
    embed_backend: Annotated[
        str,
        typer.Option(
            help="What runs the embedder: torch, onnx or onnx-int8 (pip install 'slmops[onnx]')."
        ),
    ] = "torch",
    store: StoreOpt = None,
) -> None:
    """Ingest documentation into a new index version (the ingest-docs flow, without Prefect)."""
    import tempfile

    from slmops.pipelines.ingest import run_ingest
    from slmops.rag.ingest_config import IngestConfig
    from slmops.rag.onnx_backend import check_backend

    config = IngestConfig(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        embed_model=embed_model,
        embed_backend=check_backend(embed_backend),
    )
    obj = open_store(store)
    with (
        tempfile.TemporaryDirectory(prefix="slmops-ingest-") as work,
        StageProgress(lambda stage: f"{stage} {index}") as progress,  # "read docs of NAME"
    ):
        report = run_ingest(
            source,
            obj,
            index,
            config,
            workdir=Path(work),
            questions=questions,
            k=k,
            trigger=Trigger.from_cli(),
            on_progress=lambda done, total: progress("embedding", done, total),
            on_stage=lambda stage, done, total: progress(f"{stage} docs of", done, total),
        )
    for skipped in report.plan.skipped + report.plan.kept:
        console.print(
            f"[yellow]skipped[/yellow] {escape(skipped.path)}: {escape(skipped.reason)}",
            highlight=False,
        )
    console.print(report.summary())
    if report.retrieval:
        console.print(retrieval_table(report.retrieval))


def retrieval_table(metrics: dict[str, float]) -> Table:
    """Hit rate and MRR per question set, the three retrieval modes side by side."""
    from slmops.config import get_settings
    from slmops.rag.evals import mode_table

    served = get_settings().retrieval_mode
    table = Table(title=f"retrieval (queries use {served})", title_justify="left")
    header, rows = mode_table(metrics)
    for n, column in enumerate(header):
        table.add_column(column, justify="right" if n else "left")
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def query(
    index: Annotated[str, typer.Argument(help="Index name.")],
    question: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many chunks.")] = 5,
    version: Annotated[str | None, typer.Option(help="A version (default: latest).")] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="dense, bm25 or hybrid (default: SLMOPS_RETRIEVAL_MODE, hybrid)."),
    ] = None,
    min_similarity: Annotated[
        float | None,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Return nothing when no chunk's cosine similarity to the question reaches "
            "this (as a RAG client serving with the cut sees it; the example's suites: 0.28).",
        ),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Retrieve the chunks of an index closest to a question, with source and score, and the
    nearest chunk's similarity (what a `--min-similarity` cut is compared with)."""
    from slmops.config import get_settings
    from slmops.rag.hybrid import MODES
    from slmops.rag.retrieval import load_index

    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"{mode!r}: use one of {', '.join(MODES)}", param_hint="--mode")
    if not question.strip():
        raise typer.BadParameter("the question is empty", param_hint="QUESTION")
    loaded = load_index(index, store=store, version=version)
    used = mode or get_settings().retrieval_mode
    nearest = loaded.nearest_similarity(question)
    console.print(
        f"[dim]index {index} version {loaded.version}, {used} retrieval; the nearest chunk's "
        f"similarity {nearest:.3f}[/dim]"
    )
    hits = loaded.retrieve(question, k, mode=used, min_similarity=min_similarity)
    if not hits and min_similarity is not None:
        console.print(
            f"nothing: no chunk is {min_similarity} similar to the question (the nearest: "
            f"{nearest:.3f}); a client serving with this cut asks it without context",
            highlight=False,
        )
    for rank, hit in enumerate(hits, 1):
        console.print(
            f"[bold]{rank}. {escape(hit.source)}[/bold]  score {hit.score:.3f}  "
            f"({escape(hit.title)})",
            highlight=False,
        )
        snippet = " ".join(hit.text.split())
        console.print(
            f"   {snippet[:300]}{'...' if len(snippet) > 300 else ''}",
            markup=False,
            highlight=False,
        )
