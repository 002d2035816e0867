"""`slmops stack ...`: the local stack (Prefect server + worker, S3 server, vLLM replicas) from
the command line. Plugged into `slmops` through the `slmops.cli` entry point (pyproject.toml)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slmops.cli.common import console, new_table

if TYPE_CHECKING:
    from infra.stack import LocalStack

stack_app = typer.Typer(
    help="The local stack: Prefect server + worker, S3 server, vLLM replicas.", no_args_is_help=True
)


def _stack(
    state_dir: Path | None,
    prefect_port: int | None = None,
    s3_port: int | None = None,
    vllm: int | None = None,
    vllm_threads: int | None = None,
    database: str | None = None,
    postgres_port: int | None = None,
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
    if vllm_threads is not None:
        config.vllm_threads = vllm_threads
    if database is not None:
        config.database = database
    if postgres_port:
        config.postgres_port = postgres_port
    return LocalStack(config, log=lambda m: console.print(f"[dim]{m}[/dim]"))


class Database(StrEnum):
    sqlite = "sqlite"
    postgres = "postgres"


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
            help="Also run N vLLM replicas (ports 8100...) serving the tiny base model behind "
            "a router (HAProxy, port 8098), and write the serving config promotion uses (needs "
            "`make vllm router`). Default: as last time.",
            show_default=False,
        ),
    ] = None,
    roll: Annotated[
        bool,
        typer.Option(
            "--roll",
            help="Start a replica set on the model folder's newest revision beside the "
            "serving one (after a release, once its adapter passed the gate): a promotion then "
            "moves the traffic to it, `slmops stack retire` stops the old set. Without it the "
            "replicas keep the revision production's adapters were trained on.",
        ),
    ] = False,
    vllm_threads: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="OpenMP threads per vLLM replica, for replicas started now. 0 = the cores "
            "divided by twice the replicas (room for a roll's second set), at least 1: more "
            "threads than cores stall every replica. Default: as last time (0 the first time).",
            show_default=False,
        ),
    ] = None,
    database: Annotated[
        Database | None,
        typer.Option(
            help="The Prefect server's database: sqlite (a file in the state folder) or "
            "postgres (a real PostgreSQL server on loopback, its data in the state folder; "
            "needs `make postgres`): for concurrent runs and several workers. Takes effect "
            "when the Prefect server starts (after `stack down`); nothing moves between "
            "the two. Default: as last time (sqlite the first time).",
            show_default=False,
        ),
    ] = None,
    postgres_port: Annotated[
        int | None, typer.Option(help="PostgreSQL port [default: 5442].", show_default=False)
    ] = None,
) -> None:
    """Start the Prefect server, the process worker, the S3 server and any vLLM replicas
    (what isn't running)."""
    stack = _stack(
        state_dir,
        prefect_port,
        s3_port,
        vllm,
        vllm_threads,
        database.value if database else None,
        postgres_port,
    )
    stack.up(roll=roll)
    _print_health(stack)
    console.print('use it from a shell: [bold]eval "$(slmops stack env)"[/bold]')


@stack_app.command("retire")
def stack_retire(
    set_name: Annotated[
        str,
        typer.Argument(metavar="SET", help="The replica set, as `slmops serve status` names it."),
    ],
    drain: Annotated[
        float, typer.Option(help="Seconds to wait first, for requests still in flight there.")
    ] = 5.0,
    state_dir: StateOpt = None,
) -> None:
    """Stop a replica set that takes no traffic (the old base revision's, once a promotion
    moved the stable name to the new one): out of the router, its replicas stopped, its
    lines gone from serving.yaml. Refused while it takes traffic or serves a champion's base."""
    stack = _stack(state_dir)
    stopped = stack.retire(set_name, drain_s=drain)
    console.print(
        f"replica set {set_name} retired" + (f": stopped {', '.join(stopped)}" if stopped else "")
    )


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


def _print_health(stack: LocalStack) -> bool:
    table = new_table("component", "state", "pid", "url", "log")
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
