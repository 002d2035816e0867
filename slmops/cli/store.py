"""`slmops status`, `store ...`, `alias ...`, `audit`: what the artifact store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from slmops.cli.common import (
    StoreOpt,
    alias_app,
    app,
    console,
    new_table,
    parse_artifact,
    pick_version,
    rounded,
    store_app,
)
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import COLLECTIONS, summarize


@app.command()
def status(store: StoreOpt = None) -> None:
    """Indexes, datasets and adapters in the store, with their versions and aliases."""
    obj = open_store(store)
    rows = summarize(obj)
    console.print(f"store: [bold]{obj.uri}[/bold]")
    if not rows:
        console.print("empty: nothing has been published yet")
        return
    table = new_table("artifact", "versions", "newest", "aliases", "orphans")
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
    art, at = parse_artifact(target, store)
    manifest = art.manifest(pick_version(art, at))
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
        k: (f"<{len(v)} points>" if isinstance(v, list) and len(v) > 10 else rounded(v))
        for k, v in manifest.metrics.items()
    }  # a loss curve is for the PNG, not here (--json prints every value in full)
    for title, data in (
        ("inputs", [i.model_dump(exclude_none=True) for i in manifest.inputs]),
        ("config", manifest.config),
        ("metrics", metrics),
        ("timings (s)", {k: rounded(v) for k, v in manifest.timings.items()}),
        ("resources", manifest.resources),
    ):
        if data:
            console.print(f"[bold]{title}[/bold]: {json.dumps(data, default=str)}", highlight=False)
    table = new_table("file", "bytes", "sha256")
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
        art, at = parse_artifact(target, store)
        pairs = [(art, v) for v in ([pick_version(art, at)] if at else art.versions())]
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
    art, _ = parse_artifact(target, store)
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
    art, _ = parse_artifact(target, store)
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
    table = new_table("at (UTC)", "event", "resource", "trigger", "details")
    for ev in events:
        table.add_row(
            f"{ev.at:%Y-%m-%d %H:%M:%S}",
            ev.event,
            ev.resource,
            ev.trigger.type + (f" {ev.trigger.by}" if ev.trigger.by else ""),
            json.dumps(ev.details, default=str),
        )
    console.print(table if events else "no audit events")
