"""The `slmops` command line, one module per command group: store, rag, training, evaluation,
assess, serving. Command groups of other packages plug in through the `slmops.cli` entry point
group (the local stack's `slmops stack`, from infra/ in a checkout)."""

from __future__ import annotations

import importlib
import sys

from rich.console import Console

from slmops.cli.common import app
from slmops.cli.plugins import add_plugins
from slmops.errors import SlmopsError

__all__ = ["app", "main"]

# Each module registers its commands on `app`, in the order `slmops --help` lists them.
for _group in ("store", "rag", "evaluation", "training", "assess", "serving"):
    importlib.import_module(f"slmops.cli.{_group}")
add_plugins(app)


def main() -> None:
    """Entry point: slmops' own errors print as one clear line and exit 2, no traceback."""
    try:
        app()
    except SlmopsError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
