"""Stored answers: the same weights are not asked the same question twice, and nothing in the
store can make an answer wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from slmops.evaluation.answers import StoredAnswers, fingerprint, prompt_key
from slmops.generation import Prompt, Reply, was_cut
from slmops.store.local import LocalStore


class Counting:
    """A model stand-in that answers with the question, and counts what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def generate(
        self,
        prompts: list[Prompt],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        self.asked += [p[-1]["content"] for p in prompts]
        if on_progress:
            on_progress(len(prompts), len(prompts))
        return [f"answer to {p[-1]['content']}" for p in prompts]

    def describe(self) -> dict[str, str]:
        return {"backend": "counting"}


def ask(*questions: str) -> list[Prompt]:
    return [[{"role": "user", "content": q}] for q in questions]


def stored(store: LocalStore, model: Counting, key: str = "k" * 32) -> StoredAnswers:
    return StoredAnswers(store, key, lambda: model, {"backend": "counting"})


def test_answers_are_generated_once_and_reused_in_the_callers_order(tmp_path: Path) -> None:
    store, model = LocalStore(tmp_path), Counting()
    first = stored(store, model).generate(ask("a", "b", "a"))
    assert first == ["answer to a", "answer to b", "answer to a"]
    assert model.asked == ["a", "b"]  # a repeated prompt is asked once

    again = stored(store, model)
    seen: list[tuple[int, int]] = []
    assert again.generate(ask("c", "b", "a"), lambda d, n: seen.append((d, n))) == [
        "answer to c",
        "answer to b",
        "answer to a",
    ]
    assert model.asked == ["a", "b", "c"]  # only the new prompt
    assert (again.reused, again.generated) == (2, 1)
    assert seen[-1] == (3, 3)
    described = again.describe()
    assert described["answers_reused"] == 2 and described["answers_generated"] == 1

    everything = stored(store, model)
    everything.generate(ask("a", "b", "c"))
    assert model.asked == ["a", "b", "c"] and everything.reused == 3


def test_a_model_is_not_even_loaded_when_every_answer_is_stored(tmp_path: Path) -> None:
    store, model = LocalStore(tmp_path), Counting()
    stored(store, model).generate(ask("a"))

    def never() -> Counting:
        raise AssertionError("the model was loaded")

    assert StoredAnswers(store, "k" * 32, never, {}).generate(ask("a")) == ["answer to a"]


def test_another_fingerprint_shares_nothing(tmp_path: Path) -> None:
    store, model = LocalStore(tmp_path), Counting()
    stored(store, model, "1" * 32).generate(ask("a"))
    stored(store, model, "2" * 32).generate(ask("a"))
    assert model.asked == ["a", "a"]


def test_an_unreadable_stored_object_costs_a_regeneration_not_a_wrong_answer(
    tmp_path: Path,
) -> None:
    store, model = LocalStore(tmp_path), Counting()
    stored(store, model).generate(ask("a"))
    store.put_bytes(f"answers/{'k' * 32}/broken.json", b"{not json")
    store.put_bytes(f"answers/{'k' * 32}/wrong-shape.json", b'{"answers": ["x"]}')
    assert stored(store, model).generate(ask("a", "b")) == ["answer to a", "answer to b"]
    assert model.asked == ["a", "b"]


def test_the_fingerprint_follows_what_changes_an_answer() -> None:
    files = [("adapter_model.safetensors", "1" * 64), ("adapter_config.json", "2" * 64)]
    hf = {"backend": "transformers", "dtype": "float32", "libraries": {"torch": "2.13.0"}}
    vllm = {"backend": "vllm", "version": "0.32.0", "dtype": "float32"}
    same = fingerprint(base="m", base_revision="r1", adapter_files=files, identity=hf)
    assert same == fingerprint(
        base="m", base_revision="r1", adapter_files=list(reversed(files)), identity=dict(hf)
    )
    changed = [
        fingerprint(base="m", base_revision="r2", adapter_files=files, identity=hf),
        fingerprint(base="m", base_revision="r1", adapter_files=files[:1], identity=hf),
        fingerprint(base="m", base_revision="r1", adapter_files=None, identity=hf),
        fingerprint(base="n", base_revision="r1", adapter_files=files, identity=hf),
        # another engine, another engine version, other numerics: never each other's answers
        fingerprint(base="m", base_revision="r1", adapter_files=files, identity=vllm),
        fingerprint(
            base="m",
            base_revision="r1",
            adapter_files=files,
            identity={**vllm, "version": "0.33.0"},
        ),
        fingerprint(
            base="m",
            base_revision="r1",
            adapter_files=files,
            identity={**vllm, "dtype": "bfloat16"},
        ),
    ]
    assert same not in changed and len(set(changed)) == len(changed)


def test_an_answer_is_kept_per_token_limit_with_whether_the_limit_cut_it(
    tmp_path: Path,
) -> None:
    class Cutting(Counting):
        def generate(
            self,
            prompts: list[Prompt],
            on_progress: Callable[[int, int], None] | None = None,
            *,
            max_new_tokens: int | None = None,
        ) -> list[str]:
            texts = super().generate(prompts, on_progress)
            return [Reply(t, cut=(max_new_tokens or 96) < 50) for t in texts]

    store, model = LocalStore(tmp_path), Cutting()
    short = stored(store, model).generate(ask("a"), max_new_tokens=16)
    assert was_cut(short[0])
    longer = stored(store, model).generate(ask("a"), max_new_tokens=256)
    assert model.asked == ["a", "a"]  # another limit: asked again
    assert not was_cut(longer[0])
    again = stored(store, model).generate(ask("a"), max_new_tokens=16)
    assert model.asked == ["a", "a"] and was_cut(again[0])  # the cut is stored with the answer


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (ask("a"), ask("b")),
        ([{"role": "system", "content": "x"}, {"role": "user", "content": "a"}], ask("a")),
    ],
)
def test_prompts_that_differ_anywhere_have_different_keys(a: Prompt, b: Prompt) -> None:
    assert prompt_key(a) != prompt_key(b)
