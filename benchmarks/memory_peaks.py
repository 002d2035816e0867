"""The memory plan against the GPU: estimated vs measured peak for chosen settings.

    python -m benchmarks.memory_peaks --shape 8b --points qlora:4:ckpt:liger,lora:8:-:liger

A random-weight Llama of the shape is built locally (as in `training_throughput`), rows of
about `--row-tokens` tokens are cut from the example docs, and each point trains slmops'
adapter for `--steps` steps in a fresh process with its settings given explicitly (method,
micro-batch, gradient checkpointing `ckpt` or `-`, liger kernels `liger` or `-`; the budget
is the whole card, so the plan keeps them). Prints, per point, the plan's estimate, the peak
allocated GPU memory, their ratio and tokens/s: the figures `tests/test_memory_plan.py`
fits the estimate to. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.training_throughput import _build_shape, _doc_rows, _in_fresh_process


def _parse(point: str) -> tuple[str, int, bool, bool]:
    try:
        method, micro, ckpt, liger = point.split(":")
        if (
            method not in ("lora", "qlora")
            or ckpt not in ("ckpt", "-")
            or liger
            not in (
                "liger",
                "-",
            )
        ):
            raise ValueError
        return method, int(micro), ckpt == "ckpt", liger == "liger"
    except ValueError:
        raise SystemExit(
            f"--points: {point!r} is not method:micro-batch:ckpt|-:liger|- "
            "(e.g. qlora:4:ckpt:liger)"
        ) from None


def _measure(
    base: str, out: str, rows: list, point: tuple[str, int, bool, bool], steps: int, length: int
) -> dict[str, Any]:
    from slmops.training.trainer import TrainConfig, train_adapter

    method, micro, ckpt, liger = point
    result = train_adapter(
        Path(base),
        rows,
        [],
        Path(out),
        TrainConfig(
            method=method,
            max_steps=steps,
            batch_size=micro,
            max_length=length,
            gradient_checkpointing=ckpt,
            liger_kernels=liger,
            save_steps=steps + 1,
        ),
        served_model="bench",
    )
    plan = result.memory_plan
    assert plan is not None and plan.measured_peak_gb is not None
    return {
        "estimated": plan.estimate.total_gb,
        "measured": plan.measured_peak_gb,
        "tokens_per_second": result.tokens_per_second,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="estimated vs measured training peaks")
    parser.add_argument("--shape", choices=["1b", "8b"], required=True)
    parser.add_argument("--points", required=True, help="method:micro:ckpt|-:liger|-,...")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--row-tokens", type=int, default=1100)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args(argv)
    points = [_parse(p.strip()) for p in args.points.split(",") if p.strip()]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("memory_peaks needs a CUDA GPU (torch.cuda.is_available() is False)")
    work = Path(tempfile.mkdtemp(prefix="slmops-peaks-"))
    try:
        base = str(work / f"llama-{args.shape}")
        t0 = time.perf_counter()
        _in_fresh_process(_build_shape, args.shape, base)
        rows = _doc_rows(base, args.row_tokens, 8 * max(p[1] for p in points))
        print(f"{args.shape} shape built in {time.perf_counter() - t0:.0f}s; {len(rows)} rows")
        print(
            f"{'method':6s} {'micro':>5s} {'ckpt':>4s} {'liger':>5s} {'est GB':>7s} "
            f"{'peak GB':>7s} {'est/peak':>8s} {'tokens/s':>9s}"
        )
        for n, point in enumerate(points):
            method, micro, ckpt, liger = point
            head = f"{method:6s} {micro:5d} {'on' if ckpt else 'off':>4s} " + (
                f"{'on' if liger else 'off':>5s}"
            )
            try:
                r = _in_fresh_process(
                    _measure, base, str(work / f"p{n}"), rows, point, args.steps, args.max_length
                )
            except Exception as exc:  # an out-of-memory point is a result too
                print(f"{head} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                continue
            print(
                f"{head} {r['estimated']:7.1f} {r['measured']:7.1f} "
                f"{r['estimated'] / r['measured']:8.2f} {r['tokens_per_second']:9.0f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
