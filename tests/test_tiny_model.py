"""The tiny base's cache: one build of a key at a time on a machine, and a build that dies
leaves nothing a second process would take for the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_second_process_waits_for_the_build_in_progress_and_takes_over_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLMOPS_TINY_MODEL_CACHE", str(tmp_path))
    from examples.tiny_base import build as tiny_model

    one, two = (tiny_model.cache_path(seed=s, pretrain_steps=2) for s in (1, 2))
    code = (
        "from examples.tiny_base.build import cached_build\n"
        "for seed in (1, 2):\n"
        "    print('found', cached_build(seed=seed, pretrain_steps=2), flush=True)\n"
    )
    out: list[str] = []

    def until(marker: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if marker in line:
                return
        pytest.fail(f"the second process never said {marker!r}:\n{''.join(out)}")

    with tiny_model._build_lock(two):
        with tiny_model._build_lock(one):
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            until(f"build in progress (pid {os.getpid()}) into {one}")
            # This process builds `one` while the other waits for it.
            tiny_model._build(one, seed=1, layers=4, hidden=256, steps=2)
        until(f"found {one}")  # found, not built again
        until(f"into {two}")  # and waits for `two`
    # `two` released without a build, as by a build that died: the waiting process builds it.
    rest, _ = proc.communicate(timeout=300)
    text = "".join(out) + rest
    assert proc.returncode == 0, text
    assert f"found {one}" in text and f"found {two}" in text, text
    building = [line for line in text.splitlines() if line.startswith("building the tiny base")]
    assert len(building) == 1 and str(two) in building[0], text
    assert tiny_model.is_built(one) and tiny_model.is_built(two)


def test_a_change_to_how_the_docs_are_cut_is_a_new_base(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pretraining draws from every section's lead and every chunk: a change to one that
    # the key's sampled conversations happen not to show (the product's section_leads or
    # chunking cut differently) must not find a base built from the old ones.
    from examples.tiny_base import build as tiny_model
    from examples.tiny_base import recipe as tiny_weights
    from slmops.rag import docs

    key = tiny_model.cache_path().name
    chats = tiny_weights.Chats(1)  # the key's own draws (seed 1)
    drawn = "".join([chats.passage() for _ in range(20)] + [chats.plain() for _ in range(20)])
    lead = next(answer for _, _, answer, _ in chats.sections if answer not in drawn)
    leads = docs.section_leads
    monkeypatch.setattr(
        docs,
        "section_leads",
        lambda text: [(h, a + " Now." if a == lead else a) for h, a in leads(text)],
    )
    assert tiny_model.cache_path().name != key
    monkeypatch.undo()
    assert tiny_model.cache_path().name == key
    chunk = next(c for _, c in chats.all_chunks if c[:40] not in drawn)
    chunks = {p: [c + " Now." if c == chunk else c for c in cs] for p, cs in chats.chunks.items()}
    monkeypatch.setattr(tiny_weights, "_chunks", lambda: chunks)
    assert tiny_model.cache_path().name != key


def test_the_base_is_keyed_by_its_settings_and_recipe_not_its_source_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A changed setting, or a recipe change marked by its version, is a new base; the
    recipe's source text is not in the key, so editing a comment costs no rebuild anywhere."""
    from examples.tiny_base import build as tiny_model
    from examples.tiny_base import recipe as tiny_weights

    key = tiny_model.cache_path().name
    monkeypatch.setattr(tiny_weights, "RECIPE", tiny_weights.RECIPE + 1)
    assert tiny_model.cache_path().name != key
    monkeypatch.undo()
    monkeypatch.setitem(tiny_weights.PRETRAIN, "lr", tiny_weights.PRETRAIN["lr"] / 2)
    assert tiny_model.cache_path().name != key


def test_the_shipped_base_is_the_recipes_build_and_a_fresh_machine_copies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first run copies the shipped default build instead of pretraining for 11 minutes; a
    # recipe (or docs, or torch) changed without shipping its build again is caught here.
    from examples.tiny_base import build as tiny_model

    monkeypatch.setenv("SLMOPS_TINY_MODEL_CACHE", str(tmp_path))
    key = tiny_model.cache_path(**tiny_model.DEFAULT).name
    assert tiny_model.shipped_key() == key, (
        f"examples/tiny_base/release holds build {tiny_model.shipped_key()}, the recipe's is "
        f"{key}: run `python -m examples.tiny_base.build --ship` and commit the release"
    )
    cached = tiny_model.cached_build(**tiny_model.DEFAULT)
    shipped = tiny_model.RELEASE / "model.safetensors"
    assert (cached / "model.safetensors").read_bytes() == shipped.read_bytes()
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        p.name for p in tiny_model.RELEASE.iterdir() if p.name != "KEY"
    )
    # Another seed is another model: never the shipped one.
    assert tiny_model.cache_path(seed=2).name != key
