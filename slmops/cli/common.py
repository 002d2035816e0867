"""What every command group shares: the app and its groups, the console, options, tables,
progress, and how an artifact or a serving config is named on the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slmops.errors import StoreError
from slmops.progress import Tenths
from slmops.store import open_store
from slmops.store.versions import COLLECTIONS, LATEST, VersionedArtifact

if TYPE_CHECKING:
    pass


app = typer.Typer(
    help="Keep a self-hosted, fine-tuned, RAG-backed language model current in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Look inside the artifact store.", no_args_is_help=True)
alias_app = typer.Typer(
    help="Move an artifact's aliases (latest, champion...).", no_args_is_help=True
)
app.add_typer(store_app, name="store")
app.add_typer(alias_app, name="alias")
serve_app = typer.Typer(
    help="The vLLM replicas: what they serve, and reconcile them with the store.",
    no_args_is_help=True,
)
app.add_typer(serve_app, name="serve")

console = Console()


def new_table(*columns: str) -> Table:
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
        self.tenths = Tenths(from_zero=True, every_s=30)
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


def parse_artifact(target: str, store_uri: str | None) -> tuple[VersionedArtifact, str | None]:
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


def pick_version(art: VersionedArtifact, at: str | None) -> str:
    """A version id, an alias name, or (none given) `latest`, else the newest version."""
    if at:
        return art.version_of(at)
    if art.get_alias(LATEST) is not None:
        return art.resolve(LATEST).version
    versions = art.versions()
    if not versions:
        raise StoreError(f"{art.prefix} has no complete version in {art.store.uri}")
    return versions[-1]


ServingOpt = Annotated[
    Path | None,
    typer.Option(
        help="Serving config YAML: the replicas (default: SLMOPS_SERVING).", show_default=False
    ),
]


GeneratorOpt = Annotated[
    str,
    typer.Option(
        "--generator",
        help="What answers the eval cases: vllm (the replica set serving the base revision, "
        "under the candidate's versioned name; needs a serving config), transformers (in this "
        "process: bf16 on a GPU, fp32 on CPU), or auto (vllm when a serving config is set).",
    ),
]


def plain(line: str) -> None:
    """A line as it is (no markup, no highlighting): progress, paths, answers."""
    console.print(line, markup=False, highlight=False)


def say(message: str) -> None:
    console.print(f"[dim]{escape(message)}[/dim]")


def rounded(value: object) -> object:
    """Floats to 4 significant digits for reading; everything else as it is."""
    return float(f"{value:.4g}") if isinstance(value, float) else value
