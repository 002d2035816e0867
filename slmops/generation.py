"""Answers from a base model, optionally with a LoRA adapter, behind one small interface.

`Generator.generate(prompts)` returns the assistant's reply to each chat prompt. Decoding is
greedy, so the same model and prompts give the same replies. Each reply is a `Reply`: the text,
and whether the token limit stopped it (`cut`) rather than the model. `LocalGenerator` runs
transformers + peft in this process, in batches (left-padded, longest prompts together): bf16
on a GPU when there is one, fp32 on CPU; `slmops.serving.client.VLLMGenerator` asks a vLLM
server. A `GeneratorBackend` builds generators for given weights and says what besides the
weights determines their answers (its `identity`), so stored answers are reused only where
they would be the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from slmops.store.manifest import Manifest

Prompt = list[dict[str, str]]
DEFAULT_MAX_NEW_TOKENS = 96
GeneratorChoice = Literal["auto", "vllm", "transformers"]  # --generator, flow `generator`


class Reply(str):
    """A reply's text; `cut` is True when the token limit ended it, not the model (an answer
    cut mid-JSON is a configuration problem before it is the model's)."""

    cut: bool = False

    def __new__(cls, text: str, cut: bool = False) -> Reply:
        reply = super().__new__(cls, text)
        reply.cut = cut
        return reply


def was_cut(text: str) -> bool:
    """Whether a reply (a `Reply`, or a plain string: never) was cut by the token limit."""
    return bool(getattr(text, "cut", False))


class Generator(Protocol):
    """Replies to chat prompts; `describe()` says what answers them (for the report).
    `max_new_tokens` overrides the generator's own limit for this call."""

    def generate(
        self,
        prompts: list[Prompt],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Weights:
    """What answers: a base model at a revision (checked out at `base_path`), and optionally
    an adapter version (its manifest, and its files in `folder`)."""

    base: str
    revision: str
    base_path: Path
    adapter: Manifest | None = None
    folder: Path | None = None


class GeneratorBackend(Protocol):
    """Builds the generator answering with given weights. `identity()` is everything besides
    the weights that determines a greedy answer (engine, its version, numerics): answers are
    stored and reused under it."""

    name: str

    def identity(self, weights: Weights) -> dict[str, Any]: ...

    def generator(self, weights: Weights) -> Generator: ...


def torch_numerics() -> tuple[str, str]:
    """(device, dtype) the transformers path generates with here: bf16 on a GPU when there is
    one (as the model is served), fp32 on CPU (bf16 matmuls on CPU are slow and inexact)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16"
    return "cpu", "float32"


class TransformersBackend:
    """transformers + peft in this process: the fallback where no vLLM serves the base."""

    name = "transformers"

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size

    def identity(self, weights: Weights) -> dict[str, Any]:
        import peft
        import torch
        import transformers

        device, dtype = torch_numerics()
        return {
            "backend": self.name,
            "device": device,
            "dtype": dtype,
            "libraries": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        }

    def generator(self, weights: Weights) -> Generator:
        return LocalGenerator(weights.base_path, weights.folder, batch_size=self.batch_size)


class LocalGenerator:
    """A base model (plus an adapter) loaded once, answering in batches with greedy decoding.

    A prompt longer than the model's window keeps its start (the system prompt) and its end
    (the question and the assistant tag); the middle is cut and the reply says how often."""

    def __init__(
        self,
        base: Path | str,
        adapter: Path | str | None = None,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 32,
        batch_tokens: int = 16384,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.dtype = torch_numerics()

        self.base, self.adapter = Path(base), Path(adapter) if adapter else None
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.batch_tokens = batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)
        self.tokenizer.padding_side = "left"
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.base, dtype=getattr(torch, self.dtype)
        )
        model = model.to(self.device)
        if self.adapter is not None:
            import warnings

            from peft import PeftModel

            with warnings.catch_warnings():  # peft calls an API transformers 5 deprecates
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, str(self.adapter))
        self.model = model.eval()
        window = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.window = window
        self.truncated = self.cut = 0

    def describe(self) -> dict[str, Any]:
        import transformers

        return {
            "backend": "transformers",
            "version": transformers.__version__,
            "device": self.device,
            "dtype": self.dtype,
            "base": str(self.base),
            "adapter": str(self.adapter) if self.adapter else None,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "prompts_truncated": self.truncated,
            "replies_cut": self.cut,
        }

    def _encode(self, prompt: Prompt, max_new_tokens: int | None = None) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
        # verbose=False: over-long prompts are expected here and cut just below.
        ids: list[int] = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        room = max(16, self.window - (max_new_tokens or self.max_new_tokens))
        if len(ids) > room:
            self.truncated += 1
            head = room // 2
            ids = ids[:head] + ids[-(room - head) :]
        return ids

    def generate(
        self,
        prompts: list[Prompt],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        import torch

        limit = max_new_tokens or self.max_new_tokens
        encoded = [self._encode(p, limit) for p in prompts]
        replies: list[str] = [""] * len(prompts)
        eos = self.tokenizer.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos])
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
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=limit,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=eos,
                ).cpu()
            new = out[:, width:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for row, tokens, text in zip(rows, new.tolist(), texts, strict=True):
                # Cut: the limit reached with no stop token among the new tokens (a finished
                # reply in a batch is padded after its stop token).
                cut = len(tokens) >= limit and not stops.intersection(tokens)
                self.cut += cut
                replies[row] = Reply(text.strip(), cut=cut)
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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
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
