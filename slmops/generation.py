"""Answers from a base model, optionally with a LoRA adapter, behind one small interface.

`Generator.generate(prompts)` returns the assistant's reply to each chat prompt. Decoding is
greedy, so the same model and prompts give the same replies. `LocalGenerator` runs
transformers + peft in this process, in batches (left-padded, longest prompts together); a
vLLM server is the other implementation once adapters are served.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

Prompt = list[dict[str, str]]


class Generator(Protocol):
    """Replies to chat prompts; `describe()` says what answers them (for the report)."""

    def generate(
        self, prompts: list[Prompt], on_progress: Callable[[int, int], None] | None = None
    ) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalGenerator:
    """A base model (plus an adapter) loaded once, answering in batches with greedy decoding.

    A prompt longer than the model's window keeps its start (the system prompt) and its end
    (the question and the assistant tag); the middle is cut and the reply says how often."""

    def __init__(
        self,
        base: Path | str,
        adapter: Path | str | None = None,
        *,
        max_new_tokens: int = 96,
        batch_size: int = 32,
        batch_tokens: int = 16384,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base, self.adapter = Path(base), Path(adapter) if adapter else None
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.batch_tokens = batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)
        self.tokenizer.padding_side = "left"
        model: Any = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
        if self.adapter is not None:
            import warnings

            from peft import PeftModel

            with warnings.catch_warnings():  # peft calls an API transformers 5 deprecates
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, str(self.adapter))
        self.model = model.eval()
        window = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_prompt_tokens = max(16, window - max_new_tokens)
        self.truncated = 0

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "base": str(self.base),
            "adapter": str(self.adapter) if self.adapter else None,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "prompts_truncated": self.truncated,
        }

    def _encode(self, prompt: Prompt) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
        # verbose=False: over-long prompts are expected here and cut just below.
        ids: list[int] = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > self.max_prompt_tokens:
            self.truncated += 1
            head = self.max_prompt_tokens // 2
            ids = ids[:head] + ids[-(self.max_prompt_tokens - head) :]
        return ids

    def generate(
        self, prompts: list[Prompt], on_progress: Callable[[int, int], None] | None = None
    ) -> list[str]:
        import torch

        encoded = [self._encode(p) for p in prompts]
        replies: list[str] = [""] * len(prompts)
        pad = self.tokenizer.pad_token_id
        done = 0
        for rows in batches([len(e) for e in encoded], self.batch_size, self.batch_tokens):
            width = max(len(encoded[i]) for i in rows)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows])
            mask = torch.tensor(
                [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows]
            )
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, text in zip(rows, texts, strict=True):
                replies[row] = text.strip()
            done += len(rows)
            if on_progress:
                on_progress(done, len(encoded))
        return replies


def batches(lengths: list[int], rows: int, tokens: int) -> list[list[int]]:
    """Indices of prompts grouped into batches, longest first (each batch pads little): at
    most `rows` prompts, and at most `tokens` once padded to the batch's longest, so a few
    very long prompts (a 32k-window model keeps them whole) share a batch with few others
    instead of padding 31 short ones to their length. Every batch holds at least one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < rows and (len(out[-1]) + 1) * lengths[out[-1][0]] <= tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def generate(
    base: Path,
    prompts: list[Prompt],
    *,
    adapter: Path | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 16,
) -> list[str]:
    """The assistant's reply to each prompt (a list of chat messages without the answer)."""
    return LocalGenerator(
        base, adapter, max_new_tokens=max_new_tokens, batch_size=batch_size
    ).generate(prompts)


def json_valid_rate(replies: list[str], required_keys: tuple[str, ...] = ()) -> float:
    """Share of replies that parse as a JSON object holding `required_keys`."""

    def ok(text: str) -> bool:
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and all(k in value for k in required_keys)

    return sum(ok(r) for r in replies) / len(replies) if replies else 0.0


def json_format_scores(
    base: Path,
    adapter: Path,
    prompts: list[Prompt],
    required_keys: tuple[str, ...],
) -> dict[str, float]:
    """Share of answers that are a JSON object with `required_keys`: base alone vs adapter.

    A quick held-out check stored with every adapter; the eval gate judges promotion."""
    if not prompts:
        return {}
    base_rate = json_valid_rate(generate(base, prompts), required_keys)
    tuned_rate = json_valid_rate(generate(base, prompts, adapter=adapter), required_keys)
    return {"json_valid": tuned_rate, "base_json_valid": base_rate, "format_prompts": len(prompts)}
