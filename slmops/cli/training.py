"""`slmops refine-tune` and `slmops memory-plan`: train an adapter, and whether a run fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from slmops.cli.common import (
    GeneratorOpt,
    ServingOpt,
    StoreOpt,
    app,
    console,
    new_table,
)
from slmops.errors import ConfigError
from slmops.store.manifest import Trigger


@app.command("refine-tune")
def refine_tune(
    model: Annotated[str, typer.Argument(help="Base model id as served, e.g. tiny-llama.")],
    source: Annotated[
        str, typer.Argument(help="Where it lives: hf://org/name, s3://bucket/prefix or a folder.")
    ],
    revision: Annotated[
        str | None, typer.Option(help="Base revision (default: the source's current one).")
    ] = None,
    adapter: Annotated[str, typer.Option(help="Adapter name in the store.")] = "support-bot",
    dataset: Annotated[
        Path, typer.Option(help="Training data, JSONL: chat messages or prompt/completion rows.")
    ] = Path("examples/support-bot/train.jsonl"),
    dataset_name: Annotated[str, typer.Option(help="Dataset name in the store.")] = "support-bot",
    recipe: Annotated[
        Path | None,
        typer.Option(help="Training recipe, YAML or JSON: TrainConfig's fields (max_steps, ...)."),
    ] = None,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Gate the adapter against the champion.")
    ] = True,
    suites: Annotated[Path, typer.Option(help="Eval suites folder for the gate.")] = Path(
        "examples/support-bot/evals"
    ),
    policy: Annotated[Path | None, typer.Option(help="Gate policy YAML.")] = None,
    serving: ServingOpt = None,
    generator: GeneratorOpt = "auto",
    store: StoreOpt = None,
) -> None:
    """Train (or find) the adapter for a base revision, gate it, promote it if the policy
    says auto_promote and a serving config is set: the refine-tune flow's pipeline, run
    here without Prefect. Exit status: 0 done, 1 the gate failed, 2 bad input or an error."""
    import dataclasses
    import logging

    from slmops.pipelines import refine_tune as pipeline
    from slmops.training.recipe import TrainConfig, load_recipe

    params = pipeline.RefineTuneParams(
        model=model,
        source=source,
        revision=revision,
        adapter=adapter,
        dataset=str(dataset),
        dataset_name=dataset_name,
        config=load_recipe(recipe) if recipe else TrainConfig(),
        store=store,
        gate=gate,
        suites=str(suites),
        policy=str(policy or suites / "policy.yaml"),
        serving=str(serving) if serving else None,
        generator=generator,
    )
    if params.config.gpu_slot:
        console.print(
            f"[yellow]gpu_slot {params.config.gpu_slot!r}: held by refine-tune flow runs "
            "(deployments); this run, without Prefect, holds no slot[/yellow]"
        )
    records: list[Any] = []
    summary: list[str] = []

    def gate_stage(
        params: pipeline.RefineTuneParams, store_uri: str, version: str, trigger: Trigger
    ) -> Any:
        records.append(pipeline.gate(params, store_uri, version, trigger, log=log))
        return records[-1]

    def report_stage(**kw: Any) -> str:
        summary.append(pipeline.report_training(**kw))
        return summary[-1]

    class Say(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.print(escape(record.getMessage()), highlight=False)

    log = logging.getLogger("slmops.pipelines.refine_tune.cli")
    log.propagate = False
    log.handlers = [Say()]
    log.setLevel(logging.INFO)
    stages = dataclasses.replace(
        pipeline.RefineTuneStages(),
        gate=gate_stage,
        report=report_stage,
        warm_start=lambda **kw: pipeline.warm_start_from(**kw, log=log),
        claim=lambda **kw: pipeline.claim_training(**kw, log=log),
        train=lambda **kw: pipeline.train(**kw, log=log),
    )
    manifest = pipeline.run_refine_tune(params, trigger=Trigger.from_cli(), stages=stages, log=log)
    console.print(
        summary[-1] if summary else f"adapter {adapter}@{manifest.version}", highlight=False
    )
    if records:
        verdict = records[-1].verdict
        mark = (
            "[green]gate passed[/green]" if verdict.passed else f"[red]gate {verdict.status}[/red]"
        )
        console.print(
            f"{mark} against {verdict.champion or 'floors only'}: {records[-1].report_uri}"
        )
        for reason in verdict.reasons:
            console.print(f"  - {escape(reason)}", highlight=False)
        if not verdict.passed:
            raise typer.Exit(1)


@app.command("memory-plan")
def memory_plan(
    model: Annotated[
        Path, typer.Argument(help="Base model folder, or its config.json alone (no weights).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Training JSONL (chat rows); its longest row sets the sequence length. "
            "Unset: every row is taken as max-length long. Needs the model's tokenizer."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="lora, qlora or auto.")] = "auto",
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    target_modules: Annotated[str, typer.Option(help="all-linear or q_proj,v_proj,...")] = (
        "all-linear"
    ),
    batch_size: Annotated[int, typer.Option(help="Rows per step per device.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Accumulation steps.")] = 1,
    max_length: Annotated[int, typer.Option(help="Longest sequence in tokens.")] = 2048,
    max_memory_gb: Annotated[
        float | None,
        typer.Option(help="Budget in GB. Unset: this machine's free GPU memory or RAM."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cuda or cpu: where the run will train (not necessarily here).")
    ] = "cuda",
    liger: Annotated[
        bool, typer.Option(help="Plan with liger kernels (GPU, slmops[gpu] installed).")
    ] = True,
    gradient_checkpointing: Annotated[
        str,
        typer.Option(
            help="auto (the plan decides, as refine-tune does when the recipe leaves it "
            "unset), on or off (as a recipe that sets it)."
        ),
    ] = "auto",
) -> None:
    """Will a fine-tuning run fit, and how? The memory plan refine-tune makes before loading
    the base model, from its config.json: checkpointing, micro-batch x accumulation, QLoRA.

    Exit status: 0 it fits (the plan is printed), 1 nothing fits (the knobs to turn are
    printed), 2 bad input."""
    from pydantic import ValidationError

    from slmops.training.memory_plan import (
        GB,
        ModelShape,
        PlanError,
        params_label,
        plan_for,
        plan_markdown,
    )
    from slmops.training.recipe import TrainConfig

    if method not in ("lora", "qlora", "auto"):
        raise ConfigError(f"--method {method!r}: choose lora, qlora or auto")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"--device {device!r}: choose cuda or cpu")
    checkpointing = {"auto": None, "on": True, "off": False}.get(gradient_checkpointing, "?")
    if checkpointing == "?":
        raise ConfigError(f"--gradient-checkpointing {gradient_checkpointing!r}: auto, on or off")
    try:  # the recipe refine-tune would run, so the plan is the one it would make
        config = TrainConfig(
            method=method,
            rank=rank,
            target_modules=target_modules,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_length=max_length,
            max_memory_gb=max_memory_gb,
            gradient_checkpointing=checkpointing,
            liger_kernels=None if liger and device == "cuda" else False,
        )
    except ValidationError as exc:
        option = {"liger_kernels": "liger", "max_memory_gb": "max-memory-gb"}
        problems = "; ".join(
            f"--{option.get(str(e['loc'][0]), str(e['loc'][0]).replace('_', '-'))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"memory-plan: {problems}") from None
    if model.name == "config.json":
        try:
            shape = ModelShape.from_config(json.loads(model.read_text()), str(model))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model}: cannot read it as JSON: {exc}") from exc
    else:
        shape = ModelShape.from_pretrained(model)
    longest = max_length
    if data is not None:
        from slmops.training.datasets import DatasetConfig, chat_token_counter, validate_rows

        folder = model.parent if model.name == "config.json" else model
        try:
            count = chat_token_counter(folder)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--data needs the model's tokenizer to count tokens, and {folder} has none "
                f"that loads ({str(exc).splitlines()[0]}); or leave --data out to plan for "
                "rows of --max-length tokens"
            ) from exc
        lengths: list[int] = []

        def counting(messages: list[dict[str, str]]) -> int:
            lengths.append(count(messages))
            return lengths[-1]

        # Bad rows are refused by refine-tune with their line numbers; here they only do
        # not count.
        validate_rows(data, DatasetConfig(policy="drop", max_tokens=10**9), counting)
        longest = max(lengths)
    budget: tuple[float, str, list[str]] | None = None
    if max_memory_gb is not None:
        budget = (max_memory_gb * GB, "max_memory_gb", [])
    else:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda with no GPU here: give --max-memory-gb (e.g. 22 for a 24 GB "
                "card) to plan for a GPU elsewhere"
            )
    try:
        plan = plan_for(shape, config, device=device, longest_row=longest, budget=budget)
    except PlanError as exc:
        console.print(f"[red]does not fit[/red]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"[green]fits[/green]: {params_label(shape.params)} parameters", highlight=False)
    for line in plan_markdown(plan, table=False):
        console.print(escape(line), highlight=False)
    table = new_table("checkpointing", "micro-batch x accumulation", "estimated GB", "fits", "time")
    for o in plan.options:
        chosen = (o.micro_batch, o.gradient_checkpointing) == (
            plan.micro_batch,
            plan.gradient_checkpointing,
        )
        table.add_row(
            "on" if o.gradient_checkpointing else "off",
            f"{o.micro_batch} x {o.grad_accum}" + (" (chosen)" if chosen else ""),
            f"{o.total_gb:.2f}",
            "[green]yes[/green]" if o.fits else "[red]no[/red]",
            f"{o.relative_time:.2f}x",
        )
    console.print(table)
