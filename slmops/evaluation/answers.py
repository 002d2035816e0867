"""Answers kept in the store by everything that determines them, so a model is not asked the
same question twice.

A gate answers every case with the candidate and with the champion. The champion's weights
do not change between gates, so with greedy decoding its answers to the same prompts (the
same cases, the same retrieved passages) do not either: regenerating them doubles every gate
for nothing. `StoredAnswers` wraps a generator: it looks each prompt up under the generator's
fingerprint, asks the model only for the prompts it has no answer to, and stores those.

The fingerprint covers what can change an answer: the base model and its revision, the
adapter's files (by sha256: two versions with the same weights share answers), greedy
decoding, and the backend's identity (transformers: torch, transformers and peft versions,
device and dtype; vLLM: its version and the served dtype): answers from one engine are never
reused as another's. The prompt's key is the sha256 of its messages as the model sees them
(retrieved passages included) and the token limit; whether the limit cut an answer is stored
with it. Greedy answers do not depend on how prompts are batched (checked on the example's
355 cases at batch sizes 8, 16, 32 and 128: the same answers).

Layout: `answers/<fingerprint>/<sha16>.json`, immutable objects like everything else in the
store; each holds the answers one run generated. Readers take the union. A missing, partial or
unreadable object costs only a regeneration, never a wrong answer: the object's own sha256 is
checked by the store, and each answer is tied to its prompt's hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from slmops.errors import ObjectExistsError, SlmopsError
from slmops.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    Generator,
    GeneratorBackend,
    Prompt,
    Reply,
    Weights,
    was_cut,
)
from slmops.store.base import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "answers"


def prompt_key(prompt: Prompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """The key of one answer: the prompt's messages as the model sees them, and the token
    limit it answered under."""
    doc = prompt if max_new_tokens == DEFAULT_MAX_NEW_TOKENS else [prompt, max_new_tokens]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(
    *,
    base: str,
    base_revision: str,
    adapter_files: Iterable[tuple[str, str]] | None,
    identity: dict[str, Any],
) -> str:
    """What determines a greedy answer besides the prompt and its token limit, hashed.
    `adapter_files`: (path, sha256) pairs, or None for the base model alone; `identity`: the
    backend's (`GeneratorBackend.identity()`: engine, version, numerics)."""
    doc = {
        "base": base,
        "base_revision": base_revision,
        "adapter": sorted(adapter_files) if adapter_files is not None else None,
        "decoding": "greedy",
        **identity,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class StoredAnswers:
    """A generator that answers from the store what it was asked before under the same
    fingerprint, and asks the model (built only if needed) for the rest."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        build: Callable[[], Generator],
        describe: dict[str, Any],
    ):
        self.store, self.key, self._build = store, key, build
        self._describe = describe
        self._inner: Generator | None = None
        self.reused = self.generated = 0

    @property
    def prefix(self) -> str:
        return f"{PREFIX}/{self.key}/"

    def known(self) -> dict[str, str]:
        """Every stored answer under this fingerprint: prompt hash -> answer (a `Reply`)."""
        found: dict[str, str] = {}
        try:
            objects = list(self.store.list_objects(self.prefix))
            for obj in objects:
                try:
                    doc = json.loads(self.store.get_bytes(obj.key))
                    answers, cut = doc["answers"], set(doc.get("cut") or [])
                    if not isinstance(answers, dict):
                        raise TypeError(f"answers is a {type(answers).__name__}, not a mapping")
                    found.update(
                        {k: Reply(v, k in cut) for k, v in answers.items() if isinstance(v, str)}
                    )
                except (SlmopsError, ValueError, KeyError, TypeError) as exc:
                    log.warning("stored answers %s unreadable, ignored: %s", obj.key, exc)
        except SlmopsError as exc:  # the store is down: answer everything afresh
            log.warning("stored answers under %s not listed: %s", self.prefix, exc)
        return found

    def generate(
        self,
        prompts: list[Prompt],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        limit = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        keys = [prompt_key(p, limit) for p in prompts]
        known = self.known()
        todo: dict[str, Prompt] = {}
        for key, prompt in zip(keys, prompts, strict=True):
            if key not in known:
                todo.setdefault(key, prompt)
        self.reused = sum(1 for k in keys if k in known)
        self.generated = len(prompts) - self.reused
        if todo:
            if self._inner is None:
                self._inner = self._build()
            offset = len(prompts) - len(todo)

            def progress(done: int, of: int) -> None:
                if on_progress:
                    on_progress(offset + done, len(prompts))

            answers = self._inner.generate(list(todo.values()), progress, max_new_tokens=limit)
            new = dict(zip(todo, answers, strict=True))
            self._save(new)
            known.update(new)
        elif on_progress:
            on_progress(len(prompts), len(prompts))
        return [known[k] for k in keys]

    def _save(self, answers: dict[str, str]) -> None:
        doc = {
            "fingerprint": self._describe,
            "answers": answers,
            "cut": sorted(k for k, v in answers.items() if was_cut(v)),
        }
        data = json.dumps(doc, sort_keys=True)
        name = hashlib.sha256(data.encode()).hexdigest()[:16]
        try:
            self.store.put_bytes(f"{self.prefix}{name}.json", data.encode())
        except ObjectExistsError:
            pass  # the same answers, stored by a run before
        except SlmopsError as exc:  # a cache: the gate goes on without it
            log.warning("answers not stored under %s: %s", self.prefix, exc)

    def describe(self) -> dict[str, Any]:
        inner = self._inner.describe() if self._inner is not None else {}
        return {
            **self._describe,
            **inner,
            "answers_reused": self.reused,
            "answers_generated": self.generated,
            "stored_answers": f"{self.store.uri}/{self.prefix}",
        }


def stored_answers(
    store: ObjectStore, backend: GeneratorBackend, weights: Weights
) -> StoredAnswers:
    """`backend`'s answers with `weights`, reusing what the same weights answered on the same
    backend before (the generator is built only if some prompt has no stored answer)."""
    files = None if weights.adapter is None else [(f.path, f.sha256) for f in weights.adapter.files]
    identity = backend.identity(weights)
    key = fingerprint(
        base=weights.base, base_revision=weights.revision, adapter_files=files, identity=identity
    )
    describe = {
        **identity,
        "base": str(weights.base_path),
        "adapter": str(weights.folder) if weights.folder else None,
        "decoding": "greedy",
    }
    return StoredAnswers(store, key, lambda: backend.generator(weights), describe)
