"""The `slmops` command line: inspect the store, move aliases, run the local stack."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slmops.errors import ConfigError, SlmopsError, StoreError
from slmops.progress import Tenths
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import COLLECTIONS, EVALS, VersionedArtifact, summarize

if TYPE_CHECKING:
    from infra.stack import LocalStack
    from slmops.serving.client import ServingConfig

app = typer.Typer(
    help="Keep a self-hosted, fine-tuned, RAG-backed language model current in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Look inside the artifact store.", no_args_is_help=True)
alias_app = typer.Typer(
    help="Move an artifact's aliases (latest, champion...).", no_args_is_help=True
)
stack_app = typer.Typer(
    help="The local stack: Prefect server + worker, S3 server, vLLM replicas.", no_args_is_help=True
)
app.add_typer(store_app, name="store")
app.add_typer(alias_app, name="alias")
serve_app = typer.Typer(
    help="The vLLM replicas: what they serve, and reconcile them with the store.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
app.add_typer(serve_app, name="serve")

console = Console()


def _table(*columns: str) -> Table:
    """A table whose cells fold instead of truncating: version ids must stay copyable."""
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


class StageProgress:
    """Progress of long work, per stage: a live bar on a terminal; elsewhere (a log, CI, a
    pipe) a line at each 10% (at most one per stage every 2 s), so nothing runs silently."""

    def __init__(self, label: Callable[[str], str] = lambda stage: stage):
        from rich.progress import Progress

        self.label = label
        self.live = console.is_terminal
        self.bar = Progress(console=console, transient=True) if self.live else None
        self.tasks: dict[str, Any] = {}
        self.tenths = Tenths(from_zero=True)
        self.last: dict[str, float] = {}

    def __enter__(self) -> StageProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, stage: str, done: int, of: int | None) -> None:
        if self.bar is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(self.label(stage), total=of)
            self.bar.update(self.tasks[stage], completed=done, total=of)
            return
        import time

        now = time.monotonic()
        quiet = now - self.last.get(stage, 0.0) < 2 and done != of  # fast steps: few lines
        if of and not quiet and self.tenths.crossed(done, of, stage):
            self.last[stage] = now
            line = f"{self.label(stage)}: {done:,}/{of:,} ({done / of:.0%})"
            console.print(line, highlight=False)


StoreOpt = Annotated[
    str | None,
    typer.Option("--store", "-s", help="Store URI (default: SLMOPS_STORE).", show_default=False),
]


def _artifact(target: str, store_uri: str | None) -> tuple[VersionedArtifact, str | None]:
    """Parse `collection/name[@version-or-alias]`."""
    ref, _, at = target.partition("@")
    collection, _, name = ref.strip("/").partition("/")
    if collection not in COLLECTIONS or not name or "/" in name:
        raise StoreError(
            f"{target!r} is not an artifact: write COLLECTION/NAME[@VERSION|@ALIAS] "
            f"with COLLECTION one of {', '.join(COLLECTIONS)}, e.g. "
            "adapters/support-bot@champion"
        )
    return VersionedArtifact(open_store(store_uri), collection, name), at or None


def _pick_version(art: VersionedArtifact, at: str | None) -> str:
    """A version id, an alias name, or (none given) `latest`, else the newest version."""
    if at and at in art.versions():
        return at
    if at:
        return art.resolve(at).version
    if art.get_alias("latest") is not None:
        return art.resolve("latest").version
    versions = art.versions()
    if not versions:
        raise StoreError(f"{art.prefix} has no complete version in {art.store.uri}")
    return versions[-1]


@app.command()
def status(store: StoreOpt = None) -> None:
    """Indexes, datasets and adapters in the store, with their versions and aliases."""
    obj = open_store(store)
    rows = summarize(obj)
    console.print(f"store: [bold]{obj.uri}[/bold]")
    if not rows:
        console.print("empty: nothing has been published yet")
        return
    table = _table("artifact", "versions", "newest", "aliases", "orphans")
    for row in rows:
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(row.aliases.items())) or "-"
        table.add_row(
            f"{row.collection}/{row.name}",
            str(row.versions),
            row.newest or "-",
            aliases,
            str(row.orphans) if row.orphans else "-",
        )
    console.print(table)


@store_app.command("ls")
def store_ls(
    uri: Annotated[
        str | None, typer.Argument(help="Store URI or folder in it (default: SLMOPS_STORE).")
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="List every object.")
    ] = False,
) -> None:
    """List folders and objects under a store URI, e.g. `slmops store ls s3://bucket/adapters`."""
    obj = open_store(uri)
    for folder in [] if recursive else obj.list_dirs(""):
        console.print(f"[blue]{folder}[/blue]")
    count = 0
    for info in obj.list_objects(""):
        if not recursive and "/" in info.key:
            continue
        count += 1
        stamp = f"{info.last_modified:%Y-%m-%d %H:%M:%S}" if info.last_modified else ""
        console.print(f"{info.size:>12,}  {stamp}  {info.key}", highlight=False)
    if recursive:
        console.print(f"[dim]{count} objects[/dim]")


@store_app.command("show")
def store_show(
    target: Annotated[
        str,
        typer.Argument(
            help="COLLECTION/NAME[@VERSION|@ALIAS], e.g. adapters/support-bot@champion."
        ),
    ],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
) -> None:
    """Show the manifest of a version: files, inputs, config, metrics, trigger."""
    art, at = _artifact(target, store)
    manifest = art.manifest(_pick_version(art, at))
    if as_json:
        print(manifest.model_dump_json(indent=2))
        return
    console.print(
        f"[bold]{art.prefix}[/bold] version [bold]{manifest.version}[/bold] "
        f"({manifest.kind}, created {manifest.created_at:%Y-%m-%d %H:%M:%S %Z})"
    )
    commit = (manifest.code.git_commit or "no git")[:12]
    console.print(
        f"code: slmops {manifest.code.version} ({commit}"
        f"{', dirty' if manifest.code.git_dirty else ''})   trigger: "
        f"{manifest.trigger.type}{' ' + manifest.trigger.id if manifest.trigger.id else ''}"
        f"{' by ' + manifest.trigger.by if manifest.trigger.by else ''}"
    )
    if manifest.parent:
        console.print(f"parent: {manifest.parent}")
    metrics = {
        k: (f"<{len(v)} points>" if isinstance(v, list) and len(v) > 10 else _round(v))
        for k, v in manifest.metrics.items()
    }  # a loss curve is for the PNG, not here (--json prints every value in full)
    for title, data in (
        ("inputs", [i.model_dump(exclude_none=True) for i in manifest.inputs]),
        ("config", manifest.config),
        ("metrics", metrics),
        ("timings (s)", {k: _round(v) for k, v in manifest.timings.items()}),
        ("resources", manifest.resources),
    ):
        if data:
            console.print(f"[bold]{title}[/bold]: {json.dumps(data, default=str)}", highlight=False)
    table = _table("file", "bytes", "sha256")
    for entry in manifest.files:
        table.add_row(entry.path, f"{entry.size:,}", entry.sha256[:16])
    console.print(table)


@store_app.command("verify")
def store_verify(
    target: Annotated[
        str | None,
        typer.Argument(help="COLLECTION/NAME[@VERSION] (default: every version of everything)."),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Re-hash every file of every version against its manifest; exit 1 on any problem."""
    if target:
        art, at = _artifact(target, store)
        pairs = [(art, v) for v in ([_pick_version(art, at)] if at else art.versions())]
    else:
        from slmops.store.versions import artifacts

        obj = open_store(store)
        pairs = [(a, v) for c in COLLECTIONS for a in artifacts(obj, c) for v in a.versions()]
    bad = 0
    for art, version in pairs:
        report = art.verify(version)
        mark = "[green]ok[/green]" if report.ok else "[red]CORRUPT[/red]"
        console.print(
            f"{mark}  {art.prefix}@{version}  {report.files} files, {report.bytes:,} bytes"
        )
        for problem in report.problems:
            console.print(f"    {problem}", highlight=False)
        bad += not report.ok
    console.print(f"{len(pairs)} versions checked, {bad} with problems")
    if bad:
        raise typer.Exit(1)


@alias_app.command("set")
def alias_set(
    target: Annotated[str, typer.Argument(help="COLLECTION/NAME, e.g. adapters/support-bot.")],
    alias: Annotated[str, typer.Argument(help="Alias to move, e.g. champion.")],
    version: Annotated[str, typer.Argument(help="Complete version to point it at.")],
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
    store: StoreOpt = None,
) -> None:
    """Point an alias at a version (recorded in the audit log)."""
    art, _ = _artifact(target, store)
    record = art.set_alias(alias, version, reason=reason, trigger=Trigger.from_cli())
    console.print(f"{art.prefix}: {alias} -> {record.version} (was {record.previous or 'unset'})")


@alias_app.command("rollback")
def alias_rollback(
    target: Annotated[str, typer.Argument(help="COLLECTION/NAME, e.g. adapters/support-bot.")],
    alias: Annotated[str, typer.Argument(help="Alias to move back, e.g. champion.")],
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
    store: StoreOpt = None,
) -> None:
    """Point an alias back at its previous version (recorded in the audit log)."""
    art, _ = _artifact(target, store)
    before = art.get_alias(alias)
    record = art.rollback(alias, reason=reason, trigger=Trigger.from_cli())
    console.print(
        f"{art.prefix}: {alias} -> {record.version} "
        f"(rolled back from {before.version if before else '?'})"
    )


@app.command()
def audit(
    resource: Annotated[
        str | None,
        typer.Option(help="Only events for this resource id, e.g. slmops.adapter.support-bot."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Show the newest N events.")] = 50,
    store: StoreOpt = None,
) -> None:
    """The audit log: promotions, rollbacks, alias moves, gate decisions."""
    from slmops.store.audit import AuditLog

    events = list(AuditLog(open_store(store)).events(resource=resource))[-limit:]
    table = _table("at (UTC)", "event", "resource", "trigger", "details")
    for ev in events:
        table.add_row(
            f"{ev.at:%Y-%m-%d %H:%M:%S}",
            ev.event,
            ev.resource,
            ev.trigger.type + (f" {ev.trigger.by}" if ev.trigger.by else ""),
            json.dumps(ev.details, default=str),
        )
    console.print(table if events else "no audit events")


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
    store: StoreOpt = None,
) -> None:
    """Ingest documentation into a new index version (the ingest-docs flow, without Prefect)."""
    import tempfile

    from slmops.rag.ingest import IngestConfig, run_ingest

    config = IngestConfig(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, embed_model=embed_model
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
    for key, value in report.retrieval.items():
        console.print(f"  {key}: {value:g}")


@app.command()
def query(
    index: Annotated[str, typer.Argument(help="Index name.")],
    question: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many chunks.")] = 5,
    version: Annotated[str | None, typer.Option(help="A version (default: latest).")] = None,
    store: StoreOpt = None,
) -> None:
    """Retrieve the chunks of an index closest to a question, with source and score."""
    from slmops.rag.retrieval import load_index

    loaded = load_index(index, store=store, version=version)
    console.print(f"[dim]index {index} version {loaded.version}[/dim]")
    for rank, hit in enumerate(loaded.retrieve(question, k), 1):
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
    store: StoreOpt = None,
) -> None:
    """Run the eval gate: the candidate against the champion on the same cases.

    Exit status: 0 passed, 1 failed (the reasons are printed), 2 bad input or an error.
    The verdict, report and chart are stored under evals/ADAPTER/ in the store."""
    from slmops.config import get_settings
    from slmops.evaluation.report import answers_reused
    from slmops.evaluation.verdicts import evaluate_adapter

    adapter, _, version = target.partition("@")
    obj = open_store(store)
    with StageProgress(lambda stage: f"answering as {stage}") as on_progress:
        record = evaluate_adapter(
            obj,
            adapter,
            version or "latest",
            champion=champion,
            suites=suites,
            policy=policy or suites / "policy.yaml",
            cache_dir=Path(get_settings().cache_dir).expanduser(),
            trigger=Trigger.from_cli(),
            on_progress=on_progress,
            reuse_answers=not fresh,
        )
    verdict = record.verdict
    table = _table("guarded metric", "n", "cand.", "champ.", "difference", "result")
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
        if verdict.champion is not None:
            line += f" (champion: {pct(d.champion_in_scope)}, {pct(d.champion_off_topic)})"
        console.print(line, highlight=False)
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
        console.print(f"[red]gate failed[/red]: {adapter}@{verdict.version} against {against}")
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
    console.print(f"report: {record.report_uri}", highlight=False)
    if not verdict.passed:
        raise typer.Exit(1)


@app.command("refine-tune")
def refine_tune(
    model: Annotated[str, typer.Argument(help="Base model id as served, e.g. tiny-llama.")],
    source: Annotated[
        str, typer.Argument(help="Where it lives: hf://org/name, s3://bucket/prefix or a folder.")
    ],
    revision: Annotated[
        str | None, typer.Option(help="Base revision (default: the source's current one).")
    ] = None,
    adapter: Annotated[str, typer.Option(help="Adapter name in the store.")] = "support-bot",
    dataset: Annotated[
        Path, typer.Option(help="Training data, JSONL: chat messages or prompt/completion rows.")
    ] = Path("examples/support-bot/train.jsonl"),
    dataset_name: Annotated[str, typer.Option(help="Dataset name in the store.")] = "support-bot",
    recipe: Annotated[
        Path | None,
        typer.Option(help="Training recipe, YAML or JSON: TrainConfig's fields (max_steps, ...)."),
    ] = None,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Gate the adapter against the champion.")
    ] = True,
    suites: Annotated[Path, typer.Option(help="Eval suites folder for the gate.")] = Path(
        "examples/support-bot/evals"
    ),
    policy: Annotated[Path | None, typer.Option(help="Gate policy YAML.")] = None,
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Train (or find) the adapter for a base revision, gate it, promote it if the policy
    says auto_promote and a serving config is set: the refine-tune flow's pipeline, run
    here without Prefect. Exit status: 0 done, 1 the gate failed, 2 bad input or an error."""
    import dataclasses
    import logging

    from slmops.training import refine_tune as pipeline

    params = pipeline.RefineTuneParams(
        model=model,
        source=source,
        revision=revision,
        adapter=adapter,
        dataset=str(dataset),
        dataset_name=dataset_name,
        config=pipeline.load_recipe(recipe) if recipe else pipeline.TrainConfig(),
        store=store,
        gate=gate,
        suites=str(suites),
        policy=str(policy or suites / "policy.yaml"),
        serving=str(serving) if serving else None,
    )
    records: list[Any] = []
    summary: list[str] = []

    def gate_stage(*args: Any) -> Any:
        records.append(pipeline.gate(*args))
        return records[-1]

    def report_stage(**kw: Any) -> str:
        summary.append(pipeline.report_training(**kw))
        return summary[-1]

    class Say(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.print(escape(record.getMessage()), highlight=False)

    log = logging.getLogger("slmops.training.refine_tune.cli")
    log.propagate = False
    log.handlers = [Say()]
    log.setLevel(logging.INFO)
    stages = dataclasses.replace(
        pipeline.RefineTuneStages(),
        gate=gate_stage,
        report=report_stage,
        warm_start=lambda **kw: pipeline.warm_start_from(**kw, log=log),
        claim=lambda **kw: pipeline.claim_training(**kw, log=log),
        train=lambda **kw: pipeline.train(**kw, log=log),
    )
    manifest = pipeline.run_refine_tune(params, trigger=Trigger.from_cli(), stages=stages, log=log)
    console.print(
        summary[-1] if summary else f"adapter {adapter}@{manifest.version}", highlight=False
    )
    if records:
        verdict = records[-1].verdict
        mark = "[green]gate passed[/green]" if verdict.passed else "[red]gate failed[/red]"
        console.print(
            f"{mark} against {verdict.champion or 'floors only'}: {records[-1].report_uri}"
        )
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        if not verdict.passed:
            raise typer.Exit(1)


@app.command()
def assess(
    task_file: Annotated[
        Path, typer.Argument(help="Assessment task YAML (cases, model, index, prices).")
    ] = Path("examples/support-bot/assess.yaml"),
    store: StoreOpt = None,
) -> None:
    """Prompt engineering, RAG or fine-tuning? Answer the task's edge cases with every arm,
    compare failure rates and costs, and recommend with the evidence for every branch.

    The report (markdown, chart, JSON, every answer) is stored under evals/assess-NAME/."""
    import tempfile

    from slmops.assess.run import run_assessment, store_assessment
    from slmops.assess.task import BEHAVIOUR, KNOWLEDGE, load_task
    from slmops.config import get_settings

    task = load_task(task_file)
    obj = open_store(store)
    with StageProgress(lambda arm: f"answering: {arm}") as on_progress:
        run = run_assessment(
            obj, task, Path(get_settings().cache_dir).expanduser(), on_progress=on_progress
        )
    with tempfile.TemporaryDirectory(prefix="slmops-assess-") as work:
        version = store_assessment(obj, run, Path(work), Trigger.from_cli())
    result = run.assessment
    table = _table("arm", "fails (all)", "behaviour", "knowledge", "prompt tokens", "$/month")
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


ServingOpt = Annotated[
    Path | None,
    typer.Option(
        help="Serving config YAML: the replicas (default: SLMOPS_SERVING).", show_default=False
    ),
]


@app.command("memory-plan")
def memory_plan(
    model: Annotated[
        Path, typer.Argument(help="Base model folder, or its config.json alone (no weights).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Training JSONL (chat rows); its longest row sets the sequence length. "
            "Unset: every row is taken as max-length long. Needs the model's tokenizer."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="lora, qlora or auto.")] = "auto",
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    target_modules: Annotated[str, typer.Option(help="all-linear or q_proj,v_proj,...")] = (
        "all-linear"
    ),
    batch_size: Annotated[int, typer.Option(help="Rows per step per device.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Accumulation steps.")] = 1,
    max_length: Annotated[int, typer.Option(help="Longest sequence in tokens.")] = 2048,
    max_memory_gb: Annotated[
        float | None,
        typer.Option(help="Budget in GB. Unset: this machine's free GPU memory or RAM."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cuda or cpu: where the run will train (not necessarily here).")
    ] = "cuda",
    liger: Annotated[
        bool, typer.Option(help="Plan with liger kernels (GPU, slmops[gpu] installed).")
    ] = True,
) -> None:
    """Will a fine-tuning run fit, and how? The memory plan refine-tune makes before loading
    the base model, from its config.json: checkpointing, micro-batch x accumulation, QLoRA.

    Exit status: 0 it fits (the plan is printed), 1 nothing fits (the knobs to turn are
    printed), 2 bad input."""
    from slmops.training.memory_plan import (
        GB,
        ModelShape,
        PlanError,
        device_budget,
        params_label,
        plan_markdown,
        plan_training,
    )

    if method not in ("lora", "qlora", "auto"):
        raise ConfigError(f"--method {method!r}: choose lora, qlora or auto")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"--device {device!r}: choose cuda or cpu")
    if model.name == "config.json":
        try:
            shape = ModelShape.from_config(json.loads(model.read_text()), str(model))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model}: cannot read it as JSON: {exc}") from exc
    else:
        shape = ModelShape.from_pretrained(model)
    longest = max_length
    if data is not None:
        from slmops.training.datasets import DatasetConfig, chat_token_counter, validate_rows

        folder = model.parent if model.name == "config.json" else model
        try:
            count = chat_token_counter(folder)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--data needs the model's tokenizer to count tokens, and {folder} has none "
                f"that loads ({str(exc).splitlines()[0]}); or leave --data out to plan for "
                "rows of --max-length tokens"
            ) from exc
        lengths: list[int] = []

        def counting(messages: list[dict[str, str]]) -> int:
            lengths.append(count(messages))
            return lengths[-1]

        # Bad rows are refused by refine-tune with their line numbers; here they only do
        # not count.
        validate_rows(data, DatasetConfig(policy="drop", max_tokens=10**9), counting)
        longest = max(lengths)
    notes: list[str] = []
    if max_memory_gb is not None:
        budget, source = max_memory_gb * GB, "max_memory_gb"
    else:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda with no GPU here: give --max-memory-gb (e.g. 22 for a 24 GB "
                "card) to plan for a GPU elsewhere"
            )
        budget, source, notes = device_budget(device, None)
    try:
        plan = plan_training(
            shape,
            method=method,
            device=device,
            rank=rank,
            target_modules=target_modules,
            longest_row=longest,
            max_length=max_length,
            batch_size=batch_size,
            grad_accum=grad_accum,
            budget_bytes=budget,
            budget_source=source,
            liger=liger if device == "cuda" else False,
            liger_available=liger and device == "cuda",
            notes=notes,
        )
    except PlanError as exc:
        console.print(f"[red]does not fit[/red]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"[green]fits[/green]: {params_label(shape.params)} parameters", highlight=False)
    for line in plan_markdown(plan, table=False):
        console.print(escape(line), highlight=False)
    table = _table("checkpointing", "micro-batch x accumulation", "estimated GB", "fits", "time")
    for o in plan.options:
        chosen = (o.micro_batch, o.gradient_checkpointing) == (
            plan.micro_batch,
            plan.gradient_checkpointing,
        )
        table.add_row(
            "on" if o.gradient_checkpointing else "off",
            f"{o.micro_batch} x {o.grad_accum}" + (" (chosen)" if chosen else ""),
            f"{o.total_gb:.2f}",
            "[green]yes[/green]" if o.fits else "[red]no[/red]",
            f"{o.relative_time:.2f}x",
        )
    console.print(table)


def _serving(path: Path | None) -> ServingConfig:
    from slmops.config import get_settings
    from slmops.serving.client import load_serving_config

    chosen = path or get_settings().serving
    if not chosen:
        raise ConfigError(
            "no serving config: pass --serving FILE or set SLMOPS_SERVING (`slmops stack up "
            "--vllm 2` starts local replicas and writes one)"
        )
    return load_serving_config(chosen)


def _say(message: str) -> None:
    console.print(f"[dim]{escape(message)}[/dim]")


@app.command()
def promote(
    target: Annotated[
        str, typer.Argument(help="ADAPTER[@VERSION]; the version defaults to the challenger.")
    ],
    serving: ServingOpt = None,
    suites: Annotated[
        Path, typer.Option(help="Eval suites: the smoke test asks the format suite's cases.")
    ] = Path("examples/support-bot/evals"),
    drain: Annotated[
        float | None,
        typer.Option(help="Seconds before older versions are unloaded (default: config)."),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Promote an adapter version to every vLLM replica, all or none (needs a passing gate
    verdict against the current champion). Exit 0 promoted, 2 refused (nothing changed)."""
    from slmops.serving.promotion import promote as run_promotion

    adapter, _, version = target.partition("@")
    config = _serving(serving)
    if drain is not None:
        config = config.model_copy(update={"drain_s": drain})
    result = run_promotion(
        open_store(store),
        adapter,
        version or "challenger",
        config,
        suites=suites,
        trigger=Trigger.from_cli(),
        log=_say,
    )
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    console.print(
        f"[green]promoted[/green] {adapter}@{result.version} ({result.name}) on "
        f"{len(result.replicas)} replica(s); previous champion {result.previous or 'none'} "
        f"kept loaded. {timings}",
        highlight=False,
    )


@app.command()
def rollback(
    adapter: Annotated[str, typer.Argument(help="Adapter name, e.g. support-bot.")],
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Put the previous champion back on every replica, in one step."""
    from slmops.serving.promotion import rollback as run_rollback

    result = run_rollback(
        open_store(store), adapter, _serving(serving), trigger=Trigger.from_cli(), log=_say
    )
    console.print(
        f"[green]rolled back[/green] {adapter} to {result.version} ({result.name}) on "
        f"{len(result.replicas)} replica(s), from {result.previous}",
        highlight=False,
    )


@serve_app.command("sync")
def serve_sync(
    adapter: Annotated[str, typer.Argument(help="Adapter name, e.g. support-bot.")],
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Make every replica serve what the store says (after a restart, for a new replica).
    Exit 0 when every replica matches, 1 if some drift could not be fixed."""
    from slmops.serving.promotion import sync

    report = sync(
        open_store(store), adapter, _serving(serving), trigger=Trigger.from_cli(), log=_say
    )
    if not report.drift:
        console.print(f"no drift: every replica serves {adapter} champion {report.champion}")
        return
    table = _table("replica", "drift", "result")
    for d in report.drift:
        result = (
            "[green]fixed[/green]" if d.fixed else f"[red]NOT fixed[/red]: {escape(d.error or '')}"
        )
        table.add_row(d.replica, escape(d.problem), result)
    console.print(table)
    if not report.ok:
        raise typer.Exit(1)


@serve_app.command("status")
def serve_status(
    adapter: Annotated[str, typer.Argument(help="Adapter name, e.g. support-bot.")],
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """What each replica serves for ADAPTER, against the store's champion."""
    from slmops.serving.client import VLLMClient
    from slmops.serving.promotion import CHAMPION, serving_name

    config = _serving(serving)
    art = VersionedArtifact(open_store(store), "adapters", adapter)
    alias = art.get_alias(CHAMPION)
    want = serving_name(adapter, art.manifest(alias.version)) if alias else None
    console.print(f"champion: {alias.version if alias else 'none'} ({want or '-'})")
    table = _table("replica", "base", f"{adapter} serves", "versions loaded", "state")
    healthy = True
    for replica in config.replicas:
        with VLLMClient(replica, timeout=config.timeout_s, retries=0) as client:
            try:
                served = client.adapters()
            except SlmopsError as exc:
                healthy = False
                table.add_row(
                    replica.url, replica.model, "-", "-", f"[red]{escape(str(exc))}[/red]"
                )
                continue
        root = served.get(adapter)
        current = next((n for n, r in served.items() if n != adapter and r == root), root or "-")
        ok = want is None or current == want
        healthy &= ok
        versions = ", ".join(sorted(n for n in served if n.startswith(f"{adapter}@")))
        state = "[green]in sync[/green]" if ok else "[yellow]drift: run slmops serve sync[/yellow]"
        table.add_row(replica.url, replica.model, current, versions or "-", state)
    console.print(table)
    if not healthy:
        raise typer.Exit(1)


def _stack(
    state_dir: Path | None,
    prefect_port: int | None = None,
    s3_port: int | None = None,
    vllm: int | None = None,
) -> LocalStack:
    """The stack in `state_dir`; ports given here, else those it was started with."""
    from infra.stack import LocalStack, StackConfig
    from slmops.config import get_settings

    config = StackConfig.load(state_dir or Path(get_settings().state_dir))
    if prefect_port:
        config.prefect_port = prefect_port
    if s3_port:
        config.s3_port = s3_port
    if vllm is not None:
        config.vllm = vllm
    return LocalStack(config, log=lambda m: console.print(f"[dim]{m}[/dim]"))


StateOpt = Annotated[Path | None, typer.Option(help="State folder (default: SLMOPS_STATE_DIR).")]
PrefectPort = Annotated[
    int | None, typer.Option(help="Prefect server port [default: 4200].", show_default=False)
]
S3Port = Annotated[
    int | None, typer.Option(help="S3 server port [default: 9000].", show_default=False)
]


@stack_app.command("up")
def stack_up(
    state_dir: StateOpt = None,
    prefect_port: PrefectPort = None,
    s3_port: S3Port = None,
    vllm: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Also run N vLLM replicas (ports 8100...) serving the tiny base model, and "
            "write the serving config promotion uses (needs `make vllm`). Default: as last time.",
            show_default=False,
        ),
    ] = None,
    roll: Annotated[
        bool,
        typer.Option(
            "--roll",
            help="Move the vLLM replicas onto the model folder's newest revision (after a "
            "release, once its adapter passed the gate). Without it they keep the revision "
            "serving.yaml names, which production's adapters were trained on.",
        ),
    ] = False,
) -> None:
    """Start the Prefect server, the process worker, the S3 server and any vLLM replicas
    (what isn't running)."""
    stack = _stack(state_dir, prefect_port, s3_port, vllm)
    stack.up(roll=roll)
    _print_health(stack)
    console.print('use it from a shell: [bold]eval "$(slmops stack env)"[/bold]')


@stack_app.command("down")
def stack_down(state_dir: StateOpt = None) -> None:
    """Stop what `stack up` started (and nothing else)."""
    stopped = _stack(state_dir).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(
    state_dir: StateOpt = None, prefect_port: PrefectPort = None, s3_port: S3Port = None
) -> None:
    """Show each component: running, unhealthy or stopped."""
    stack = _stack(state_dir, prefect_port, s3_port)
    if not _print_health(stack):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(
    state_dir: StateOpt = None, prefect_port: PrefectPort = None, s3_port: S3Port = None
) -> None:
    """Print `export` lines that point a shell at the stack: eval "$(slmops stack env)"."""
    for key, value in _stack(state_dir, prefect_port, s3_port).config.client_env().items():
        print(f"export {key}={value}")


def _round(value: object) -> object:
    """Floats to 4 significant digits for reading; everything else as it is."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _print_health(stack: LocalStack) -> bool:
    table = _table("component", "state", "pid", "url", "log")
    healthy = True
    for name, (state, comp) in stack.health().items():
        colour = {"running": "green", "unhealthy": "yellow"}.get(state, "red")
        healthy &= state == "running"
        table.add_row(
            name,
            f"[{colour}]{state}[/{colour}]",
            str(comp.pid) if comp else "-",
            (comp.url or "-") if comp else "-",
            comp.log if comp else "-",
        )
    console.print(table)
    return healthy


def main() -> None:
    """Entry point: slmops' own errors print as one clear line and exit 2, no traceback."""
    try:
        app()
    except SlmopsError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
