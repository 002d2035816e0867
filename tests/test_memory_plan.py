"""The memory plan: predicted peaks against peaks measured on a GPU, and the choices it makes
for a budget (checkpointing, micro-batch x accumulation, liger, QLoRA for `method: auto`).

Pure functions of a model's shape: no GPU and no weights needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.training_throughput import SHAPES
from slmops.errors import ConfigError
from slmops.training.memory_plan import (
    GB,
    USABLE,
    MemoryPlan,
    ModelShape,
    PlanError,
    estimate_peak,
    lora_params,
    plan_markdown,
    plan_training,
)

# Llama-3.1-8B and Llama-3.2-1B as their config.json describe them.
LLAMA_8B = ModelShape.from_config(SHAPES["8b"])
LLAMA_1B = ModelShape.from_config(SHAPES["1b"])

# Peak GPU memory (allocated) measured on one H200 on 2026-11-28, each run in a fresh process
# (benchmarks/memory_peaks.py, benchmarks/training_throughput.py): a random-weight Llama of the
# shape, rows of about 1,100 tokens (max length 2,048), LoRA r=16 all-linear; torch 2.11,
# transformers 5.17, trl 1.16.0, peft 0.21.2, bitsandbytes 0.50.2, liger-kernel 0.8.5.
# (shape, method, micro-batch, gradient checkpointing, liger kernels, measured GB)
MEASURED = [
    ("8b", "qlora", 4, False, False, 34.3),
    ("8b", "qlora", 4, False, True, 27.9),
    ("8b", "qlora", 8, True, False, 10.6),  # trl's defaults
    ("8b", "qlora", 8, True, True, 10.2),  # slmops' plan under 22 GB; trl by hand
    ("8b", "lora", 4, False, False, 49.7),
    ("8b", "lora", 8, False, True, 70.0),  # slmops' plan on the whole card
    ("1b", "qlora", 4, False, True, 7.3),
    ("1b", "qlora", 8, True, False, 3.0),  # trl's defaults
    ("1b", "lora", 8, False, True, 17.4),
]
# Not fitted: earlier peaks on an H100 with peft's prepare_model_for_kbit_training, which cast
# the non-4-bit weights and the residual stream to fp32 (8B QLoRA, micro-batch 4, no
# checkpointing: 64.8 GB, against 34.3 above); slmops no longer calls it.
SHAPE = {"8b": LLAMA_8B, "1b": LLAMA_1B}


def plan(shape: ModelShape = LLAMA_8B, **kw: object) -> MemoryPlan:
    args: dict[str, object] = {
        "method": "qlora",
        "device": "cuda",
        "rank": 16,
        "target_modules": "all-linear",
        "longest_row": 2048,
        "max_length": 2048,
        "batch_size": 4,
        "grad_accum": 1,
        "budget_bytes": 22 * GB,
        "budget_source": "max_memory_gb",
        "liger_available": True,
    }
    args.update(kw)
    return plan_training(shape, **args)  # type: ignore[arg-type]


def test_the_shape_counts_what_peft_and_the_model_card_count() -> None:
    assert LLAMA_8B.params == pytest.approx(8.03e9, rel=0.002)
    assert LLAMA_1B.params == pytest.approx(1.236e9, rel=0.002)
    # peft's print_trainable_parameters for Llama-3-8B, r=16, all linear layers.
    assert lora_params(LLAMA_8B, 16, "all-linear") == 41_943_040
    assert lora_params(LLAMA_8B, 16, "q_proj,v_proj") == 16 * 32 * (4096 + 4096 + 4096 + 1024)


# Gemma 3 270M as slmops converts it from the registry's GGUF (config.json, the keys that
# matter), trained with LoRA r=16 all-linear on CPU on train-full.jsonl's four longest rows
# (4 x 405 tokens, every batch): peak RSS 7.1 GB on 2026-12-03 (torch 2.13 CPU, transformers
# 5.24, trl 1.16.0, peft 0.21.2): 2.3 GB with the model loaded, 5.2 GB at the end of the
# forward pass, 6.9-7.1 GB in the loss (one epoch on random batches: 6.9 GB). The Llama-style
# count without its extra norms and the loss's tiles estimated 4.8 GB.
GEMMA_3_270M = {
    "model_type": "gemma3_text",
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 262144,
    "tie_word_embeddings": True,
}


def test_gemma_3_on_cpu_counts_its_four_norms_and_the_loss_tiles() -> None:
    shape = ModelShape.from_config(GEMMA_3_270M)
    assert (shape.norms, shape.qk_norm) == (4, True)
    assert shape.params == pytest.approx(268e6, rel=0.01)  # the model card's 270M
    assert (LLAMA_8B.norms, LLAMA_8B.qk_norm) == (2, False)
    est = estimate_peak(
        shape,
        method="lora",
        device="cpu",
        rank=16,
        target_modules="all-linear",
        micro_batch=4,
        seq_len=405,
        gradient_checkpointing=False,
        liger=False,
    )
    assert 1.0 <= est.total_gb / 7.1 <= 1.1, est
    # 8 fp32 tiles of 1,620 tokens x 32,768 vocabulary columns: 1.7 GB over the forward pass.
    assert est.logits_gb == pytest.approx(1.70, abs=0.01)


@pytest.mark.parametrize(("shape", "method", "micro", "ckpt", "liger", "measured"), MEASURED)
def test_the_estimate_is_close_to_the_measured_peak_and_never_below_it(
    shape: str, method: str, micro: int, ckpt: bool, liger: bool, measured: float
) -> None:
    est = estimate_peak(
        SHAPE[shape],
        method=method,
        device="cuda",
        rank=16,
        target_modules="all-linear",
        micro_batch=micro,
        seq_len=1100,
        gradient_checkpointing=ckpt,
        liger=liger,
    )
    assert 1.0 <= est.total_gb / measured <= 1.1, (est, measured)


def test_qlora_as_it_was_needs_far_more_than_a_24gb_card_and_checkpointing_brings_it_under() -> (
    None
):
    def peak(ckpt: bool, liger: bool) -> float:
        return estimate_peak(
            LLAMA_8B,
            method="qlora",
            device="cuda",
            rank=16,
            target_modules="all-linear",
            micro_batch=4,
            seq_len=2048,
            gradient_checkpointing=ckpt,
            liger=liger,
        ).total_gb

    assert peak(ckpt=False, liger=False) > 2 * 24
    assert peak(ckpt=True, liger=False) < 24
    assert peak(ckpt=True, liger=True) < 20


def test_a_24gb_card_gets_checkpointing_and_keeps_the_batch() -> None:
    p = plan()  # max_memory_gb: 22
    assert p.method == "qlora" and p.gradient_checkpointing and p.liger_kernels
    assert p.micro_batch * p.grad_accum == 4
    assert p.estimate.total_gb <= 22 * USABLE < 20
    assert any("checkpointing on" in r for r in p.reasons)


def test_a_batch_that_does_not_fit_is_split_into_micro_batches_with_the_same_effective_size() -> (
    None
):
    p = plan(batch_size=16, grad_accum=2, longest_row=1100, budget_bytes=12 * GB)
    assert p.gradient_checkpointing and p.micro_batch < 16
    assert p.micro_batch * p.grad_accum == 32 and 32 % p.micro_batch == 0
    assert any("effective batch is kept" in r for r in p.reasons)
    chosen = [o for o in p.options if o.micro_batch == p.micro_batch and o.gradient_checkpointing]
    assert chosen and chosen[0].fits
    # Every faster option the plan passed over does not fit.
    assert all(not o.fits for o in p.options if o.relative_time < chosen[0].relative_time)


def test_the_whole_card_trains_lora_without_checkpointing_when_it_fits() -> None:
    p = plan(LLAMA_1B, method="lora", budget_bytes=78 * GB, batch_size=8, longest_row=1100)
    assert p.method == "lora" and not p.gradient_checkpointing
    assert (p.micro_batch, p.grad_accum) == (8, 1)


def test_auto_picks_qlora_only_when_lora_does_not_fit() -> None:
    small = plan(LLAMA_1B, method="auto", budget_bytes=78 * GB)
    assert small.method == "lora" and "method auto: lora fits the budget" in small.reasons
    # 16 GB of bf16 weights alone fill a 16 GB card; 4-bit ones leave room.
    big = plan(method="auto", budget_bytes=16 * GB)
    assert big.method == "qlora" and big.gradient_checkpointing
    assert any("lora does not fit" in r for r in big.reasons)


def test_explicit_settings_are_kept_or_refused_with_the_setting_named() -> None:
    with pytest.raises(PlanError, match="gradient_checkpointing: leave it unset"):
        plan(gradient_checkpointing=False, budget_bytes=12 * GB)
    # Where a micro-batch of one row fits without checkpointing, the setting is kept.
    kept = plan(gradient_checkpointing=False)
    assert not kept.gradient_checkpointing and kept.micro_batch * kept.grad_accum == 4
    with pytest.raises(PlanError, match="liger-kernel is not installed"):
        plan(liger=True, liger_available=False)
    off = plan(LLAMA_1B, method="lora", budget_bytes=78 * GB, gradient_checkpointing=True)
    assert off.gradient_checkpointing


def test_a_run_that_cannot_fit_names_the_knobs_to_turn() -> None:
    with pytest.raises(PlanError) as err:
        plan(method="lora", budget_bytes=12 * GB, longest_row=4000)
    message = str(err.value)
    assert "method: qlora" in message and "max_memory_gb" in message
    assert "longest row has 4000 tokens, truncated to 2048" in message
    assert "12.0 GB budget (max_memory_gb)" in message


def test_the_tiny_model_on_cpu_trains_as_configured(tiny_base: Path) -> None:
    p = plan(
        ModelShape.from_pretrained(tiny_base),
        method="lora",
        device="cpu",
        budget_bytes=16 * GB,
        budget_source="available RAM",
        batch_size=8,
        longest_row=400,
        max_length=512,
    )
    assert not p.gradient_checkpointing and not p.liger_kernels
    assert (p.micro_batch, p.grad_accum) == (8, 1)
    text = "\n".join(plan_markdown(p))
    assert "micro-batch 8 x 1 accumulation = batch 8" in text and "(chosen)" in text


def test_a_config_without_the_sizes_is_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "vocab_size": 10}))
    with pytest.raises(ConfigError, match=r"config.json: no integer intermediate_size"):
        ModelShape.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="a model folder"):
        ModelShape.from_pretrained(tmp_path / "missing")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_the_measured_cpu_peak_is_the_training_s_not_what_ran_before_it() -> None:
    # A GGUF base converted in the same process held two float32 copies of the model before
    # training started: the manifest's peak must not count them.
    from slmops.training import trainer

    before = b"\x01" * (400 * 2**20)
    held = trainer._peak_rss_mb()
    del before
    assert trainer._reset_peak_rss()
    after = trainer._peak_rss_mb()
    assert held is not None and after is not None and after < held - 300


def test_available_ram_counts_the_page_cache_the_kernel_reclaims(tmp_path: Path) -> None:
    """Free pages alone fell to 0.2 GB on a 23 GB machine after the suite's file I/O, and every
    training run was refused; MemAvailable (free + reclaimable cache) is what a run can have."""
    from slmops.training.memory_plan import available_ram

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 24000000 kB\nMemFree: 200000 kB\nMemAvailable: 19000000 kB\n")
    assert available_ram(meminfo) == 19000000 * 1024
    assert available_ram(tmp_path / "absent") > 0  # elsewhere: the free pages
