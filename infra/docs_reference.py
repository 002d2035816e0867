"""The docs site's reference pages, written from the code at build time (an MkDocs hook:
mkdocs.yml `hooks:`), so they never drift from it:

- `reference/cli.md`: every `slmops` command, its arguments and options, from the Typer app;
- `reference/config.md`: every field of the files and settings a user writes (training recipe,
  eval suites, gate policy, serving config, ingestion, assess task, environment), with its
  type, default and description, from the pydantic models;
- `reference/deployments.md`: every deployment of prefect.yaml, its trigger and parameters.

`python -m infra.docs_reference DIR` writes the same pages into DIR (to read them without
MkDocs).
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # MkDocs loads this file by path: `slmops stack` needs infra/
    sys.path.insert(0, str(ROOT))

# (title, module:class, what file or setting it is, the page that explains it)
CONFIG_MODELS = [
    (
        "Training recipe",
        "slmops.training.recipe:TrainConfig",
        "a recipe YAML (`--recipe`, the refine-tune deployments' `recipe`)",
        "../guides/training.md",
    ),
    (
        "Training data",
        "slmops.training.datasets:DatasetConfig",
        "how a training JSONL is read and split",
        "../guides/training.md",
    ),
    (
        "Eval suites",
        "slmops.suites.spec:SuitesConfig",
        "`evals/suites.yaml`: the suites a gate runs",
        "../guides/gate.md",
    ),
    ("One suite", "slmops.suites.spec:SuiteSpec", "an entry of `suites:`", "../guides/gate.md"),
    (
        "Style rules",
        "slmops.suites.spec:StyleRules",
        "a suite's `style:` rules",
        "../guides/gate.md",
    ),
    (
        "Gate policy",
        "slmops.evaluation.policy:GatePolicy",
        "`evals/policy.yaml`: floors, margins, statistics, auto-promotion",
        "../guides/gate.md",
    ),
    (
        "Serving config",
        "slmops.serving.client:ServingConfig",
        "`SLMOPS_SERVING`: the replicas, what they serve, the router",
        "../guides/serving.md",
    ),
    (
        "A replica",
        "slmops.serving.client:Replica",
        "an entry of `replicas:`",
        "../guides/serving.md",
    ),
    (
        "The router",
        "slmops.serving.client:RouterSettings",
        "the serving config's `router:`",
        "../guides/serving.md",
    ),
    (
        "Ingestion",
        "slmops.rag.ingest_config:IngestConfig",
        "`slmops ingest` options and the ingest-docs deployments' `config`",
        "../guides/ingest.md",
    ),
    (
        "Assess task",
        "slmops.assess.task:AssessTask",
        "the YAML `slmops assess` reads",
        "../guides/assess.md",
    ),
    ("Prices", "slmops.assess.task:Prices", "an assess task's `prices:`", "../guides/assess.md"),
    (
        "Environment",
        "slmops.config:Settings",
        "`SLMOPS_<FIELD>` environment variables, or a `.env` file",
        "settings.md",
    ),
]


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    text = name if name and not getattr(annotation, "__args__", None) else str(annotation)
    text = text.replace("typing.", "").replace("NoneType", "None")
    return text.replace(" | ", " or ")  # a pipe would end the table's cell


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, default=str)
    except TypeError:
        text = str(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def config_page() -> str:
    out = [
        "# Configuration reference",
        "",
        "Every field of the files and settings slmops reads, written from the pydantic models "
        "that validate them (`infra/docs_reference.py`): a field not listed here is refused "
        "where the model forbids extra fields, with the file and the field named.",
        "",
    ]
    for title, target, what, guide in CONFIG_MODELS:
        module, _, name = target.partition(":")
        model = getattr(importlib.import_module(module), name)
        doc = " ".join((model.__doc__ or "").split("\n\n")[0].split())
        prefix = "SLMOPS_" if name == "Settings" else ""
        out += [
            f"## {title}",
            "",
            f"`{name}` ({what}; `{module}`). {doc} Explained in [the guide]({guide}).",
            "",
            "| field | type | default | description |",
            "|---|---|---|---|",
        ]
        for field_name, field in model.model_fields.items():
            shown = (prefix + field_name).upper() if prefix else field_name
            out.append(
                f"| `{shown}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} "
                f"| {_cell(field.description or '')} |"
            )
        out.append("")
    return "\n".join(out)


def _cli_command(command: Any, path: list[str], out: list[str]) -> None:
    # Typer ships its own click: its classes are told by what they have, not isinstance.
    name = " ".join(path)
    if hasattr(command, "commands"):
        if len(path) > 1:
            out += [f"## {name}", "", _cell(command.help or ""), ""]
        for sub in sorted(command.commands):
            _cli_command(command.commands[sub], [*path, sub], out)
        return
    args = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    usage = " ".join([name] + [p.name.upper() for p in args] + ["[OPTIONS]"] * bool(options))
    help_text = (command.help or "").strip().split("\n\n")
    level = "#" * min(len(path), 3)
    out += [f"{level} {name}", "", f"```text\n{usage}\n```", "", _cell(help_text[0]), ""]
    for para in help_text[1:]:
        if para.startswith(("    ", "\b")):  # an indented example, or click's verbatim block
            out += ["```text", textwrap.dedent(para.removeprefix("\b\n")).strip(), "```", ""]
        else:
            out += [_cell(para), ""]
    if args:
        out += ["| argument | required | description |", "|---|---|---|"]
        out += [
            f"| `{p.name.upper()}` | {'yes' if p.required else 'no'} | "
            f"{_cell(getattr(p, 'help', None) or '')} |"
            for p in args
        ]
        out.append("")
    if options:
        out += ["| option | default | description |", "|---|---|---|"]
        for p in options:
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = "" if p.default is None or (p.is_flag and not p.default) else f"`{p.default}`"
            out.append(f"| {flags} | {_cell(default)} | {_cell(p.help or '')} |")
        out.append("")


def cli_page() -> str:
    import typer.main

    from slmops.cli import app

    out = [
        "# Command line reference",
        "",
        "Every `slmops` command and option, written from the Typer app itself "
        "(`infra/docs_reference.py`); `slmops COMMAND --help` prints the same. Errors print as "
        "one line saying what is wrong and what to do, with exit status 2. `slmops stack` is "
        "there inside a checkout (the local stack: [operations](../operations/local-stack.md)).",
        "",
    ]
    _cli_command(typer.main.get_command(app), ["slmops"], out)
    return "\n".join(out)


def _trigger(deployment: dict[str, Any]) -> str:
    parts = []
    for schedule in deployment.get("schedules") or []:
        if "cron" in schedule:
            parts.append(f"cron `{schedule['cron']}` ({schedule.get('timezone', 'UTC')})")
        elif "interval" in schedule:
            parts.append(f"every {schedule['interval']} s")
    for trigger in deployment.get("triggers") or []:
        events = trigger.get("expect") or trigger.get("match", {}).get("prefect.resource.id")
        parts.append(f"event `{', '.join(events) if isinstance(events, list) else events}`")
    return "; ".join([*parts, "manual"])


def deployments_page() -> str:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    out = [
        "# Deployments reference",
        "",
        "Every deployment of `prefect.yaml` (written from it by `infra/docs_reference.py`): "
        "`prefect --no-prompt deploy --all` creates them; `prefect deployment run "
        "'FLOW/NAME'` runs one, or the Prefect UI's *Run* form, which describes each "
        "parameter (flow parameters are pydantic models with a description on every field). "
        "Parameters not set here take the flow's defaults.",
        "",
        "| deployment | entrypoint | work pool | runs on | description |",
        "|---|---|---|---|---|",
    ]
    detail: list[str] = []
    for d in spec["deployments"]:
        flow_file, _, _func = d["entrypoint"].partition(":")
        flow_name = _flow_name(ROOT / flow_file)
        full = f"{flow_name}/{d['name']}"
        pool = (d.get("work_pool") or {}).get("name", "")
        out.append(
            f"| `{full}` | `{d['entrypoint']}` | `{_cell(pool)}` | {_trigger(d)} "
            f"| {_cell(d.get('description', ''))} |"
        )
        params = _flat(d.get("parameters") or {})
        if params:
            detail += [f"## {full}", "", "| parameter | value |", "|---|---|"]
            detail += [
                f"| `{k}` | `{_cell(json.dumps(v, default=str))}` |" for k, v in params.items()
            ]
            detail.append("")
    return "\n".join([*out, "", *detail])


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`params.config.max_steps`-style keys for nested parameters (the flows take one model)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _flow_name(path: Path) -> str:
    import re

    found = re.search(r'@flow\(\s*name="([^"]+)"', path.read_text())
    return found.group(1) if found else path.stem.replace("_", "-")


PAGES = {
    "reference/cli.md": cli_page,
    "reference/config.md": config_page,
    "reference/deployments.md": deployments_page,
}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site."""
    from mkdocs.structure.files import File

    for path, page in PAGES.items():
        files.append(File.generated(config, path, content=page()))
    return files


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "site-reference")
    for path, page in PAGES.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(page())
        print(out / path)


if __name__ == "__main__":
    main()
