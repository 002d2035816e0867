"""`slmops stack ...`: the local stack (Prefect server + worker, S3 server, vLLM replicas) from
the command line. Plugged into `slmops` through the `slmops.cli` entry point (pyproject.toml)."""

from __future__ import annotations

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
