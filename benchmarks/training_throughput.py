"""Training benchmark: refine-tune's training step against trl run by hand, in one run.

    python -m benchmarks.training_throughput --steps 200

Same tiny base model, data (the example's train split), LoRA adapter (r=16, all-linear),
batch size and steps for all three; each runs in a fresh process (clean thread settings and a
peak-memory reading of its own):
  (a) trl SFTTrainer with its default config (gradient checkpointing on, lr 2e-5, ...);
  (b) the fastest config an expert would write by hand for this case (no gradient
      checkpointing, lr 3e-3, completion-only loss; torch's own thread count);
  (c) slmops' train_adapter, as refine-tune calls it.
Prints tokens/s, final loss and peak memory for each, the ratios c/a and c/b, and slmops'
time-to-quality: seconds of training until held-out answers are >= 95% valid JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "train.jsonl"
KEYS = ("answer", "sources", "confidence")


def _rows() -> tuple[list, list]:
    from slmops.datasets import split

    rows = [json.loads(line)["messages"] for line in EXAMPLE.read_text().splitlines()]
    return split(rows, 0.1)


def _run_trl(base: str, out: str, steps: int, batch: int, expert: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from slmops.training import to_trl_rows

    train, _ = _rows()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kwargs: dict[str, Any] = {
        "output_dir": out,
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "use_cpu": True,  # the one setting trl needs to run at all on a CPU-only machine
    }
    if expert:
        kwargs.update(
            gradient_checkpointing=False,
            learning_rate=3e-3,
            seed=42,
            completion_only_loss=True,
            dataloader_num_workers=0,
        )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**kwargs),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(to_trl_rows(train)),
        peft_config=LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    collate, seen = trainer.data_collator, {"tokens": 0}

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch_ = collate(features)
        seen["tokens"] += int(batch_["attention_mask"].sum())
        return batch_

    trainer.data_collator = counting
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_second": seen["tokens"] / wall,
        "seconds": wall,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run_slmops(base: str, out: str, steps: int, batch: int) -> dict[str, Any]:
    from slmops.generation import generate, json_valid_rate
    from slmops.training import TrainConfig, train_adapter

    train, held_out = _rows()
    marks: dict[int, float] = {}
    t0 = time.perf_counter()
    result = train_adapter(
        Path(base),
        train,
        [],
        Path(out),
        TrainConfig(max_steps=steps, batch_size=batch, save_steps=25),
        served_model="tiny-llama",
        on_log=lambda step, _: marks.__setitem__(step, time.perf_counter() - t0),
    )
    losses = [loss for _, loss in result.loss_curve]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Time to quality: the first checkpoint whose held-out answers are >= 95% valid JSON.
    prompts = [r[:-1] for r in held_out]
    ttq = None
    checkpoints = sorted(
        Path(out, "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        if json_valid_rate(generate(Path(base), prompts, adapter=checkpoint), KEYS) >= 0.95:
            ttq = (step, marks.get(step))
            break
    return {
        "tokens_per_second": result.tokens_per_second,
        "seconds": result.train_seconds,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "peak_rss_mb": peak,
        "time_to_quality": ttq,
    }


def _in_fresh_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return dict(pool.apply(target, args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    from infra.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="slmops-train-bench-"))
    try:
        base = str(build_tiny_model(work / "tiny-llama", seed=1))
        runs = {
            "trl defaults": _in_fresh_process(
                _run_trl, base, str(work / "a"), args.steps, args.batch_size, False
            ),
            "trl by hand": _in_fresh_process(
                _run_trl, base, str(work / "b"), args.steps, args.batch_size, True
            ),
            "slmops": _in_fresh_process(
                _run_slmops, base, str(work / "c"), args.steps, args.batch_size
            ),
        }
        print(f"tiny Llama, {args.steps} steps, batch {args.batch_size}, LoRA r=16 all-linear")
        for name, r in runs.items():
            print(
                f"{name:13s} {r['tokens_per_second']:8.0f} tokens/s  {r['seconds']:6.1f}s  "
                f"final loss {r['final_loss']:.3f}  peak RSS {r['peak_rss_mb']:.0f} MB"
            )
        ours = runs["slmops"]["tokens_per_second"]
        print(
            f"slmops / trl defaults: {ours / runs['trl defaults']['tokens_per_second']:.2f}x "
            "(goal >= 1.6)"
        )
        print(
            f"slmops / trl by hand:  {ours / runs['trl by hand']['tokens_per_second']:.2f}x "
            "(goal >= 0.95)"
        )
        ttq = runs["slmops"]["time_to_quality"]
        print(
            "time to quality (>= 95% valid JSON on held-out prompts): "
            + (f"step {ttq[0]}, {ttq[1]:.1f}s of training" if ttq else "not reached")
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
