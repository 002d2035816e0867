"""Training benchmark: refine-tune's training step against trl run by hand, in one run.

    python -m benchmarks.training_throughput --steps 200            # tiny model, CPU
    python -m benchmarks.training_throughput --shape 8b --steps 20  # a real shape, GPU

Tiny model (the default, CPU): same base model, data (the example's train split), LoRA
adapter (r=16, all-linear), batch size and steps for all three; each runs in a fresh process
(clean thread settings and a peak-memory reading of its own):
  (a) trl SFTTrainer with its default config (gradient checkpointing on, lr 2e-5, ...);
  (b) the fastest config an expert would write by hand for this case (no gradient
      checkpointing, lr 3e-3, completion-only loss; torch's own thread count);
  (c) slmops' train_adapter, as refine-tune calls it.
Prints tokens/s, final loss and peak memory for each, the ratios c/a and c/b, and slmops'
time-to-quality: seconds of training until held-out answers are >= 95% valid JSON.

A real shape (`--shape 1b|8b`, needs a GPU; `--shape tiny` runs the same comparison on CPU):
a random-weight Llama of that shape is built locally (no download), rows of about
`--row-tokens` tokens are cut from the example docs, and five runs compare, each in a fresh
process: trl's default QLoRA, trl's QLoRA by hand (checkpointing + liger kernels), slmops'
QLoRA under `--max-memory-gb` (22: a 24 GB card), trl's bf16 LoRA by hand, and slmops' LoRA
with the whole card. Prints tokens/s, peak GPU memory, model FLOPs utilisation
(6 x parameters x tokens/s over `--peak-tflops`) and the ratios against the issue's goals.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "train.jsonl"
KEYS = ("answer", "sources", "confidence")


def _rows() -> tuple[list, list]:
    from slmops.training.datasets import split

    rows = [json.loads(line)["messages"] for line in EXAMPLE.read_text().splitlines()]
    return split(rows, 0.1)


def _run_trl(base: str, out: str, steps: int, batch: int, expert: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from slmops.training.trainer import to_trl_rows

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
    tokens, wall = _timed_train(trainer)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_second": tokens / wall,
        "seconds": wall,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _timed_train(trainer: Any) -> tuple[int, float]:
    """Train; (tokens the batches held, not counting padding; seconds)."""
    collate, seen = trainer.data_collator, {"tokens": 0}

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    t0 = time.perf_counter()
    trainer.train()
    return seen["tokens"], time.perf_counter() - t0


def _run_slmops(base: str, out: str, steps: int, batch: int) -> dict[str, Any]:
    from slmops.generation import generate, json_valid_rate
    from slmops.training.trainer import TrainConfig, train_adapter

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


def _run_slmops_threads(
    base: str, out: str, steps: int, batch: int, threads: int
) -> dict[str, Any]:
    """slmops' training alone on `threads` torch threads: seconds a step and tokens/s."""
    from slmops.training.trainer import TrainConfig, train_adapter

    train, _ = _rows()
    result = train_adapter(
        Path(base),
        train,
        [],
        Path(out),
        TrainConfig(max_steps=steps, batch_size=batch, save_steps=steps + 1, threads=threads),
        served_model="tiny-llama",
    )
    return {
        "tokens_per_second": result.tokens_per_second,
        "seconds_per_step": result.train_seconds / max(result.steps, 1),
        "threads": result.threads,
    }


def _in_fresh_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return dict(pool.apply(target, args))


# Real shapes, as their config.json describe them (random weights: throughput and memory
# depend on the shape, not on what the weights learned).
SHAPES: dict[str, dict[str, Any]] = {
    "1b": {  # Llama-3.2-1B
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "8b": {  # Llama-3.1-8B
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
}
DOCS = EXAMPLE.parent / "docs"
RUNS = {
    "trl-default-qlora": "trl defaults, qlora",
    "trl-tuned-qlora": "trl by hand, qlora",
    "slmops-qlora": "slmops, qlora",
    "trl-tuned-lora": "trl by hand, lora",
    "slmops-lora": "slmops, lora",
}


def _build_shape(shape: str, out: str) -> dict[str, Any]:
    """A random-weight Llama of `shape` with the tiny model's tokenizer (child process: the
    parent must not keep 16 GB of weights on the GPU the runs then lack)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from examples.tiny_base.build import build_tiny_model
    from examples.tiny_base.recipe import build_tokenizer

    if shape == "tiny":
        build_tiny_model(out)
        return {"device": "cpu"}
    tokenizer: Any = build_tokenizer()
    tokenizer.model_max_length = 8192
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"device": torch.cuda.get_device_name()}


def _doc_rows(base: str, row_tokens: int, count: int) -> list[list[dict[str, str]]]:
    """Chat rows of about `row_tokens` tokens: a slice of the example docs as the question's
    context, the next slice as a JSON answer (the support-bot's answer format)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, model_max_length=10**7)
    text = "\n\n".join(p.read_text(errors="ignore") for p in sorted(DOCS.rglob("*.md")))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    question, answer = int(row_tokens * 0.7), int(row_tokens * 0.22)  # the rest: template
    rows, start = [], 0
    for n in range(count):
        if start + question + answer > len(ids):
            start = (n * 97) % max(1, len(ids) - question - answer)  # wrap, another offset
        context = tokenizer.decode(ids[start : start + question])
        reply = tokenizer.decode(ids[start + question : start + question + answer])
        start += question + answer
        rows.append(
            [
                {"role": "user", "content": f"Using these docs, answer the question.\n{context}"},
                {
                    "role": "assistant",
                    "content": json.dumps(
                        {"answer": reply, "sources": ["docs"], "confidence": 0.9}
                    ),
                },
            ]
        )
    return rows


def _run_shape(
    name: str,
    base: str,
    out: str,
    rows: list,
    steps: int,
    batch: int,
    max_length: int,
    max_memory_gb: float,
) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    method = name.rsplit("-", 1)[1]
    plan = None
    if name.startswith("slmops"):
        from slmops.training.trainer import TrainConfig, train_adapter

        result = train_adapter(
            Path(base),
            rows,
            [],
            Path(out),
            TrainConfig(
                method=method,
                max_steps=steps,
                batch_size=batch,
                max_length=max_length,
                learning_rate=2e-4,
                save_steps=steps + 1,
                max_memory_gb=max_memory_gb if method == "qlora" else None,
            ),
            served_model="bench",
        )
        tokens, wall = result.tokens_seen, result.train_seconds
        if result.memory_plan:
            p = result.memory_plan
            plan = (
                f"plan: micro-batch {p.micro_batch} x {p.grad_accum}, checkpointing "
                f"{'on' if p.gradient_checkpointing else 'off'}, liger "
                f"{'on' if p.liger_kernels else 'off'}, estimated {p.estimate.total_gb:.1f} GB"
            )
    else:
        tokens, wall = _train_trl(base, out, rows, steps, batch, max_length, method, name)
    peak = (
        torch.cuda.max_memory_allocated() / 1e9
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    )
    return {"tokens_per_second": tokens / wall, "seconds": wall, "peak_gb": peak, "plan": plan}


def _train_trl(
    base: str,
    out: str,
    rows: list,
    steps: int,
    batch: int,
    max_length: int,
    method: str,
    name: str,
) -> tuple[int, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from slmops.training.memory_plan import liger_installed
    from slmops.training.trainer import to_trl_rows

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    args: dict[str, Any] = {
        "output_dir": out,
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "max_length": max_length,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "bf16": cuda,
        "use_cpu": not cuda,
    }
    if "tuned" in name:
        args.update(
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            use_liger_kernel=cuda and liger_installed(),
            learning_rate=2e-4,
            dataloader_num_workers=0,
        )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**args),
        processing_class=AutoTokenizer.from_pretrained(base),
        train_dataset=Dataset.from_list(to_trl_rows(rows)),
        peft_config=LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a dict per step would bury the table
    return _timed_train(trainer)


def shape_benchmark(argv: list[str] | None = None) -> None:
    """Five runs on a real shape (see the module docstring); prints the table and goals."""
    parser = argparse.ArgumentParser(description="training on a real model shape")
    parser.add_argument("--shape", choices=["tiny", *SHAPES], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--row-tokens", type=int, default=None, help="1,100; tiny: 400")
    parser.add_argument("--max-length", type=int, default=None, help="2,048; tiny: 512")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-memory-gb", type=float, default=22.0, help="slmops' QLoRA run")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)"
    )
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset")
    args = parser.parse_args(argv)
    tiny = args.shape == "tiny"
    row_tokens = args.row_tokens or (400 if tiny else 1100)
    max_length = args.max_length or (512 if tiny else 2048)
    import torch

    if not tiny and not torch.cuda.is_available():
        raise SystemExit(
            f"--shape {args.shape} needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "--shape tiny runs the same comparison on CPU"
        )
    from slmops.training.datasets import chat_token_counter
    from slmops.training.memory_plan import ModelShape, params_label

    work = Path(tempfile.mkdtemp(prefix="slmops-shape-bench-"))
    try:
        base = str(work / f"llama-{args.shape}")
        t0 = time.perf_counter()
        device = _in_fresh_process(_build_shape, args.shape, base)["device"]
        params = ModelShape.from_pretrained(Path(base)).params
        size = params_label(params)
        print(
            f"{args.shape} shape ({size} parameters, random weights) built in "
            f"{time.perf_counter() - t0:.0f}s on {device}"
        )
        rows = _doc_rows(base, row_tokens, args.rows)
        lengths = sorted(map(chat_token_counter(base), rows))
        print(
            f"{len(rows)} rows from the example docs: {sum(lengths) / len(lengths):.0f} tokens "
            f"on average, longest {lengths[-1]}; max length {max_length}; batch "
            f"{args.batch_size}; {args.steps} steps; LoRA r=16 all-linear"
        )
        results: dict[str, dict[str, Any]] = {}

        def row(name: str, r: dict[str, Any]) -> str:
            label = RUNS[name]
            if "error" in r:
                return f"{label:20s} failed: {r['error']}"
            mfu = 6 * params * r["tokens_per_second"] / (args.peak_tflops * 1e12)
            return (
                f"{label:20s} {r['tokens_per_second']:9.0f} {r['peak_gb']:8.1f} "
                + (f"{mfu:6.1%}" if not tiny else "   n/a")
                + (f"  ({r['plan']})" if r.get("plan") else "")
            )

        for n, name in enumerate(r.strip() for r in args.runs.split(",")):
            if name not in RUNS:
                raise SystemExit(f"--runs: unknown run {name!r}; choose from {', '.join(RUNS)}")
            print(f"[{n + 1}/{len(args.runs.split(','))}] {RUNS[name]} ...", flush=True)
            try:
                results[name] = _in_fresh_process(
                    _run_shape,
                    name,
                    base,
                    str(work / f"run{n}"),
                    rows,
                    args.steps,
                    args.batch_size,
                    max_length,
                    args.max_memory_gb,
                )
            except Exception as exc:  # an out-of-memory run is a result, not the end
                results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
            print("    " + row(name, results[name]), flush=True)  # seen before the table
        print(f"\n{'run':20s} {'tokens/s':>9s} {'peak GB':>8s} {'MFU':>6s}")
        for name, r in results.items():
            print(row(name, r))

        def ratio(a: str, b: str) -> str:
            ok = all("tokens_per_second" in results.get(x, {}) for x in (a, b))
            if not ok:
                return "n/a (a run is missing or failed)"
            return f"{results[a]['tokens_per_second'] / results[b]['tokens_per_second']:.2f}x"

        qlora = results.get("slmops-qlora", {})
        print(
            f"\nslmops qlora (max_memory_gb {args.max_memory_gb:g}): peak "
            + (f"{qlora['peak_gb']:.1f} GB" if "peak_gb" in qlora else "n/a")
            + " (goal < 20 GB on the 8b shape)"
        )
        print(
            f"slmops qlora / trl defaults qlora: {ratio('slmops-qlora', 'trl-default-qlora')}"
            " (goal >= 1.45)"
        )
        print(
            f"slmops lora / trl by hand lora:    {ratio('slmops-lora', 'trl-tuned-lora')}"
            " (goal >= 1.0)"
        )
        done = [r for r in results.values() if "tokens_per_second" in r]
        if done and not tiny:
            best = max(6 * params * r["tokens_per_second"] for r in done)
            print(f"best MFU: {best / (args.peak_tflops * 1e12):.1%} (stretch goal >= 30%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    if any(a == "--shape" or a.startswith("--shape=") for a in argv or sys.argv[1:]):
        shape_benchmark(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        default="1,2",
        help="torch thread counts to time slmops' training at (comma-separated; each at most "
        "the cores this process may use)",
    )
    args = parser.parse_args(argv)
    import os

    from examples.tiny_base.build import build_tiny_model

    cores = len(os.sched_getaffinity(0))
    counts = sorted({min(int(t), cores) for t in args.threads.split(",") if t.strip()})

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
        # Threads: each count in a fresh process, the same steps (what SLMOPS_TRAIN_THREADS
        # or TrainConfig.threads would set on a worker).
        timed = {
            n: _in_fresh_process(
                _run_slmops_threads, base, str(work / f"t{n}"), args.steps, args.batch_size, n
            )
            for n in counts
        }
        for n, r in timed.items():
            print(
                f"slmops on {n} thread{'s' if n > 1 else ''}: {r['tokens_per_second']:8.0f} "
                f"tokens/s, {r['seconds_per_step']:.2f}s a step"
            )
        if len(timed) > 1:
            lo, hi = min(timed), max(timed)
            ratio = timed[hi]["tokens_per_second"] / timed[lo]["tokens_per_second"]
            print(f"{hi} threads / {lo} thread{'s' if lo > 1 else ''}: {ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
