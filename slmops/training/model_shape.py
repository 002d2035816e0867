"""The sizes of a decoder-only transformer that decide its training memory, read from its
config.json (the family's norms and projections included), before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.errors import ConfigError

# Norms per decoder layer and whether q and k are normed too, by model_type, for families that
# differ from Llama's two norms (Gemma 2/3 norm before and after attention and the MLP).
LAYER_NORMS = {
    "gemma2": (4, False),
    "gemma3": (4, True),
    "gemma3_text": (4, True),
    "qwen3": (2, True),
    "qwen3_moe": (2, True),
    "olmo2": (2, True),
}
# Llama-style names; a target the shape does not know is counted as hidden -> hidden.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelShape(BaseModel):
    """The sizes of a decoder-only transformer that decide its training memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    norms: int = Field(2, description="RMSNorms per decoder layer (Llama 2, Gemma 3 4).")
    qk_norm: bool = Field(False, description="q and k are normed per head (Gemma 3, Qwen3).")

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "config.json") -> ModelShape:
        """Read a Hugging Face config (Llama, Mistral, Qwen2, Phi-3 style keys; Gemma 2/3,
        Qwen3 and OLMo2 norms by model_type)."""
        config = config.get("text_config", config)  # multimodal configs nest the LM's
        norms, qk_norm = LAYER_NORMS.get(str(config.get("model_type", "")), (2, False))
        missing = [
            key
            for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
            if not isinstance(config.get(key), int)
        ]
        heads = config.get("num_attention_heads")
        if not isinstance(heads, int):
            missing.append("num_attention_heads")
        if missing:
            raise ConfigError(
                f"{where}: no integer {', '.join(missing)}: the memory plan needs the model's "
                "sizes (a decoder-only transformer's config.json as save_pretrained writes it)"
            )
        hidden, n_heads = int(config["hidden_size"]), int(heads)  # type: ignore[arg-type]
        return cls(
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=n_heads,
            kv_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(config.get("head_dim") or hidden // n_heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            norms=norms,
            qk_norm=qk_norm,
        )

    @classmethod
    def from_pretrained(cls, folder: Path) -> ModelShape:
        """The shape of a save_pretrained folder (reads config.json only), or of a model's
        config.json given as the file itself (any name)."""
        path = Path(folder)
        path = path if path.is_file() else path / "config.json"
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{path} does not exist: give a model folder or its config.json"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_config(config, str(path))

    def projection(self, name: str) -> tuple[int, int]:
        """(in, out) features of one of a layer's linear projections."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }.get(name, (h, h))

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' projections (what QLoRA quantizes)."""
        return self.layers * sum(a * b for a, b in map(self.projection, PROJECTIONS))

    @property
    def other_params(self) -> int:
        """Embeddings, output head (unless tied) and norms: never quantized."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + head + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params
