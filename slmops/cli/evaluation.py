"""`slmops gate`: an adapter through the eval gate, with its verdict."""

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
from slmops.store.versions import LATEST


@app.command()
def gate(
    target: Annotated[
        str, typer.Argument(help="ADAPTER@VERSION (or an alias: support-bot@latest).")
    ],
    champion: Annotated[
        str,
        typer.Option(
            help="auto (the champion alias, else floors only), none, base (the base model "
            "alone), or a version or alias of the adapter."
        ),
    ] = "auto",
    suites: Annotated[
        Path, typer.Option(help="Eval suites folder (suites.yaml + case files).")
    ] = Path("examples/support-bot/evals"),
    policy: Annotated[Path | None, typer.Option(help="Gate policy YAML.")] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Generate every answer again instead of reusing what the same weights "
            "answered to the same prompts before (stored under answers/ in the store).",
        ),
    ] = False,
    generator: GeneratorOpt = "auto",
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run the eval gate: the candidate against the champion on the same cases.

    Exit status: 0 passed, 1 failed or refused (the reasons are printed), 2 bad input or an
    error. The verdict, report and chart are stored under evals/ADAPTER/ in the store.

        slmops gate support-bot@latest --generator vllm --serving .slmops/stack/serving.yaml
    """
    from slmops.config import get_settings
    from slmops.evaluation.report import answers_reused, generated_on
    from slmops.pipelines.gate import evaluate_adapter
    from slmops.serving.answering import answering_backend

    adapter, _, version = target.partition("@")
    obj = open_store(store)
    with (
        answering_backend(obj, generator, serving, say=plain) as backend,
        StageProgress(lambda stage: f"answering as {stage}") as on_progress,
    ):
        record = evaluate_adapter(
            obj,
            adapter,
            version or LATEST,
            champion=champion,
            suites=suites,
            policy=policy or suites / "policy.yaml",
            cache_dir=Path(get_settings().cache_dir).expanduser(),
            trigger=Trigger.from_cli(),
            on_progress=on_progress if console.is_terminal else None,
            backend=backend,
            reuse_answers=not fresh,
            say=plain,
        )
    verdict = record.verdict
    table = new_table("guarded metric", "n", "cand.", "champ.", "difference", "result")
    table.columns[0].no_wrap = True
    for m in verdict.metrics:
        if not m.checks:
            continue
        diff = "-"
        if m.diff is not None and m.diff_ci is not None:
            diff = f"{m.diff:+.3f} [{m.diff_ci[0]:+.2f},{m.diff_ci[1]:+.2f}]"
        failed = [c.rule for c in m.checks if not c.passed]
        table.add_row(
            m.metric,
            str(m.n),
            f"{m.candidate:.3f}",
            "-" if m.champion is None else f"{m.champion:.3f}",
            diff,
            "[red]FAIL[/red] " + ", ".join(failed) if failed else "[green]ok[/green]",
        )
    console.print(table)
    d = verdict.declines
    if d is not None:

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.0%}"

        line = (
            f"declined: in-scope {pct(d.candidate_in_scope)} of {d.in_scope_n}, off-topic "
            f"{pct(d.candidate_off_topic)} of {d.off_topic_n}"
        )
        if d.served_off_topic_n:
            line += (
                f", off-topic as served {pct(d.candidate_served_off_topic)} of "
                f"{d.served_off_topic_n}"
            )
        if verdict.champion is not None:
            line += f" (champion: {pct(d.champion_in_scope)}, {pct(d.champion_off_topic)}" + (
                f", {pct(d.champion_served_off_topic)})" if d.served_off_topic_n else ")"
            )
        console.print(line, highlight=False)
    console.print(f"generated on: {generated_on(verdict)}", highlight=False)
    for suite, cut in verdict.cut.items():
        champ = "" if cut.champion is None else f", champion {cut.champion}"
        console.print(
            f"cut at {cut.limit} tokens in {suite}: candidate {cut.candidate} of {cut.cases}"
            f"{champ}",
            highlight=False,
        )
    reuse = answers_reused(verdict)
    if reuse:
        console.print(f"answers: {reuse}", highlight=False)
    against = verdict.champion or "floors only"
    if verdict.passed:
        console.print(
            f"[green]gate passed[/green]: {adapter}@{verdict.version} against {against} "
            f"(now the adapter's challenger)"
        )
    else:
        console.print(
            f"[red]gate {verdict.status}[/red]: {adapter}@{verdict.version} against {against}"
        )
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
    console.print(f"report: {record.report_uri}", highlight=False)
    if not verdict.passed:
        raise typer.Exit(1)
