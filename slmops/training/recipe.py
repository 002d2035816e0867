"""A training recipe: the hyperparameters of one fine-tuning run (TrainConfig, each field with
what it does and whether it changes the weights), read from a YAML or JSON file with every
problem named by file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from slmops.errors import ConfigError, SlmopsError


class TrainingError(SlmopsError):
    """Training ran but produced nothing usable (e.g. a corrupt adapter)."""


class TrainConfig(BaseModel):
    """Hyperparameters of one fine-tuning run. Same config + base revision + data = same adapter.

    Every field says whether it changes the trained weights (`changes_weights`): only those
    go into the training key, so e.g. a different thread count or price reuses the adapter.
    """

    method: Literal["lora", "qlora", "auto"] = Field(
        "lora",
        description="lora; qlora (4-bit nf4 base via bitsandbytes); auto: lora if the "
        "memory plan finds a way to fit it in the budget, else qlora.",
        json_schema_extra={"changes_weights": True},
    )
    rank: int = Field(
        16,
        ge=1,
        le=256,
        description="LoRA rank r: higher learns more, costs "
        "more memory; vLLM must allow it (--max-lora-rank).",
        json_schema_extra={"changes_weights": True},
    )
    alpha: int = Field(
        32,
        ge=1,
        description="LoRA alpha; the update is scaled by alpha/rank.",
        json_schema_extra={"changes_weights": True},
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="LoRA dropout.",
        json_schema_extra={"changes_weights": True},
    )
    target_modules: str = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' or "
        "a comma-separated list such as 'q_proj,v_proj'.",
        json_schema_extra={"changes_weights": True},
    )
    learning_rate: float = Field(
        3e-3,
        gt=0,
        description="3e-3 suits LoRA on small models; trl's 2e-5 default barely moves them.",
        json_schema_extra={"changes_weights": True},
    )
    max_steps: int = Field(
        150,
        ge=1,
        description="Optimizer steps (the example's recipe: 300 of 4 rows teach the tiny demo "
        "model its job on its pretrained base; real runs usually need more).",
        json_schema_extra={"changes_weights": True},
    )
    warm_start_steps: int | None = Field(
        None,
        ge=1,
        description="Set: a run on a new revision of the champion's base model starts from "
        "the champion adapter's weights (same rank, alpha and target modules) and trains this "
        "many steps instead of max_steps (the example: 80 instead of 300), the learning rate "
        "warming up over the first fifth of them. Unset, or no such champion: from scratch.",
        # Not in the key as a field: a run that warm-starts puts the champion's version and
        # these steps into its training key instead (a cold run's key is left as it was).
        json_schema_extra={"changes_weights": False},
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Rows per step per device (effective batch: batch_size x grad_accum). "
        "The memory plan may split it into micro-batches with more accumulation to fit; "
        "the effective batch stays.",
        json_schema_extra={"changes_weights": True},
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="Steps accumulated per optimizer update.",
        json_schema_extra={"changes_weights": True},
    )
    max_length: int = Field(
        512,
        ge=32,
        description="Longest sequence in tokens; longer rows "
        "are truncated (the dataset check refuses them first).",
        json_schema_extra={"changes_weights": True},
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Steps over which the learning rate rises linearly from 0 to its value.",
        json_schema_extra={"changes_weights": True},
    )
    group_by_length: bool = Field(
        False,
        description="Batch rows of similar length together: far less padding for the same "
        "rows and steps (the example's rows of 94-398 tokens spend half of every random batch "
        "on padding: 1.8x faster on the tiny model), but less varied batches (held-out valid "
        "JSON 0.80 vs 0.97 after 300 steps on the example). Off: random batches.",
        # Added after adapters were trained without it: off, it leaves their keys as they were.
        json_schema_extra={"changes_weights": True, "key_omits_default": True},
    )
    padding_free: bool = Field(
        True,
        description="Lay a step's rows end to end in one sequence, each row's positions "
        "starting at 0 (attention stops at those boundaries), instead of padding each to the "
        "longest: the same loss, no compute on padding (the example's batches are half "
        "padding: 1.5x faster a step on the tiny model). Used only when no row reaches "
        "max_length (padded rows are truncated, these are not). Turn it off for a model whose "
        "attention ignores position ids (linear-attention or convolution layers).",
        # The same weights up to float rounding: not in the key.
        json_schema_extra={"changes_weights": False},
    )
    seed: int = Field(
        42,
        description="Seeds data order, dropout and LoRA init.",
        json_schema_extra={"changes_weights": True},
    )
    save_steps: int = Field(
        50,
        ge=1,
        description="Checkpoint every N steps (to the store).",
        json_schema_extra={"changes_weights": False},
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in backward: far less memory, about a third more "
        "time. Unset: the memory plan turns it on only when the run would not fit without it "
        "(never for the tiny model on CPU; usually for QLoRA of a 7-8B model on a 24 GB card).",
        json_schema_extra={"changes_weights": False},
    )
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="Memory the run may use, in GB (e.g. 22 to leave room on a 24 GB card). "
        "Unset: the GPU's free memory, or the available RAM on CPU. A run whose plan cannot "
        "fit fails before loading the model, naming the setting to change.",
        json_schema_extra={"changes_weights": False},
    )
    liger_kernels: bool | None = Field(
        None,
        description="liger-kernel's fused Triton kernels (GPU only; pip install "
        "'slmops[gpu]'): no logits in memory, ~20% faster QLoRA. Unset: on when installed "
        "and training on a GPU.",
        json_schema_extra={"changes_weights": False},
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch. Unset: SLMOPS_TRAIN_THREADS from the worker's "
        "environment, else the cores this process may use (CPU affinity, capped by a "
        "container's CPU quota). Set fewer on a machine shared with a busy server: extra "
        "threads on a busy core only contend.",
        json_schema_extra={"changes_weights": False},
    )
    gpu_slot: str | None = Field(
        None,
        min_length=1,
        description="A Prefect global concurrency limit guarding a class of GPUs (e.g. "
        "gpu-a100, made with `prefect gcl create gpu-a100 --limit N`): the refine-tune flow "
        "holds one of its slots while it trains, under a lease the server expires if the run "
        "dies, and waits while every slot is taken. Unset: no slot. A name with no limit on "
        "the server fails the run (a typo must not train unguarded).",
        json_schema_extra={"changes_weights": False},
    )
    cpu_hour_usd: float = Field(
        0.05,
        ge=0,
        description="Price of one CPU core-hour, for the cost estimate in the manifest.",
        json_schema_extra={"changes_weights": False},
    )
    gpu_hour_usd: float = Field(
        2.5,
        ge=0,
        description="Price of one GPU-hour, for the cost estimate.",
        json_schema_extra={"changes_weights": False},
    )

    def warm_start_config(self) -> TrainConfig:
        """What a warm start trains with: `warm_start_steps` steps, the learning rate rising
        over the first fifth of them (or `warmup_steps`, if longer). The optimizer starts
        afresh on weights that are already trained, and Adam's first updates move every
        weight by about the learning rate whatever its gradient: at full rate from the first
        step they undo some of what the champion learned (measured on the example: the
        adversarial suite's valid format fell from 0.98 to 0.90 without the warmup and held
        with it, docs/findings/tiny-model.md)."""
        if self.warm_start_steps is None:
            raise ValueError("warm_start_config() needs warm_start_steps")
        steps = self.warm_start_steps
        return self.model_copy(
            update={"max_steps": steps, "warmup_steps": max(self.warmup_steps, -(-steps // 5))}
        )

    def key_fields(self) -> dict[str, Any]:
        """The weight-changing fields as the training key sees them (a field added later is
        left out at its default, so keys made before it existed stay valid)."""
        out = {}
        for name in self.weight_fields():
            info = type(self).model_fields[name]
            extra = info.json_schema_extra or {}
            value = getattr(self, name)
            if extra.get("key_omits_default") and value == info.default:  # type: ignore[union-attr]
                continue
            out[name] = value
        return out

    @classmethod
    def weight_fields(cls) -> list[str]:
        """The fields the trained weights depend on (the training key is built from these)."""
        return [
            name
            for name, info in cls.model_fields.items()
            if (info.json_schema_extra or {}).get("changes_weights", True)  # type: ignore[union-attr]
        ]


def load_recipe(path: str | Path) -> TrainConfig:
    """A training recipe (TrainConfig's fields) from YAML or JSON; every problem names the
    file and the field."""
    import yaml
    from pydantic import ValidationError

    from slmops.errors import validation_problems

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"training recipe {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"training recipe {path} is not valid YAML or JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"training recipe {path}: expected a mapping of settings, e.g. max_steps")
    unknown = sorted(set(raw) - set(TrainConfig.model_fields))
    if unknown:
        raise ConfigError(
            f"training recipe {path}: unknown setting(s) {unknown}; known: "
            f"{', '.join(sorted(TrainConfig.model_fields))} "
            "(docs/reference/config.md#training-recipe)"
        )
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"training recipe {path}: {validation_problems(exc)} "
            "(docs/reference/config.md#training-recipe)"
        ) from None
