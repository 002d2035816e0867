"""`slmops assess`: prompt engineering, RAG or fine-tuning, measured on the team's cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from slmops.cli.common import (
    GeneratorOpt,
    ServingOpt,
    StageProgress,
    StoreOpt,
    app,
    console,
    new_table,
    plain,
)
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import EVALS


@app.command()
def assess(
    task_file: Annotated[
        Path, typer.Argument(help="Assessment task YAML (cases, model, index, prices).")
    ] = Path("examples/support-bot/assess.yaml"),
    generator: GeneratorOpt = "auto",
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Prompt engineering, RAG or fine-tuning? Answer the task's edge cases with every arm,
    compare failure rates and costs, and recommend with the evidence for every branch.

    The report (markdown, chart, JSON, every answer) is stored under evals/assess-NAME/."""
    import tempfile

    from slmops.assess.task import BEHAVIOUR, KNOWLEDGE, load_task
    from slmops.config import get_settings
    from slmops.pipelines.assess import run_assessment, store_assessment
    from slmops.serving.answering import answering_backend

    task = load_task(task_file)
    obj = open_store(store)
    with (
        answering_backend(obj, generator, serving, say=plain) as backend,
        StageProgress(lambda arm: f"answering: {arm}") as on_progress,
    ):
        run = run_assessment(
            obj,
            task,
            Path(get_settings().cache_dir).expanduser(),
            on_progress=on_progress,
            backend=backend,
        )
    with tempfile.TemporaryDirectory(prefix="slmops-assess-") as work:
        version = store_assessment(obj, run, Path(work), Trigger.from_cli())
    result = run.assessment
    table = new_table("arm", "fails (all)", "behaviour", "knowledge", "prompt tokens", "$/month")
    costs = {c.arm: c for c in result.economy.costs}
    for arm in result.arms:
        if not arm.measured:
            table.add_row(arm.arm, "not measured", escape(arm.why_not or ""), "", "", "")
            continue
        f = arm.failure
        table.add_row(
            arm.arm,
            f"{f['all'].rate:.1%} [{f['all'].low:.0%}, {f['all'].high:.0%}]",
            f"{f[BEHAVIOUR].rate:.1%}",
            f"{f[KNOWLEDGE].rate:.1%}",
            f"{arm.prompt_tokens:,.0f}",
            f"{costs[arm.arm].total_usd_per_month:,.2f}",
        )
    console.print(table)
    for n, step in enumerate(result.steps, 1):
        answer = f"[green]yes -> {step.leads_to}[/green]" if step.taken else "no"
        console.print(f"{n}. {escape(step.question)} {answer}", highlight=False)
        for line in step.evidence:
            console.print(f"   - {escape(line)}", highlight=False)
    console.print(f"[bold]recommendation: {escape(result.recommendation)}[/bold]")
    console.print(escape(result.summary), highlight=False)
    console.print(
        f"report: {obj.uri}/{EVALS}/assess-{result.task}/versions/{version}/report.md",
        highlight=False,
    )
