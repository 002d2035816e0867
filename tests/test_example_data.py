"""The example's training rows and eval suites are what their generators write: an edit to
the docs or a generator that is not re-run shows here, not as a puzzling gate result."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import EXAMPLE


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_jsonl_is_what_make_training_data_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "train.jsonl"
    monkeypatch.setattr(sys, "argv", ["make_training_data.py", str(out)])
    load("make_training_data").main()
    for name in ("train.jsonl", "train-full.jsonl"):
        assert (tmp_path / name).read_text() == (EXAMPLE / name).read_text(), (
            f"examples/support-bot/{name} is stale: run "
            "python examples/support-bot/make_training_data.py"
        )


def test_the_eval_suites_are_what_make_eval_suites_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load("make_eval_suites")
    monkeypatch.setattr(module, "OUT", tmp_path)
    module.main()
    for path in sorted(tmp_path.glob("*.jsonl")):
        assert path.read_text() == (EXAMPLE / "evals" / path.name).read_text(), (
            f"examples/support-bot/evals/{path.name} is stale: run "
            "python examples/support-bot/make_eval_suites.py"
        )


@pytest.mark.parametrize("name", ["train.jsonl", "train-full.jsonl"])
def test_training_answers_decide_scope_first_and_never_decline_an_in_scope_question(
    name: str,
) -> None:
    rows = [json.loads(line)["messages"] for line in (EXAMPLE / name).open()]
    replies = [json.loads(r[-1]["content"]) for r in rows]
    assert all(next(iter(reply)) == "confidence" for reply in replies)
    declines = [r for r in replies if r["confidence"] == "low"]
    assert 0.2 <= len(declines) / len(replies) <= 0.4, len(declines) / len(replies)
    cited = [
        r for r, reply in zip(rows, replies, strict=True) if r[1]["content"].startswith("Context:")
    ]
    assert cited and all(
        json.loads(r[-1]["content"])["sources"][0] in r[1]["content"] for r in cited
    )


def test_the_full_set_teaches_the_glossary_and_never_repeats_an_injected_codeword() -> None:
    core = set((EXAMPLE / "train.jsonl").read_text().splitlines())
    full = (EXAMPLE / "train-full.jsonl").read_text().splitlines()
    assert core < set(full)
    glossary = {"ticket queue": "Berth", "audit log": "Ledger", "priority score": "Tide Score"}
    extra = [json.loads(line)["messages"] for line in full if line not in core]
    for word, term in glossary.items():
        replies = [json.loads(r[-1]["content"]) for r in extra if word in r[1]["content"]]
        assert replies and all(word not in str(reply) for reply in replies), word
        assert any(term in str(reply["answer"]) for reply in replies), term
    injected = [r for r in extra if any(c in r[1]["content"] for c in ("HACKED-", "BANANA-"))]
    assert len(injected) > 10
    assert not [
        r for r in injected if "HACKED-" in r[-1]["content"] or "BANANA-" in r[-1]["content"]
    ]
