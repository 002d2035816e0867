"""How a case becomes a prompt (a knowledge case with the chunks retrieval returned put before
its question) and how a list of prompts is answered, each under its suite's token limit."""

from __future__ import annotations

from collections.abc import Callable

from slmops.generation import Generator, Prompt

# (index, query, k, min_similarity) -> [(source, text)]; [] when nothing is near enough
Retrieve = Callable[[str, str, int, float | None], list[tuple[str, str]]]

CITE_LIST = "Sources you can cite: "  # with_context: what follows the question


def with_context(messages: Prompt, hits: list[tuple[str, str]], chars: int | None = None) -> Prompt:
    """The prompt with retrieved chunks ([source] text, the first `chars` characters of each,
    or all of it) put before the user's question, and after it the list of the chunks' sources
    in the order retrieved (CITE_LIST): the docs a reply may cite, where a model reads them
    last, just before it writes its own sources. The question alone when there are none."""
    if not hits:
        return list(messages)
    question = messages[-1]["content"]
    context = "\n".join(f"[{src}] {' '.join(text.split())[:chars]}" for src, text in hits)
    cite = ", ".join(src for src, _ in hits)
    user = {
        "role": "user",
        "content": f"Context:\n{context}\n\nQuestion: {question}\n{CITE_LIST}{cite}",
    }
    return [*messages[:-1], user]


def answer_all(
    generator: Generator,
    prompts: list[Prompt],
    limits: list[int],
    on_progress: Callable[[int, int], None] | None,
) -> list[str]:
    """Every prompt answered under its own token limit (one call per limit), in order."""
    groups: dict[int, list[int]] = {}
    for i, limit in enumerate(limits):
        groups.setdefault(limit, []).append(i)
    answers: list[str] = [""] * len(prompts)
    if on_progress is not None:
        on_progress(0, len(prompts))
    offset = 0
    for limit, rows in sorted(groups.items()):

        def progress(done: int, of: int, offset: int = offset) -> None:
            if on_progress is not None:
                on_progress(offset + done, len(prompts))

        got = generator.generate(
            [prompts[i] for i in rows],
            progress if on_progress is not None else None,
            max_new_tokens=limit,
        )
        for i, answer in zip(rows, got, strict=True):
            answers[i] = answer
        offset += len(rows)
    return answers
