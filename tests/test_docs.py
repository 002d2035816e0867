"""The docs stay true.

- Every command line in the README's and the docs' bash blocks names a make target, an
  `slmops` command with options it has, a deployment prefect.yaml defines, or a module or file
  that exists.
- Every bash block says what runs it, in the HTML comment above it: `docs-test: run` (this
  module runs it, in a scratch folder beside the checkout), `docs-test: run by TEST, ...`
  (tests that run those commands; each must exist), or `docs-test: needs ...` (a GPU, a
  cluster, hours: what this machine cannot give a test).
- The site builds with `mkdocs build --strict` (a broken link, anchor or page fails), and every
  docs page the code's messages and comments point at (`docs/....md#anchor`) exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from slmops.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!-- docs-test: (.+?) -->")


@dataclass
class Block:
    file: Path
    line: int
    marker: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        lines = []
        for line in self.text.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].split(" # ")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
        return lines


def shell_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```bash":
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = MARKER.fullmatch(above.strip())
                text = "\n".join(lines[i + 1 : end])
                blocks.append(Block(path, i + 1, marker.group(1) if marker else None, text))
                i = end
            i += 1
    return blocks


def readme_commands() -> list[str]:
    return [c for block in shell_blocks() for c in block.commands()]


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


def test_every_docs_command_exists() -> None:
    cli = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) >= 30 and "make demo" in commands and "make test" in commands
    problems = {c: why for c in commands if (why := check(c, cli))}
    assert problems == {}


def _runner_problem(runner: str) -> str | None:
    if runner == ".ci/run":
        return None if (ROOT / ".ci" / "run").is_file() else "no .ci/run"
    file, _, name = runner.partition("::")
    path = ROOT / file
    if not file.startswith("tests/") or not name or not path.is_file():
        return f"{runner!r} is not tests/FILE.py::TEST"
    if not re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.M):
        return f"{file} has no test {name}"
    return None


def marker_problem(marker: str | None) -> str | None:
    """Why a block's marker does not say what runs it (None: it does)."""
    if marker is None:
        return "no <!-- docs-test: ... --> above it: say what runs it"
    if marker == "run" or re.match(r"(needs|checked only:) \S", marker):
        return None
    if marker.startswith("run by "):
        problems = [p for r in marker[7:].split(", ") if (p := _runner_problem(r.strip()))]
        return "; ".join(problems) or None
    return f"unknown marker {marker!r}"


def test_every_shell_block_says_what_runs_it() -> None:
    problems = {b.where: why for b in shell_blocks() if (why := marker_problem(b.marker))}
    assert problems == {}
    assert sum(b.marker == "run" for b in shell_blocks()) >= 3


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        (None, "no <!-- docs-test"),
        ("run by tests/test_docs.py::test_no_such_test", "has no test"),
        ("run by make demo", "is not tests/FILE.py::TEST"),
        ("ran", "unknown marker"),
    ],
)
def test_a_block_whose_runner_is_missing_is_caught(marker: str | None, why: str) -> None:
    assert why in (marker_problem(marker) or "")


def test_the_blocks_marked_run_run_as_written(tmp_path: Path) -> None:
    # A scratch folder with the checkout's folders: what the commands write (.slmops/, the
    # store, the cache) lands here, never in the checkout's own .slmops.
    for name in ("examples", "flows", "tasks", "infra", "benchmarks", "prefect.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "SLMOPS_STORE": str(tmp_path / "store"),
        "SLMOPS_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("SLMOPS_SERVING", None)
    ran = []
    for block in (b for b in shell_blocks() if b.marker == "run"):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{block.where}:\n{block.text}\n{done.stdout}{done.stderr}"
        ran.append((block.where, done.stdout))
    outputs = dict(ran)
    ingest = next(out for where, out in outputs.items() if "guides/ingest.md" in where)
    assert "support-docs" in ingest and "Deckhand" in ingest


DOC_LINK = re.compile(r"docs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")
CODE = ("slmops", "flows", "tasks", "infra", "examples", "benchmarks", "tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_strictly_with_the_reference_written_from_the_code(site: Path) -> None:
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("slmops ingest", "slmops gate", "slmops promote", "slmops memory-plan"):
        assert command in cli
    assert "--gradient-checkpointing" in cli
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "max_steps" in config and "non_inferiority" in config and "SLMOPS_STORE" in config
    deployments = (site / "reference" / "deployments" / "index.html").read_text()
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert all(d["name"] in deployments for d in spec["deployments"])


def code_doc_links() -> list[tuple[str, str, str]]:
    """(file:line, page, anchor) of every docs page the code points at."""
    files = [ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "prefect.yaml"]
    for top in CODE:
        files += [
            p
            for p in (ROOT / top).rglob("*")
            if p.suffix in (".py", ".yaml", ".yml", ".sh") and "node_modules" not in p.parts
        ]
    links = []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for page, anchor in DOC_LINK.findall(line):
                if re.search(r"(support-bot/|HERE / \"|DOCS / \")docs/" + re.escape(page), line):
                    continue  # the example's own docs (support-bot/docs/...), not the site
                links.append((f"{path.relative_to(ROOT)}:{n}", page, anchor))
    return links


def link_problem(site: Path, page: str, anchor: str) -> str | None:
    html = site / page.removesuffix(".md").removesuffix("index") / "index.html"
    if not html.is_file():  # a page of docs/, or one the reference hook writes
        return f"no page docs/{page}"
    if anchor and f'id="{anchor}"' not in html.read_text():
        return f"docs/{page} has no section #{anchor}"
    return None


def test_every_docs_page_the_code_points_at_exists(site: Path) -> None:
    links = code_doc_links()
    assert len(links) >= 10
    problems = {w: why for w, page, anchor in links if (why := link_problem(site, page, anchor))}
    assert problems == {}
    assert link_problem(site, "guides/gate.md", "no-such-section") is not None
    assert link_problem(site, "guides/no-such-page.md", "") is not None
    assert link_problem(site, "reference/config.md", "training-recipe") is None


def test_no_message_points_at_a_readme_heading() -> None:
    # The README is one screen: its headings are not a place to send a user.
    found = []
    for top in CODE:
        for path in (ROOT / top).rglob("*.py"):
            if path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"README[:,]? ['\"]|see the README", line):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == [], "point at a docs page (docs/....md#section) instead"


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
