"""How LocalGenerator groups prompts into batches (no model needed)."""

from __future__ import annotations

from slmops.generation import batches


def test_batches_take_the_longest_first_and_keep_every_prompt_once() -> None:
    lengths = [5, 300, 40, 40, 7, 120]
    got = batches(lengths, rows=4, tokens=10_000)
    assert got == [[1, 5, 2, 3], [4, 0]]  # by length, ties in the callers' order
    assert sorted(i for batch in got for i in batch) == list(range(len(lengths)))


def test_a_few_very_long_prompts_do_not_pad_a_full_batch_to_their_length() -> None:
    # A 32k-window model keeps a 2,854-token adversarial prompt whole: 32 rows padded to it
    # would be 91k tokens of prefill for one batch of mostly short prompts.
    lengths = [2854, 1645, *([300] * 40)]
    got = batches(lengths, rows=32, tokens=16384)
    assert all(len(b) * max(lengths[i] for i in b) <= 16384 for b in got)
    assert got[0] == [0, 1, 2, 3, 4]  # a sixth row padded to 2,854 would pass the budget
    assert [len(b) for b in got] == [5, 32, 5]


def test_a_prompt_longer_than_the_budget_still_gets_a_batch_of_its_own() -> None:
    assert batches([50_000, 10], rows=32, tokens=16384) == [[0], [1]]


def test_short_prompts_fill_batches_by_rows_as_before() -> None:
    # The tiny model's prompts (at most 416 tokens) never reach the token budget.
    lengths = [416] * 70
    assert [len(b) for b in batches(lengths, rows=32, tokens=16384)] == [32, 32, 6]
