"""`slmops promote`, `rollback`, `serve sync`, `serve status`: adapters on the vLLM replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from slmops.cli.common import (
    ServingOpt,
    StoreOpt,
    app,
    console,
    new_table,
    say,
    serve_app,
)
from slmops.errors import SlmopsError
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import CHALLENGER, VersionedArtifact


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
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.promotion import promote as run_promotion

    adapter, _, version = target.partition("@")
    config = resolve_serving_config(serving)
    if drain is not None:
        config = config.model_copy(update={"drain_s": drain})
    result = run_promotion(
        open_store(store),
        adapter,
        version or CHALLENGER,
        config,
        suites=suites,
        trigger=Trigger.from_cli(),
        log=say,
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
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.promotion import rollback as run_rollback

    result = run_rollback(
        open_store(store),
        adapter,
        resolve_serving_config(serving),
        trigger=Trigger.from_cli(),
        log=say,
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
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.promotion import sync

    report = sync(
        open_store(store),
        adapter,
        resolve_serving_config(serving),
        trigger=Trigger.from_cli(),
        log=say,
    )
    if not report.drift:
        console.print(f"no drift: every replica serves {adapter} champion {report.champion}")
        return
    table = new_table("replica", "drift", "result")
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
    from slmops.serving.client import VLLMClient, resolve_serving_config
    from slmops.serving.promotion import serving_name
    from slmops.store.versions import CHAMPION

    config = resolve_serving_config(serving)
    art = VersionedArtifact(open_store(store), "adapters", adapter)
    alias = art.get_alias(CHAMPION)
    want = serving_name(adapter, art.manifest(alias.version)) if alias else None
    console.print(f"champion: {alias.version if alias else 'none'} ({want or '-'})")
    table = new_table("replica", "base", f"{adapter} serves", "versions loaded", "state")
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
