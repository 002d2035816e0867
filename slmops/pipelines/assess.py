"""An assessment end to end: answer the cases with every arm, decide, store the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slmops.assess.arms import few_shot_prompt, measure_arm, pick_examples, summarize_arms
from slmops.assess.costs import estimate_costs, history
from slmops.assess.decision import decide, term_fertility
from slmops.assess.results import ArmResult, Assessment, CaseOutcome
from slmops.assess.task import ARMS, CHART, AssessTask, Progress
from slmops.errors import ConfigError
from slmops.generation import Generator, GeneratorBackend, Prompt, TransformersBackend, Weights
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, CHAMPION, EVALS, LATEST, VersionedArtifact
from slmops.suites.prompts import with_context
from slmops.suites.spec import Case, load_suites


def _first_per_suite(cases: list[Case], n: int) -> set[str]:
    seen: dict[str, int] = {}
    kept = set()
    for case in cases:
        seen[case.suite] = seen.get(case.suite, 0) + 1
        if seen[case.suite] <= n:
            kept.add(case.id)
    return kept


def run_assessment(
    store: ObjectStore,
    task: AssessTask,
    cache_dir: Path,
    *,
    on_progress: Progress | None = None,
    make_generator: Callable[[Path, Path | None], Generator] | None = None,
    backend: GeneratorBackend | None = None,
) -> AssessRun:
    """Answer every case with every arm, score, compare, price and decide. `backend`: what
    answers (default transformers in this process; `slmops.serving.answering.ServedBackend`:
    the prompt-only and RAG arms on the base model as vLLM serves it, the fine-tuned arms on
    the champion's versioned name), so the economics are measured on the serving engine."""
    import tempfile

    from slmops.base_models import checkout
    from slmops.rag.retrieval import load_index

    t0 = time.perf_counter()
    suites = load_suites(task.path(task.suites))
    cases = suites.cases
    if task.max_cases_per_suite:
        kept = _first_per_suite(cases, task.max_cases_per_suite)
        cases = [c for c in cases if c.id in kept]
    knowledge = [s for s in suites.config.suites.values() if s.kind == "knowledge"]
    index_name = task.index or next((s.index for s in knowledge if s.index), None)
    chars = next((s.context_chars for s in knowledge), None)  # as the gate shows the chunks
    # ... and as the gate serves them: no chunks for a question nothing in the docs is near
    min_similarity = next((s.min_similarity for s in knowledge), None)
    examples = pick_examples(task.path(task.examples), task.few_shot)

    art = VersionedArtifact(store, ADAPTERS, task.adapter)
    champion_alias = art.get_alias(CHAMPION)
    if champion_alias is None:
        raise ConfigError(
            f"adapter {task.adapter} has no champion: the fine-tuned arm measures the adapter "
            "in production. Train and promote one first (refine-tune, then promote-adapter)"
        )
    champion = art.manifest(champion_alias.version)
    base = champion.trained_on()
    _, base_dir = checkout(base.name, base.uri or "", base.version, cache_dir)

    index = load_index(index_name, store=store) if index_name else None
    retrieved_all: list[list[tuple[str, str]]] = [
        [
            (h.source, h.text)
            for h in index.retrieve(
                c.messages[-1]["content"], task.k, min_similarity=min_similarity
            )
        ]
        if index and c.messages[-1]["content"].strip()
        else []
        for c in cases
    ]
    prompts: dict[str, list[Prompt]] = {
        "prompt": [c.messages for c in cases],
        "prompt+examples": [few_shot_prompt(c.messages, examples) for c in cases],
    }
    if index is not None:
        rag = [
            with_context(c.messages, hits, chars)
            for c, hits in zip(cases, retrieved_all, strict=True)
        ]
        prompts["rag"] = rag
        prompts["fine-tuned+rag"] = rag
    prompts["fine-tuned"] = prompts["prompt"]
    sources: dict[str, list[list[str] | None]] = {
        arm: (
            [[s for s, _ in hits] for hits in retrieved_all]
            if arm.endswith("rag")
            else [None] * len(cases)
        )
        for arm in prompts
    }
    timings = {"prepare": time.perf_counter() - t0}
    engine = backend or TransformersBackend()

    def build(base_path: Path, folder: Path | None) -> Generator:
        if make_generator is not None:
            return make_generator(base_path, folder)
        adapter = champion if folder is not None else None
        weights = Weights(base.name, base.version or "", base_path, adapter, folder)
        return engine.generator(weights)

    generation: dict[str, Any] = {}
    outcomes: dict[str, list[CaseOutcome]] = {}
    stats: dict[str, dict[str, float]] = {}
    truncated: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="slmops-assess-") as work:
        adapter_dir = Path(work) / "adapter"
        art.download(champion.version, adapter_dir)
        for with_adapter in (False, True):
            generator = build(base_dir, adapter_dir if with_adapter else None)
            tokenizer = getattr(generator, "tokenizer", None)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(base_dir)
            for arm in ARMS:
                if arm not in prompts or arm.startswith("fine-tuned") != with_adapter:
                    continue
                before = getattr(generator, "truncated", 0)
                outcomes[arm], stats[arm] = measure_arm(
                    arm,
                    generator,
                    tokenizer,
                    prompts[arm],
                    suites,
                    cases,
                    sources[arm],
                    on_progress,
                )
                truncated[arm] = getattr(generator, "truncated", 0) - before
                generation[arm] = generator.describe()
                timings[f"arm.{arm}"] = stats[arm]["seconds"]
    t1 = time.perf_counter()
    arms = summarize_arms(outcomes, task.confidence, task.bootstrap, task.seed)
    for arm, result in arms.items():
        result.prompt_tokens = stats[arm]["prompt_tokens"]
        result.answer_tokens = stats[arm]["answer_tokens"]
        result.seconds = stats[arm]["seconds"]
        result.truncated = truncated[arm]
        result.cut = int(stats[arm]["cut"])
    for arm in ARMS:
        if arm not in arms:
            arms[arm] = ArmResult(arm=arm, measured=False, why_not="no RAG index in the task")
    ordered = {arm: arms[arm] for arm in ARMS}
    dataset = next((i.name for i in champion.inputs if i.kind == "dataset"), None)
    seen = history(store, base.name, dataset, index_name)
    economy = estimate_costs(task, ordered, [art.manifest(v) for v in art.versions()], seen)
    glossary: dict[str, list[str]] = {}
    for spec in suites.config.suites.values():
        glossary.update(spec.glossary or {})
    fertility = term_fertility(tokenizer, glossary, suites.config.system)
    recommendation, summary, steps = decide(task, ordered, economy, suites, fertility)
    timings["judge"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.suite] = counts.get(c.suite, 0) + 1
    assessment = Assessment(
        task=task.name,
        recommendation=recommendation,
        summary=summary,
        steps=steps,
        arms=list(ordered.values()),
        economy=economy,
        threshold=task.threshold,
        confidence=task.confidence,
        cases=len(cases),
        suites=counts,
        base_model={"name": base.name, "revision": base.version, "source": base.uri},
        adapter={"name": task.adapter, "version": champion.version},
        index={"name": index_name, "version": index.version if index else None},
        created_at=datetime.now(UTC).isoformat(),
        timings=timings,
        generation=generation,
    )
    return AssessRun(
        assessment=assessment, outcomes=[o for arm in ARMS for o in outcomes.get(arm, [])]
    )


class AssessRun(BaseModel):
    """An assessment and every case's answer per arm (stored as answers.jsonl)."""

    assessment: Assessment
    outcomes: list[CaseOutcome]


def store_assessment(
    store: ObjectStore, run: AssessRun, folder: Path, trigger: Trigger | None = None
) -> str:
    """Write report.json, report.md, the chart and the answers, publish them under
    evals/assess-<task>/ and point its `latest` alias at them; returns the version."""
    from slmops.assess.report import chart, markdown

    result = run.assessment
    folder.mkdir(parents=True, exist_ok=True)
    chart(result, folder / CHART)
    (folder / "report.json").write_text(result.model_dump_json(indent=1))
    (folder / "report.md").write_text(markdown(result, CHART))
    with open(folder / "answers.jsonl", "w", encoding="utf-8") as fh:
        for outcome in run.outcomes:
            fh.write(outcome.model_dump_json() + "\n")
    art = VersionedArtifact(store, EVALS, f"assess-{result.task}")
    manifest = Manifest(
        kind="assessment",
        name=f"assess-{result.task}",
        inputs=[
            InputRef(
                kind="adapter", name=str(result.adapter["name"]), version=result.adapter["version"]
            ),
            InputRef(
                kind="base-model",
                name=str(result.base_model["name"]),
                version=result.base_model["revision"],
            ),
            *(
                [
                    InputRef(
                        kind="index",
                        name=str(result.index["name"]),
                        version=result.index["version"],
                    )
                ]
                if result.index["name"]
                else []
            ),
        ],
        config={"threshold": result.threshold, "confidence": result.confidence},
        metrics={
            "recommendation": result.recommendation,
            **{
                f"{a.arm}.failure": round(a.failure["all"].rate, 4)
                for a in result.arms
                if a.measured
            },
        },
        timings=result.timings,
        trigger=trigger or Trigger(),
    )
    stored = art.publish(manifest, folder)
    art.set_alias(LATEST, stored.version, reason=result.recommendation)
    AuditLog(store).record(
        "assess.completed",
        art.resource_id,
        trigger=trigger,
        version=stored.version,
        recommendation=result.recommendation,
    )
    return stored.version
