"""The README's commands stay true: every command line in its bash blocks names a make target,
an `slmops` command with options it has, a deployment prefect.yaml defines, or a module or
file that exists. (What they do is tested elsewhere: the demo, the stack, the CLI tests.)"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from slmops.cli import app

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            command = line.split("  #")[0].split(" # ")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def make_variables() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z_]*) *[?:]?=", (ROOT / "Makefile").read_text(), re.M))


def deployments() -> set[str]:
    flows = {}
    for path in (ROOT / "flows").glob("*.py"):
        found = re.search(r'@flow\(name="([^"]+)"', path.read_text())
        if found:
            flows[f"flows/{path.name}"] = found.group(1)
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {f"{flows[d['entrypoint'].split(':')[0]]}/{d['name']}" for d in spec["deployments"]}


def check(command: str, cli: Any) -> str | None:
    """Why `command` does not match the project (None: it does)."""
    inner = re.match(r'eval "\$\((.*)\)"', command)
    if inner:
        return check(inner.group(1), cli)
    words = shlex.split(command.replace("|", " | "), posix=True)
    head = words[0].removeprefix(".venv/bin/")
    if head == "make":
        settings = {w.partition("=")[0] for w in words[1:] if "=" in w}
        if unknown := settings - make_variables():
            return f"no make variable {unknown}"
        missing = {w for w in words[1:] if "=" not in w} - make_targets()
        return f"no make target {missing}" if missing else None
    if head in ("python", "python3") and words[1] == "-m":
        return None if importlib.util.find_spec(words[2]) else f"no module {words[2]}"
    if head in ("python", "python3"):
        return None if (ROOT / words[1]).exists() else f"no file {words[1]}"
    if head == "prefect" and words[1:3] == ["deployment", "run"]:
        return None if words[3] in deployments() else f"no deployment {words[3]}"
    if head == "prefect":
        return None  # prefect's own commands (deploy --all)
    if head == "pip" and words[1] == "install":  # the project's extras must exist
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        extras = set(project["optional-dependencies"])
        named = {e for w in words[2:] for e in re.findall(r"\[([\w,]+)\]", w)}
        missing = {e for group in named for e in group.split(",")} - extras
        return f"no extra {missing}" if missing else None
    if head == "pytest":
        marks = " ".join(words[words.index("-m") + 1 :]) if "-m" in words else ""
        declared = (ROOT / "pyproject.toml").read_text()
        missing = {m for m in re.findall(r"\w+", marks) if m not in ("not", "and", "or")}
        missing = {m for m in missing if f'"{m}:' not in declared}
        return f"no pytest marker {missing}" if missing else None
    if head != "slmops":
        return f"unknown program {head}"
    group, rest = cli, words[1:]  # click groups (typer's own click) have .commands
    while hasattr(group, "commands") and rest and rest[0] in group.commands:
        group, rest = group.commands[rest[0]], rest[1:]
    if hasattr(group, "commands"):
        return f"no slmops command {' '.join(words[1:3])}"
    known = {opt for p in group.params for opt in getattr(p, "opts", [])}
    unknown = {w.split("=")[0] for w in rest if w.startswith("-")} - known - {"|"}
    return f"slmops {group.name} has no option {unknown}" if unknown else None


def test_every_readme_command_exists() -> None:
    cli = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) >= 30 and "make demo" in commands and "make test" in commands
    problems = {c: why for c in commands if (why := check(c, cli))}
    assert problems == {}


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("make deploy", "no make target"),
        ("make demo MODLE=gemma-270m", "no make variable"),
        ("slmops promote support-bot --dry-run", "no option"),
        ("slmops serve restart x", "no slmops command"),
        ("prefect deployment run 'promote-adapter/nightly'", "no deployment"),
        ("python -m flows.no_such_flow", "no module"),
        ("pip install 'slmops[training,cuda]'", "no extra {'cuda'}"),
    ],
)
def test_a_command_that_rotted_is_caught(command: str, why: str) -> None:
    cli = typer.main.get_command(app)
    assert why in (check(command, cli) or "")
