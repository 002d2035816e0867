"""LoRA / QLoRA fine-tuning with trl's SFTTrainer and peft, on CPU or GPU.

The defaults are chosen for small models (see the notes on each field): trl's own defaults
(gradient checkpointing on, learning rate 2e-5) are slow and barely move a LoRA adapter on a
small model. Before any weights load, a memory plan (slmops.training.memory_plan) decides gradient
checkpointing, micro-batch x accumulation and liger kernels for the budget, and refuses a run
that cannot fit. Loss is on the assistant's answer only. Checkpoints are handed to a callback
(the flow stores them), and a run resumes from one instead of restarting.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slmops.errors import ConfigError
from slmops.store.artifacts import ADAPTER_FILES
from slmops.training.memory_plan import GB, MemoryPlan, ModelShape, plan_for
from slmops.training.recipe import TrainConfig, TrainingError

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train_adapter"]


class TrainResult(BaseModel):
    method: str
    device: str
    steps: int
    loss_curve: list[tuple[int, float]]
    final_loss: float
    eval_loss: float | None
    tokens_seen: int
    train_seconds: float
    cpu_seconds: float
    gpu_seconds: float
    tokens_per_second: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    estimated_cost_usd: float
    resumed_from_step: int | None = None
    threads: int | None = None  # torch threads actually used on CPU (None on GPU)
    threads_source: str | None = None  # where that count came from (config, env, affinity)
    memory_plan: MemoryPlan | None = None
    padding_free: bool = False  # rows laid end to end (TrainConfig.padding_free), else padded


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads(explicit: int | None = None) -> tuple[int, str]:
    """Torch threads for CPU training, and where the number came from.

    The cores this worker may use, decided from what the operator set, never from a sample
    of the machine's load (a sample taken while the process itself starts up counts its own
    start-up as another process's load): `explicit` (TrainConfig.threads), else
    SLMOPS_TRAIN_THREADS (set it on a worker that shares its machine with a vLLM replica),
    else the CPU affinity of this process (taskset, cpuset), capped by a cgroup CPU quota
    (a container's CPU limit)."""
    if explicit:
        return explicit, "config"
    from_env = os.environ.get("SLMOPS_TRAIN_THREADS", "").strip()
    if from_env:
        try:
            value = int(from_env)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(
                f"SLMOPS_TRAIN_THREADS={from_env!r}: expected a whole number of threads >= 1"
            )
        return value, "SLMOPS_TRAIN_THREADS"
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < cores:
        return max(1, math.ceil(quota - 1e-9)), f"cgroup CPU quota {quota:g}"
    return cores, f"CPU affinity ({cores} cores)"


def _cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The container's CPU limit in cores (cgroup v2 `cpu.max`), None when unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def plan_memory(
    base: Path,
    rows: list[list[dict[str, str]]],
    config: TrainConfig,
    device: str,
    tokenizer: Any,
) -> MemoryPlan:
    """The run's memory plan (see slmops.training.memory_plan), from the base model's
    config.json and the longest training row; raises PlanError, before any weights load, if
    nothing fits."""
    longest = 0
    for messages in rows:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return plan_for(ModelShape.from_pretrained(base), config, device=device, longest_row=longest)


def _reset_peak_rss() -> bool:
    """Start the process's peak resident memory over (Linux: clear_refs 5), so the measured
    peak is the training's, not what ran before it in the process (converting a GGUF base
    holds two float32 copies of the model). False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float | None:
    """Peak resident memory since the last reset (VmHWM), in MB; None if unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def to_trl_rows(rows: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    """Chat rows as conversational prompt/completion: the loss covers the answer only."""
    return [{"prompt": m[:-1], "completion": m[-1:]} for m in rows]


def train_adapter(
    base: Path,
    train_rows: list[list[dict[str, str]]],
    eval_rows: list[list[dict[str, str]]],
    out_dir: Path,
    config: TrainConfig,
    *,
    served_model: str,
    resume_from: Path | None = None,
    init_from: Path | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_plan: Callable[[MemoryPlan], None] | None = None,
) -> TrainResult:
    """Train an adapter on `base`; write it (peft files) to `out_dir/adapter`.

    init_from: an adapter folder of the same shape (rank, alpha, target modules) whose
    weights the new adapter starts from instead of LoRA's zero update (a warm start).
    Raises PlanError before loading any weights if the run cannot fit its memory budget."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    device = _device()
    old_threads = torch.get_num_threads()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        raise ConfigError(f"base model {base} has no pad token; set one in its tokenizer")
    plan = plan_memory(base, train_rows, config, device, tokenizer)
    # The plan caps the longest row at max_length: below it, no row is truncated.
    padding_free = config.padding_free and plan.longest_row_tokens < config.max_length
    if config.padding_free and not padding_free:
        plan.reasons.append(
            f"padded batches: a row reaches max_length ({config.max_length} tokens) and is "
            "truncated, which padding-free batches do not do"
        )
    if on_plan:
        on_plan(plan)
    method = plan.method
    model_kwargs: dict[str, Any] = {"dtype": torch.float32 if device == "cpu" else torch.bfloat16}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=model_kwargs["dtype"],
        )
    # Decided before any weights load: a bad SLMOPS_TRAIN_THREADS fails at once.
    threads, threads_source = cpu_threads(config.threads) if device == "cpu" else (None, None)
    model = AutoModelForCausalLM.from_pretrained(base, **model_kwargs)
    if threads:
        torch.set_num_threads(threads)
    # QLoRA: no peft `prepare_model_for_kbit_training`. It casts every weight that is not 4-bit
    # (embeddings, head, norms) to fp32, and the residual stream with them: on the Llama-3.1-8B
    # shape that held 5.7 GB more and ran 21% slower than trl's QLoRA at the same settings.
    # trl's SFTTrainer does what QLoRA needs itself: input gradients for checkpointing and
    # bf16 LoRA weights, as the QLoRA paper trains them.
    targets: str | list[str] = (
        config.target_modules
        if config.target_modules == "all-linear"
        else [t.strip() for t in config.target_modules.split(",")]
    )
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    work = out_dir / "trainer"
    args = SFTConfig(
        output_dir=str(work),
        max_steps=config.max_steps,
        per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        seed=config.seed,
        data_seed=config.seed,
        gradient_checkpointing=plan.gradient_checkpointing,
        # The non-reentrant variant works with frozen inputs (LoRA) and is torch's default.
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=plan.liger_kernels,
        # Padding-free batches are not truncated (trl refuses a max_length with them).
        padding_free=padding_free,
        max_length=None if padding_free else config.max_length,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        dataloader_num_workers=0,
        eval_strategy="no",
        disable_tqdm=True,
        completion_only_loss=True,
        **_sampling(config.group_by_length),
    )
    seen = {"tokens": 0}
    losses: list[tuple[int, float]] = []

    class Watch(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append((state.global_step, float(logs["loss"])))
                if on_log:
                    on_log(
                        state.global_step,
                        {k: float(v) for k, v in logs.items() if isinstance(v, int | float)},
                    )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if on_checkpoint:
                on_checkpoint(work / f"checkpoint-{state.global_step}", state.global_step)

    trainer = SFTTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        peft_config=lora,
        train_dataset=Dataset.from_list(to_trl_rows(train_rows)),
        eval_dataset=Dataset.from_list(to_trl_rows(eval_rows)) if eval_rows else None,
        callbacks=[Watch()],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # logs go to on_log and the loss curve instead
    trainer.remove_callback(ProgressCallback)
    collate = trainer.data_collator

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        seen["tokens"] += (
            int(batch["attention_mask"].sum())
            if "attention_mask" in batch
            else int(batch["input_ids"].numel())
        )
        return batch

    trainer.data_collator = counting_collator
    if init_from is not None:
        load_adapter_weights(trainer.model, init_from, lora)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_reset = _reset_peak_rss()
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        resumed = None
        if resume_from is not None:
            resumed = int(
                json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
            )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_rows else None
        adapter_dir = out_dir / "adapter"
        trained: Any = trainer.model
        trained.save_pretrained(str(adapter_dir))
    finally:
        torch.set_num_threads(old_threads)
    finalize_adapter(adapter_dir, served_model)
    peak_rss_mb = (_peak_rss_mb() if rss_reset else None) or (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    peak_mb = peak_gpu_mb if peak_gpu_mb is not None else peak_rss_mb
    plan.measured_peak_gb = round(peak_mb * 2**20 / GB, 2)
    gpu_s = wall if device == "cuda" else 0.0
    cost = (gpu_s / 3600 * config.gpu_hour_usd) + (cpu / 3600 * config.cpu_hour_usd)
    return TrainResult(
        method=method,
        device=device,
        steps=trainer.state.global_step,
        loss_curve=losses,
        final_loss=losses[-1][1] if losses else float("nan"),
        eval_loss=eval_loss,
        tokens_seen=seen["tokens"],
        train_seconds=wall,
        cpu_seconds=cpu,
        gpu_seconds=gpu_s,
        tokens_per_second=seen["tokens"] / wall if wall else 0.0,
        peak_rss_mb=peak_rss_mb,
        peak_gpu_mb=peak_gpu_mb,
        estimated_cost_usd=round(cost, 6),
        resumed_from_step=resumed,
        threads=threads,
        threads_source=threads_source,
        memory_plan=plan,
        padding_free=padding_free,
    )


def load_adapter_weights(model: Any, folder: Path, lora: Any) -> None:
    """Copy the LoRA weights in `folder` into `model` (a peft model built with `lora`).
    Refuses an adapter of another shape: every weight must land, or none is used."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = json.loads((folder / "adapter_config.json").read_text())
    ours = {"r": lora.r, "lora_alpha": lora.lora_alpha}
    theirs = {k: saved.get(k) for k in ours}
    if ours != theirs:
        raise ConfigError(
            f"cannot warm-start from {folder}: it is a LoRA adapter with {theirs}, this run "
            f"trains {ours}; train from scratch or use the same rank and alpha"
        )
    state = load_file(str(folder / "adapter_model.safetensors"))
    expected = {k for k in model.state_dict() if "lora_" in k}
    result: Any = set_peft_model_state_dict(model, state)
    missing = sorted(k for k in expected if k in set(result.missing_keys))
    if result.unexpected_keys or missing or not state:
        raise ConfigError(
            f"cannot warm-start from {folder}: its weights do not fit this model's adapter "
            f"({len(result.unexpected_keys)} unexpected, {len(missing)} missing, e.g. "
            f"{(list(result.unexpected_keys) + missing)[:2]}); the target modules differ"
        )


def _sampling(group_by_length: bool) -> dict[str, Any]:
    """The trainer setting for length-grouped batches, by the name this transformers uses
    (`train_sampling_strategy` from 5.x, `group_by_length` before it)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length} if "group_by_length" in fields else {}


def finalize_adapter(adapter_dir: Path, served_model: str) -> dict[str, Any]:
    """Make the adapter folder what peft and vLLM load: the two files, the served base name,
    no extra trained modules. Raises TrainingError if anything is missing or unreadable."""
    for name in ADAPTER_FILES:
        if not (adapter_dir / name).is_file() or (adapter_dir / name).stat().st_size == 0:
            raise TrainingError(f"adapter output {adapter_dir} is missing {name}")
    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise TrainingError(f"adapter output {config_path} is corrupt: {exc}") from exc
    if config.get("modules_to_save"):
        raise TrainingError(
            f"adapter {adapter_dir} trains extra modules "
            f"{config['modules_to_save']}: vLLM refuses those"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:
        raise TrainingError(f"adapter weights in {adapter_dir} are unreadable: {exc}") from exc
    if not keys or any("lm_head" in k or "embed_tokens" in k for k in keys):
        raise TrainingError(
            f"adapter {adapter_dir} has no LoRA weights or adapts lm_head/"
            "embeddings, which vLLM refuses"
        )
    # Written at training time as a local path; servers know the base by its served name.
    config["base_model_name_or_path"] = served_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return dict(config)
