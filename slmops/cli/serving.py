"""`slmops promote`, `rollback`, `serve sync`, `serve status`, `serve retire`: adapters on the
vLLM replicas, and the replica sets behind the router."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from slmops.serving.client import ServingConfig


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
    verdict against the current champion); behind a router, to the replicas of its base
    revision's set, which then takes the traffic in canary steps. Exit 0 promoted, 2 refused
    (nothing changed)."""
    from slmops.pipelines.promotion import promote as run_promotion
    from slmops.serving.client import resolve_serving_config

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
    traffic = ", ".join(f"set {n} {v:g}%" for n, v in result.traffic.items())
    console.print(
        f"[green]promoted[/green] {adapter}@{result.version} ({result.name}) on "
        f"{len(result.replicas)} replica(s); previous champion {result.previous or 'none'} "
        f"kept loaded. " + (f"Router: {traffic}. " if traffic else "") + timings,
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
    from slmops.serving.reconcile import rollback as run_rollback

    result = run_rollback(
        open_store(store),
        adapter,
        resolve_serving_config(serving),
        trigger=Trigger.from_cli(),
        log=say,
    )
    traffic = ", ".join(f"set {n} {v:g}%" for n, v in result.traffic.items())
    console.print(
        f"[green]rolled back[/green] {adapter} to {result.version} ({result.name}) on "
        f"{len(result.replicas)} replica(s), from {result.previous}"
        + (f"; router: {traffic}" if traffic else ""),
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
    from slmops.serving.reconcile import sync

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
    from slmops.serving.placement import desired
    from slmops.serving.staging import serving_name
    from slmops.store.versions import CHAMPION

    config = resolve_serving_config(serving)
    art = VersionedArtifact(open_store(store), "adapters", adapter)
    alias = art.get_alias(CHAMPION)
    champion = art.manifest(alias.version) if alias else None
    console.print(
        f"champion: {alias.version if alias else 'none'} "
        f"({serving_name(adapter, champion) if champion else '-'})"
    )
    # What each replica set should serve: the rule `serve sync` applies (placement.desired).
    expected: dict[str, str | None] = {}
    if champion is not None:
        previous = art.manifest(alias.history[-1].version) if alias and alias.history else None
        for group, wants in desired(config, adapter, champion, previous).items():
            expected[group] = serving_name(adapter, wants[adapter]) if wants else None
    shares: dict[str, float] = {}
    if config.router is not None:
        from slmops.serving.router import HAProxyRuntime

        try:
            shares = HAProxyRuntime(config.router.admin).shares()
        except SlmopsError as exc:
            console.print(f"[red]router: {escape(str(exc))}[/red]")
        console.print(
            "router: "
            + (", ".join(f"set {n} {v:g}%" for n, v in shares.items()) or "no shares read")
            + f" (clients call {config.router.url})"
        )
    table = new_table("replica", "set", "base", f"{adapter} serves", "versions loaded", "state")
    healthy = True
    for replica in config.replicas:
        set_want = expected.get(replica.set_name if config.router else "")
        with VLLMClient(replica, timeout=config.timeout_s, retries=0) as client:
            try:
                served = client.adapters()
            except SlmopsError as exc:
                healthy = False
                table.add_row(
                    replica.url,
                    replica.set_name,
                    replica.model,
                    "-",
                    "-",
                    f"[red]{escape(str(exc))}[/red]",
                )
                continue
        root = served.get(adapter)
        current = next((n for n, r in served.items() if n != adapter and r == root), root or "-")
        ok = set_want is None or current == set_want
        healthy &= ok
        versions = ", ".join(sorted(n for n in served if n.startswith(f"{adapter}@")))
        state = "[green]in sync[/green]" if ok else "[yellow]drift: run slmops serve sync[/yellow]"
        where = replica.set_name
        if config.router is not None:
            where += f" ({shares.get(replica.set_name, 0):g}%)"
        table.add_row(replica.url, where, replica.model, current, versions or "-", state)
    console.print(table)
    if not healthy:
        raise typer.Exit(1)


@serve_app.command("retire")
def serve_retire(
    set_name: Annotated[
        str, typer.Argument(metavar="SET", help="The replica set to take out, e.g. 04b4baba24d0.")
    ],
    adapter: Annotated[
        str, typer.Option(help="The adapter whose champion must not be served by the set.")
    ] = "support-bot",
    drain: Annotated[
        float, typer.Option(help="Seconds to wait first, for requests still in flight there.")
    ] = 0.0,
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Take a replica set out of the router once it takes no traffic (after a base-model
    release moved the stable name to the new revision's set). Its replicas can be stopped
    afterwards, and their lines removed from the serving config; a rollback to its revision
    is then no longer instant. Refused while the set has a share or serves the champion's
    base."""
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.reconcile import retire_set

    removed = retire_set(
        resolve_serving_config(serving),
        open_store(store),
        set_name,
        [adapter],
        drain_s=drain,
        log=say,
    )
    console.print(
        f"replica set {set_name} left the router ({', '.join(removed)}): stop its replicas and "
        "remove them from the serving config",
        highlight=False,
    )


TrafficAdapterOpt = Annotated[
    str, typer.Option(help="The adapter whose champion's set takes the traffic.")
]


@serve_app.command("router-config")
def serve_router_config(
    adapter: TrafficAdapterOpt = "support-bot",
    bind: Annotated[
        str, typer.Option(help="Where the router listens for clients: HOST:PORT.")
    ] = "0.0.0.0:8000",
    out: Annotated[
        Path | None, typer.Option(help="Write the config here instead of printing it.")
    ] = None,
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """HAProxy's config for the serving config's replica sets (`router.admin` becomes its
    admin socket): the champion's set takes all the traffic, the others none. For a router
    you run yourself; promotion then drives it at run time."""
    from slmops.errors import ConfigError
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.router import config_text

    config = resolve_serving_config(serving)
    if config.router is None:
        raise ConfigError(
            "the serving config has no `router` (url, admin): add one "
            "(docs/guides/serving.md#replica-sets)"
        )
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--bind {bind!r}: write HOST:PORT, e.g. 0.0.0.0:8000")
    sets = {name: [r.url for r in replicas] for name, replicas in config.sets().items()}
    active = _champion_set(config, store, adapter)
    text = config_text(int(port), config.router.admin, sets, {active: 100}, host=host)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}: set {active} takes the traffic", highlight=False)


def _champion_set(config: ServingConfig, store: str | None, adapter: str) -> str:
    """The replica set serving the base revision of `adapter`'s champion (the first set when
    there is no champion, or no set serves it)."""
    from slmops.serving.placement import target_set
    from slmops.store.versions import CHAMPION

    art = VersionedArtifact(open_store(store), "adapters", adapter)
    alias = art.get_alias(CHAMPION)
    active = target_set(config, art.manifest(alias.version)) if alias is not None else None
    return active or next(iter(config.sets()))


@serve_app.command("gateway-manifests")
def serve_gateway_manifests(
    adapter: TrafficAdapterOpt = "support-bot",
    gateway: Annotated[
        str, typer.Option(help="The Gateway the HTTPRoute attaches to (parentRefs).")
    ] = "slmops-gateway",
    namespace: Annotated[str, typer.Option(help="The namespace of every manifest.")] = "default",
    port: Annotated[int, typer.Option(help="The vLLM containers' port.")] = 8000,
    share: Annotated[
        list[str] | None,
        typer.Option(
            help="SET=PERCENT, e.g. --share r1=90 --share r2=10 (a canary step); default: the "
            "champion's set 100.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the manifests here instead of printing them.")
    ] = None,
    serving: ServingOpt = None,
    store: StoreOpt = None,
) -> None:
    """Kubernetes manifests for the replica sets behind a Gateway API implementation: a
    Service per set (pods labelled slmops.io/replica-set=SET) and an HTTPRoute weighting them.
    A canary step or a rollback is the same HTTPRoute with other weights (kubectl apply)."""
    import yaml

    from slmops.errors import ConfigError
    from slmops.serving.client import resolve_serving_config
    from slmops.serving.gateway import gateway_manifests

    config = resolve_serving_config(serving)
    shares: dict[str, float] = {}
    for item in share or []:
        set_name, _, value = item.partition("=")
        try:
            shares[set_name] = float(value)
        except ValueError:
            raise ConfigError(f"--share {item!r}: write SET=PERCENT, e.g. r2=10") from None
    if not shares:
        shares = {_champion_set(config, store, adapter): 100.0}
    docs = gateway_manifests(
        config, shares, name=adapter, gateway=gateway, namespace=namespace, port=port
    )
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}: {len(docs) - 1} Service(s) and an HTTPRoute", highlight=False)
