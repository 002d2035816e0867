"""Command groups of other packages, plugged into `slmops` through the `slmops.cli` entry point
group (`[project.entry-points."slmops.cli"]` in their pyproject.toml: name = "module:typer_app").

slmops' own pyproject plugs in the local stack (`stack = "infra.cli:stack_app"`). infra/ is a
folder of the checkout, not an installed package: run inside a checkout (its folder or one
below), `slmops` finds it there; elsewhere `slmops stack` says so instead of failing to import."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated

import typer

from slmops.errors import ConfigError

GROUP = "slmops.cli"


def add_plugins(app: typer.Typer) -> None:
    for ep in entry_points(group=GROUP):
        try:
            app.add_typer(_load(ep), name=ep.name)
        except ImportError as exc:
            _unavailable(app, ep, exc)


def _load(ep: EntryPoint) -> typer.Typer:
    try:
        loaded = ep.load()
    except ModuleNotFoundError as exc:
        top = ep.module.split(".")[0]
        root = _checkout(top)
        if root is None or exc.name != top:
            raise
        sys.path.insert(0, str(root))  # a folder of this checkout, not an installed package
        loaded = ep.load()
    if not isinstance(loaded, typer.Typer):
        raise ImportError(f"{ep.value} is not a typer.Typer")
    return loaded


def _checkout(top: str, start: Path | None = None) -> Path | None:
    """The checkout around `start` (default: the working directory) that holds package `top`."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / top / "__init__.py").is_file():
            return folder
    return None


def _unavailable(app: typer.Typer, ep: EntryPoint, exc: ImportError) -> None:
    """`slmops NAME ...` that says why it cannot run here, whatever follows it."""
    why = (
        f"`slmops {ep.name}` comes from {ep.value}, which cannot be imported here ({exc}). "
        "Run it inside a checkout of slmops: the local stack lives in its infra/ folder"
    )

    def unavailable(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        raise ConfigError(why)

    app.command(
        ep.name,
        help=f"(not available here: run it in a checkout of slmops) {why}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(unavailable)
