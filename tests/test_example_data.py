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


LISTS = """# Doc

## Steps

1. Open **Settings** and enter the domain.
2. Add a CNAME record from that domain to
   `beacon.tidewell.app`.

## What happens

- The subscription runs until the end of the paid period, then the workspace moves to the
  Ripple plan.
- Data is kept.

## Prose first

- A list item.

Prose after the list. More prose.

## Only a table

| a | b |
|---|---|
"""


def test_a_section_answers_with_its_first_sentence_never_a_list_items_number_or_tail() -> None:
    from slmops.rag.docs import section_leads as sections

    assert sections(LISTS) == [
        ("Steps", "Open **Settings** and enter the domain."),
        (
            "What happens",
            "The subscription runs until the end of the paid period, then the workspace "
            "moves to the Ripple plan.",
        ),
        ("Prose first", "Prose after the list."),
    ]
    every = [
        answer
        for path in sorted((EXAMPLE / "docs").rglob("*.md"))
        for _, answer in sections(path.read_text(encoding="utf-8"))
    ]
    assert every and all((len(a) > 20 and a[0].isupper()) or a[0] in "*`" for a in every), [
        a for a in every if len(a) <= 20
    ]


def test_the_tiny_bases_conversations_cite_the_first_passage_and_turn_other_subjects_away() -> None:
    from examples.tiny_base.recipe import CITE_HEAD, OUT_OF_SCOPE, RELABELLED, Chats
    from slmops.suites.prompts import CITE_LIST

    chats = Chats(seed=3)
    every_chunk = {c for chunks in chats.chunks.values() for c in chunks}
    relabelled = 0
    for _ in range(50):
        text = chats.passage()
        passages = text.split("Context:\n", 1)[1].split("\n\nQuestion:")[0].splitlines()
        cited = text.split(f"<|assistant|>\n{CITE_HEAD}", 1)[1].split('"', 1)[0]
        listed = text.split(f"\n{CITE_LIST}", 1)[1].split("<|end|>", 1)[0].split(", ")
        assert len(passages) == 3 and passages[0].startswith(f"[{cited}] ")
        assert listed == [p[1:].split("] ", 1)[0] for p in passages]
        # the first label is the passage's own doc, or (RELABELLED) another doc's: copy it
        first = passages[0].split("] ", 1)[1][:60]
        relabelled += not any(first in " ".join(c.split()) for c in chats.chunks[cited])
        # each passage is the start of a chunk the product's ingestion makes
        assert all(
            any(" ".join(c.split()).startswith(p.split("] ", 1)[1]) for c in every_chunk)
            for p in passages
        )
    assert 0.1 * 50 <= relabelled <= 0.6 * 50 and 0 < RELABELLED < 1, relabelled
    titles = {title.lower() for _, _, _, title in chats.sections}
    plain = [chats.plain() for _ in range(400)]
    away = [t for t in plain if OUT_OF_SCOPE in t]
    assert 100 < len(away) < 300
    assert not [t for t in away if any(title in t.lower() for title in titles)]
    answered = [t for t in plain if OUT_OF_SCOPE not in t]
    assert all(any(title in t.lower() for title in titles) for t in answered)
