"""The memory plan of a fine-tuning run: what fits the budget, decided before the model loads.

From the base model's shape (its config.json, not its weights), the method, the LoRA rank,
the longest training row and the memory budget, `plan_training` picks gradient checkpointing,
the micro-batch and gradient accumulation (the effective batch the config asks for is kept)
and liger kernels (when installed, on a GPU), and `method: auto` picks QLoRA when LoRA would
not fit. A run whose plan cannot fit fails here, naming the knob to turn, instead of running
out of memory after minutes of loading.

The estimate counts what a training step keeps in memory: the frozen base weights (bf16 on a
GPU, fp32 on CPU; nf4 linear layers for QLoRA, the embeddings, head and norms as for LoRA),
the LoRA weights with their gradients and Adam states (fp32, 16 bytes a parameter), the
activations saved for the backward pass (every layer's, or with checkpointing each layer's
input plus one layer recomputed with its gradients) and what the loss holds (trl's fused LM
head, or liger's fused cross-entropy, never materializes the logits). The per-layer
activation count is multiplied by a factor per method and liger setting fitted to peaks
measured on an H200 (1B and 8B Llama shapes, rows of ~1,100 tokens; the figures are in
tests/test_memory_plan.py): the estimate is meant to be slightly high, never low, so that a
plan that fits does fit.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from slmops.errors import ConfigError
from slmops.training.model_shape import PROJECTIONS, ModelShape

if TYPE_CHECKING:
    from slmops.training.recipe import TrainConfig

GB = 1e9
# Of the budget, what the plan may use: the rest is allocator fragmentation and the kernels'
# own scratch space, which a peak reading of allocated memory does not show.
USABLE = 0.9
# On CPU the process itself (torch, transformers, the tokenizer) holds about this much.
CPU_PROCESS_BYTES = 1.5 * GB
# Saved activations per layer, relative to the count in `_layer_bytes_per_token`, by (method,
# liger kernels), fitted to the peaks measured without checkpointing (tests/test_memory_plan.py:
# 0.99 and 0.80 for LoRA, 0.84 and 0.66 for QLoRA), rounded up. liger's RMSNorm and SwiGLU
# keep less than the eager modules; QLoRA's frozen 4-bit projections keep no bf16 weight copy.
ACTIVATION_FACTOR = {
    ("lora", False): 1.02,
    ("lora", True): 0.83,
    ("qlora", False): 0.87,
    ("qlora", True): 0.69,
}
# With checkpointing, the layer being recomputed holds its activations and their gradients:
# this many layers' worth, fitted to the checkpointed peaks in tests/test_memory_plan.py.
RECOMPUTED_LAYER = 1.35
# Relative cost of a step with gradient checkpointing (one more forward pass): measured 1.36x
# for QLoRA on the 8B shape, 1.1-1.34x for LoRA on CPU.
CHECKPOINTING_COST = 0.35
# A micro-batch costs as much as this many tokens' work on top of its tokens (kernel launches,
# and for QLoRA dequantizing every weight once per pass): fitted to QLoRA's 3,530 -> 4,262
# tokens/s from micro-batch 4 to 8 on the 8B shape.
MICRO_BATCH_OVERHEAD_TOKENS = {"lora": 600, "qlora": 2400}
# trl's loss (1.16, pinned) computes log-probabilities in tiles of up to 4,096 tokens x 32,768
# vocabulary columns. On a GPU a Triton kernel folds each tile in place; elsewhere (CPU) torch
# ops do, and the backward holds about this many tile-sized fp32 tensors at once (Gemma 3 270M,
# 262k vocabulary, 4 x 405 tokens on CPU: 1.7 GB over the end of the forward pass, 8 tiles of
# 0.21 GB; with 8,192-column tiles 0.46 GB).
LOSS_TILE = (4096, 32768)
CPU_LOSS_TILES = 8


class PlanError(ConfigError):
    """No setting of the run fits the memory budget; the message names the knob to turn."""


class Estimate(BaseModel):
    """Predicted peak memory of one training step, in GB, by what holds it."""

    weights_gb: float = Field(description="Frozen base weights.")
    trainable_gb: float = Field(description="LoRA weights, their gradients and Adam states.")
    activations_gb: float = Field(description="Saved for backward, plus one layer's work.")
    working_gb: float = Field(0.0, description="One layer's backward work (in activations_gb).")
    logits_gb: float = Field(
        description="What the loss holds (fused LM head: no whole logits; on CPU its tiles)."
    )
    total_gb: float


class Option(BaseModel):
    """One setting the plan considered."""

    gradient_checkpointing: bool
    micro_batch: int
    grad_accum: int
    total_gb: float
    fits: bool
    relative_time: float = Field(description="Predicted time per token, 1.0 = the fastest.")


class MemoryPlan(BaseModel):
    """What a training run will do to fit its memory budget, and why."""

    method: str = Field(description="lora or qlora, as trained.")
    device: str
    budget_gb: float
    budget_source: str = Field(description="max_memory_gb, free GPU memory or available RAM.")
    usable_gb: float = Field(description="The share of the budget the plan may fill.")
    longest_row_tokens: int = Field(description="Longest training row, capped at max_length.")
    effective_batch: int
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    liger_kernels: bool
    estimate: Estimate
    reasons: list[str] = Field(default_factory=list)
    options: list[Option] = Field(default_factory=list)
    measured_peak_gb: float | None = Field(
        None, description="Peak measured by the run (GPU: allocated memory; CPU: process RSS)."
    )


def params_label(params: int) -> str:
    """1.24B, 8.03B; 2.4M for small models."""
    return f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.1f}M"


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def available_ram(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Bytes a new process can have without swapping: Linux's MemAvailable, which counts the
    page cache the kernel reclaims on demand (free pages alone, SC_AVPHYS_PAGES, fall near zero
    after a few GB of file I/O on an idle machine); elsewhere the free pages."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def device_budget(device: str, max_memory_gb: float | None) -> tuple[float, str, list[str]]:
    """(budget in bytes, where it comes from, notes) for training on `device`."""
    notes: list[str] = []
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        available, name = float(free), "free GPU memory"
    else:
        available, name = available_ram(), "available RAM"
    if max_memory_gb is None:
        return available, name, notes
    if max_memory_gb * GB > available:
        notes.append(
            f"max_memory_gb {max_memory_gb:g} is more than the {available / GB:.1f} GB of "
            f"{name}: planned for {available / GB:.1f} GB"
        )
        return available, name, notes
    return max_memory_gb * GB, "max_memory_gb", notes


def _targets(shape: ModelShape, target_modules: str) -> list[str]:
    if target_modules == "all-linear":
        return list(PROJECTIONS)
    return [t.strip() for t in target_modules.split(",") if t.strip()]


def lora_params(shape: ModelShape, rank: int, target_modules: str) -> int:
    """Trainable parameters of a LoRA adapter: r x (in + out) per adapted projection."""
    per_layer = sum(rank * sum(shape.projection(t)) for t in _targets(shape, target_modules))
    return shape.layers * per_layer


def _layer_bytes_per_token(shape: ModelShape, compute: int) -> float:
    """Bytes one decoder layer saves for backward per token: norms keep their input, an fp32
    copy and their output (q and k norms too, where the family has them); attention its input
    cast, q/k/v, their post-RoPE copies and its output; the MLP its input cast, gate, up, the
    activation and the product."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    norms = shape.norms * (2 * compute * h + 4 * h)
    if shape.qk_norm:
        norms += (2 * compute + 4) * (q + kv)
    attention = compute * (h + 2 * (q + 2 * kv) + q)
    mlp = compute * (h + 4 * i)
    return float(norms + attention + mlp)


def estimate_peak(
    shape: ModelShape,
    *,
    method: str,
    device: str,
    rank: int,
    target_modules: str,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    liger: bool,
) -> Estimate:
    """Peak memory of a training step of `micro_batch` rows of `seq_len` tokens."""
    compute = 2 if device == "cuda" else 4  # bf16 on a GPU, fp32 on CPU
    weights: float
    if method == "qlora":
        # nf4 with double-quantized block constants: ~4.13 bits a weight; the rest (embeddings,
        # head, norms) stays in the compute dtype.
        weights = shape.linear_params * 0.516 + shape.other_params * compute
    else:
        weights = shape.params * compute
    trainable = lora_params(shape, rank, target_modules) * 16
    tokens = micro_batch * seq_len
    layer = ACTIVATION_FACTOR.get((method, liger), 1.1) * _layer_bytes_per_token(shape, compute)
    if gradient_checkpointing:  # each layer's input, one layer recomputed + its gradients
        kept = float(tokens * shape.layers * shape.hidden * compute)
        working = RECOMPUTED_LAYER * tokens * layer
    else:
        kept, working = tokens * shape.layers * layer, tokens * layer
    # The loss: trl's SFTTrainer (1.16, pinned) computes it with a fused LM head, and liger with
    # its fused linear cross-entropy, in chunks; neither materializes the logits (a 1B-shape
    # QLoRA step of 8 x 1,100 tokens peaked at 3.0 GB where the bf16 logits alone are 2.3 GB).
    # What stays is the hidden states' gradient in fp32, and on CPU the tiles (LOSS_TILE).
    logits = tokens * shape.hidden * 4
    if device == "cpu":
        rows, columns = min(tokens, LOSS_TILE[0]), min(shape.vocab, LOSS_TILE[1])
        logits += CPU_LOSS_TILES * rows * columns * 4
    overhead = CPU_PROCESS_BYTES if device == "cpu" else 0.0
    # Logits live at the end of the forward pass, one layer's work during backward.
    total = weights + trainable + kept + max(logits, working) + overhead
    return Estimate(
        weights_gb=round(weights / GB, 2),
        trainable_gb=round(trainable / GB, 2),
        activations_gb=round((kept + working) / GB, 2),
        working_gb=round(working / GB, 2),
        logits_gb=round(logits / GB, 2),
        total_gb=round(total / GB, 2),
    )


def _relative_time(method: str, checkpointing: bool, micro_tokens: int) -> float:
    overhead = MICRO_BATCH_OVERHEAD_TOKENS.get(method, 600)
    return (1 + CHECKPOINTING_COST * checkpointing) * (1 + overhead / micro_tokens)


def _micro_batches(batch_size: int, grad_accum: int) -> list[int]:
    """Micro-batch sizes that keep the effective batch: divisors of it, up to batch_size."""
    effective = batch_size * grad_accum
    return [m for m in range(batch_size, 0, -1) if effective % m == 0]


def _options(
    shape: ModelShape,
    method: str,
    device: str,
    rank: int,
    target_modules: str,
    seq_len: int,
    batch_size: int,
    grad_accum: int,
    checkpointing: bool | None,
    liger: bool,
    usable: float,
) -> list[Option]:
    effective = batch_size * grad_accum
    settings = [checkpointing] if checkpointing is not None else [False, True]
    options = []
    for ckpt in settings:
        for micro in _micro_batches(batch_size, grad_accum):
            est = estimate_peak(
                shape,
                method=method,
                device=device,
                rank=rank,
                target_modules=target_modules,
                micro_batch=micro,
                seq_len=seq_len,
                gradient_checkpointing=ckpt,
                liger=liger,
            )
            options.append(
                Option(
                    gradient_checkpointing=ckpt,
                    micro_batch=micro,
                    grad_accum=effective // micro,
                    total_gb=est.total_gb,
                    fits=est.total_gb * GB <= usable,
                    relative_time=_relative_time(method, ckpt, micro * seq_len),
                )
            )
    fastest = min(o.relative_time for o in options)
    for o in options:
        o.relative_time = round(o.relative_time / fastest, 3)
    return options


def plan_training(
    shape: ModelShape,
    *,
    method: Literal["lora", "qlora", "auto"] | str,
    device: str,
    rank: int,
    target_modules: str,
    longest_row: int,
    max_length: int,
    batch_size: int,
    grad_accum: int,
    budget_bytes: float,
    budget_source: str,
    gradient_checkpointing: bool | None = None,
    liger: bool | None = None,
    liger_available: bool = False,
    notes: list[str] | None = None,
) -> MemoryPlan:
    """The fastest setting that fits the budget (see the module docstring); raises PlanError
    naming the knob to turn when none does. A setting given explicitly is kept as given."""
    seq_len = max(1, min(longest_row, max_length))
    reasons = list(notes or [])
    if liger is None:
        use_liger = device == "cuda" and liger_available
        if device == "cuda" and not liger_available:
            reasons.append(
                "liger kernels not installed (pip install 'slmops[gpu]'): norms and MLP "
                "activations keep about 20% more memory for the backward pass"
            )
    else:
        if liger and not liger_available:
            raise PlanError(
                "liger_kernels: true but liger-kernel is not installed: "
                "pip install 'slmops[gpu]', or leave liger_kernels unset"
            )
        use_liger = liger
    usable = budget_bytes * USABLE
    methods = ["lora", "qlora"] if method == "auto" else [method]
    tried: dict[str, list[Option]] = {}
    for candidate in methods:
        options = _options(
            shape,
            candidate,
            device,
            rank,
            target_modules,
            seq_len,
            batch_size,
            grad_accum,
            gradient_checkpointing,
            use_liger,
            usable,
        )
        tried[candidate] = options
        fitting = [o for o in options if o.fits]
        if not fitting:
            continue
        best = min(fitting, key=lambda o: (o.relative_time, o.total_gb))
        if method == "auto":
            reasons.append(
                "method auto: lora fits the budget"
                if candidate == "lora"
                else "method auto: lora does not fit the budget "
                f"(at least {min(o.total_gb for o in tried['lora']):.1f} GB), qlora does"
            )
        reasons += _why(best, options, batch_size)
        estimate = estimate_peak(
            shape,
            method=candidate,
            device=device,
            rank=rank,
            target_modules=target_modules,
            micro_batch=best.micro_batch,
            seq_len=seq_len,
            gradient_checkpointing=best.gradient_checkpointing,
            liger=use_liger,
        )
        return MemoryPlan(
            method=candidate,
            device=device,
            budget_gb=round(budget_bytes / GB, 2),
            budget_source=budget_source,
            usable_gb=round(usable / GB, 2),
            longest_row_tokens=seq_len,
            effective_batch=batch_size * grad_accum,
            micro_batch=best.micro_batch,
            grad_accum=best.grad_accum,
            gradient_checkpointing=best.gradient_checkpointing,
            liger_kernels=use_liger,
            estimate=estimate,
            reasons=reasons,
            options=options,
        )
    raise PlanError(
        _does_not_fit(
            tried,
            methods[-1],
            budget_bytes,
            budget_source,
            seq_len,
            longest_row,
            max_length,
            gradient_checkpointing,
            rank,
        )
    )


def _gb(size: float) -> str:
    return f"{size / GB:.1f} GB" if size >= 10 * GB else f"{size / GB:.2f} GB"


def _why(best: Option, options: list[Option], batch_size: int) -> list[str]:
    reasons = []
    if best.gradient_checkpointing:
        without = [o for o in options if not o.gradient_checkpointing]
        if without and not any(o.fits for o in without):
            smallest = min(without, key=lambda o: o.total_gb)
            reasons.append(
                "gradient checkpointing on: without it even micro-batch "
                f"{smallest.micro_batch} needs {smallest.total_gb:.1f} GB"
            )
        elif without:
            reasons.append(
                "gradient checkpointing on: faster here than the micro-batches that fit without it"
            )
    if best.micro_batch < batch_size:
        reasons.append(
            f"micro-batch {best.micro_batch} x {best.grad_accum} accumulation steps "
            f"(batch {batch_size} does not fit; the effective batch is kept)"
        )
    return reasons


def _does_not_fit(
    tried: dict[str, list[Option]],
    method: str,
    budget_bytes: float,
    budget_source: str,
    seq_len: int,
    longest_row: int,
    max_length: int,
    checkpointing: bool | None,
    rank: int,
) -> str:
    smallest = min(tried[method], key=lambda o: o.total_gb)
    knobs = []
    if checkpointing is False:
        knobs.append("gradient_checkpointing: leave it unset (or true)")
    if "qlora" not in tried:
        knobs.append("method: qlora (or auto)")
    knobs.append(
        f"max_length (the longest row has {longest_row} tokens, "
        f"{'truncated to ' + str(max_length) if longest_row > max_length else 'planned as is'})"
    )
    if rank > 8:
        knobs.append(f"rank (now {rank})")
    knobs.append("max_memory_gb or a device with more memory")
    return (
        f"training does not fit in memory: the smallest setting ({method}, micro-batch "
        f"{smallest.micro_batch} of {seq_len} tokens, gradient checkpointing "
        f"{'on' if smallest.gradient_checkpointing else 'off'}) needs about "
        f"{_gb(smallest.total_gb * GB)}, and {_gb(budget_bytes * USABLE)} of the "
        f"{_gb(budget_bytes)} budget ({budget_source}) is usable. Turn: " + "; ".join(knobs)
    )


def plan_markdown(plan: MemoryPlan, table: bool = True) -> list[str]:
    """The plan as markdown lines: the choice, the estimate by part, the measured peak once
    there is one, the reasons, and (`table`) every option considered."""
    est = plan.estimate
    lines = [
        f"- {plan.method} on {plan.device}: micro-batch {plan.micro_batch} x "
        f"{plan.grad_accum} accumulation = batch {plan.effective_batch}; gradient "
        f"checkpointing {'on' if plan.gradient_checkpointing else 'off'}; liger kernels "
        f"{'on' if plan.liger_kernels else 'off'}; longest row {plan.longest_row_tokens:,} tokens",
        f"- budget {plan.budget_gb:.2f} GB ({plan.budget_source}), of which "
        f"{plan.usable_gb:.2f} GB planned for",
        f"- estimated peak {est.total_gb:.2f} GB = weights {est.weights_gb:.2f} + LoRA with "
        f"gradients and optimizer {est.trainable_gb:.2f} + activations saved "
        f"{est.activations_gb - est.working_gb:.2f} + the larger of one layer's backward work "
        f"({est.working_gb:.2f}) and the loss's ({est.logits_gb:.2f})"
        + (" + the process itself" if plan.device == "cpu" else ""),
    ]
    if plan.measured_peak_gb is not None:
        where = "allocated GPU memory" if plan.device == "cuda" else "process RSS"
        lines.append(f"- measured peak: {plan.measured_peak_gb:.2f} GB ({where})")
    lines += [f"- {reason}" for reason in plan.reasons]
    if table and plan.options:
        lines += [
            "",
            "| checkpointing | micro-batch x accumulation | estimated GB | fits | relative time |",
            "|---|---|---|---|---|",
        ]
        for o in plan.options:
            chosen = (
                o.micro_batch == plan.micro_batch
                and o.gradient_checkpointing == plan.gradient_checkpointing
            )
            lines.append(
                f"| {'on' if o.gradient_checkpointing else 'off'} | {o.micro_batch} x "
                f"{o.grad_accum}{' (chosen)' if chosen else ''} | {o.total_gb:.2f} | "
                f"{'yes' if o.fits else 'no'} | {o.relative_time:.2f} |"
            )
    return lines


def plan_for(
    shape: ModelShape,
    config: TrainConfig,
    *,
    device: str,
    longest_row: int,
    budget: tuple[float, str, list[str]] | None = None,
) -> MemoryPlan:
    """The memory plan of a run of `config` on `device`: the one way its inputs are read, for
    refine-tune before it loads the base and for `slmops memory-plan`. `budget` (bytes, where
    it came from, notes): default this machine's (config.max_memory_gb, else the free GPU
    memory or RAM), and liger kernels count as available when installed here; a budget given
    for a GPU elsewhere assumes that machine has them (slmops[gpu])."""
    if budget is None:
        budget = device_budget(device, config.max_memory_gb)
        liger_available = liger_installed()
    else:
        liger_available = device == "cuda"
    bytes_, source, notes = budget
    return plan_training(
        shape,
        method=config.method,
        device=device,
        rank=config.rank,
        target_modules=config.target_modules,
        longest_row=longest_row,
        max_length=config.max_length,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        budget_bytes=bytes_,
        budget_source=source,
        gradient_checkpointing=config.gradient_checkpointing,
        liger=config.liger_kernels,
        liger_available=liger_available,
        notes=notes,
    )
