"""Run a base model (optionally with a LoRA adapter) locally on chat prompts.

Used to measure what training changed, e.g. the share of answers that are valid JSON, before
any server is involved. Greedy decoding, so results repeat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def generate(
    base: Path,
    prompts: list[list[dict[str, str]]],
    *,
    adapter: Path | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 16,
) -> list[str]:
    """The assistant's reply to each prompt (a list of chat messages without the answer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    replies = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return replies


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
    prompts: list[list[dict[str, str]]],
    required_keys: tuple[str, ...],
) -> dict[str, float]:
    """Share of answers that are a JSON object with `required_keys`: base alone vs adapter.

    A quick held-out check stored with every adapter; the eval gate judges promotion."""
    if not prompts:
        return {}
    base_rate = json_valid_rate(generate(base, prompts), required_keys)
    tuned_rate = json_valid_rate(generate(base, prompts, adapter=adapter), required_keys)
    return {"json_valid": tuned_rate, "base_json_valid": base_rate, "format_prompts": len(prompts)}
