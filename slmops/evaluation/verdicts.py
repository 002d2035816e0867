"""An adapter through the gate: resolve the candidate and the champion, answer the suites on
their base revisions (answers reused by fingerprint), judge them, and store the verdict with a
lookup per (candidate, champion) pair that promotion reads (`find_verdict`)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from slmops.errors import ConfigError
from slmops.evaluation.answers import StoredAnswers, fingerprint
from slmops.evaluation.gate import (
    CaseResult,
    Progress,
    Retrieve,
    Verdict,
    known_metrics,
    run_gate,
)
from slmops.evaluation.policy import GatePolicy, load_policy
from slmops.evaluation.progress import Heartbeat
from slmops.evaluation.report import chart, markdown
from slmops.suites.spec import Suites, load_suites
from slmops.generation import Generator, GeneratorBackend, TransformersBackend, Weights
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, CHALLENGER, CHAMPION, EVALS, LATEST, VersionedArtifact

log = logging.getLogger("slmops.gate")
VERDICT = "verdict"  # lookup kind: "<candidate>.vs.<champion|base|none>" -> eval run


class GateRecord(BaseModel):
    """A stored verdict: where it lives and what it decided."""

    run: str
    verdict: Verdict
    report_uri: str


def champion_label(store: ObjectStore, adapter: str, champion: str) -> str | None:
    """What `champion` means now: a version, 'base', or None (floors only)."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    if champion == "none":
        return None
    if champion == "base":
        return "base"
    if champion == "auto":
        alias = art.get_alias(CHAMPION)
        return alias.version if alias else None
    return art.version_of(champion)


def evaluate_adapter(
    store: ObjectStore,
    adapter: str,
    version: str = LATEST,
    *,
    champion: str = "auto",
    suites: str | Path,
    policy: str | Path,
    cache_dir: Path,
    trigger: Trigger | None = None,
    on_progress: Progress | None = None,
    make_generator: Callable[[Path, Path | None], Generator] | None = None,
    backend: GeneratorBackend | None = None,
    set_challenger: bool = True,
    reuse_answers: bool = True,
    say: Callable[[str], None] | None = None,
) -> GateRecord:
    """Run the gate for `adapter@version` against `champion` and store the verdict.

    champion: "auto" (the `champion` alias if set, else floors only), "none", "base" (the
    base model alone), or a version or alias of the same adapter. Bad input (suites, policy,
    versions, a champion on another base model) raises ConfigError before any model runs. A
    champion on an older revision of the base answers on that revision.

    backend: what generates the answers (default: transformers in this process); the
    serving engine's is `slmops.serving.answering.ServedBackend` (the candidate on the replica
    set of its base revision, under its versioned name). The verdict records which.

    reuse_answers: answers the same weights gave to the same prompts on the same backend
    before (stored under answers/, see slmops.evaluation.answers) are not generated again;
    False answers everything afresh. A `make_generator` of the caller's own is never cached.

    say: where progress lines go (at least one every 30 s while answering, with the time
    left); default: the `slmops.gate` logger.
    """
    from slmops.base_models import checkout

    loaded = load_suites(suites)
    gate_policy = load_policy(policy, known_metrics(loaded))
    art = VersionedArtifact(store, ADAPTERS, adapter)
    cand_version = art.version_of(version)
    cand_manifest = art.manifest(cand_version)
    cand_base = cand_manifest.trained_on()
    label = champion_label(store, adapter, champion)
    if label == cand_version:
        raise ConfigError(
            f"{adapter} version {cand_version} is the champion already: there is nothing to gate"
        )
    champ_base = cand_base
    if label not in (None, "base"):
        champ_base = art.manifest(label).trained_on()
        if champ_base.name != cand_base.name:
            raise ConfigError(
                f"candidate {adapter}@{cand_version} is trained on base model {cand_base.name}, "
                f"the champion {label} on {champ_base.name}: a different base model is a new "
                "deployment, not a candidate. Gate it against champion 'base' or 'none'"
            )
    _, base_dir = checkout(cand_base.name, cand_base.uri or "", cand_base.version, cache_dir)
    # A new base revision's adapter is judged against what production runs: the champion on
    # its own revision (both answer the same cases).
    champ_base_dir = base_dir
    if champ_base.version != cand_base.version:
        _, champ_base_dir = checkout(
            champ_base.name, champ_base.uri or "", champ_base.version, cache_dir
        )
    work = Path(tempfile.mkdtemp(prefix=f"slmops-gate-{adapter}-"))
    try:
        cand_dir = work / "candidate"
        art.download(cand_version, cand_dir)
        champ_dir: Path | None = None
        if label not in (None, "base"):
            champ_dir = work / "champion"
            art.download(label, champ_dir)

        engine = backend or TransformersBackend()

        def build(
            base: InputRef, base_path: Path, weights: Manifest | None, folder: Path | None
        ) -> Generator:
            if make_generator is not None:
                return make_generator(base_path, folder)
            answering = Weights(base.name, base.version or "", base_path, weights, folder)
            if not reuse_answers:
                return engine.generator(answering)
            return stored_answers(store, engine, answering)

        cand_gen = build(cand_base, base_dir, cand_manifest, cand_dir)
        champ_gen = None
        if label == "base":
            champ_gen = build(champ_base, champ_base_dir, None, None)
        elif label is not None:
            champ_gen = build(champ_base, champ_base_dir, art.manifest(label), champ_dir)
        retrieve, index_info = index_retriever(store, loaded)
        what = f"gate {adapter}@{cand_version}"
        with Heartbeat(say or log.info, what, inner=on_progress) as beat:
            verdict, cases = run_gate(
                loaded,
                gate_policy,
                cand_gen,
                champ_gen,
                adapter=adapter,
                version=cand_version,
                champion_label=label,
                retrieve=retrieve,
                on_progress=beat,
            )
        verdict.base_model, verdict.base_revision = cand_base.name, cand_base.version
        verdict.index = index_info or None
        return _store_verdict(
            store, verdict, cases, loaded, gate_policy, work / "report", trigger, set_challenger
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stored_answers(
    store: ObjectStore, backend: GeneratorBackend, weights: Weights
) -> StoredAnswers:
    """`backend`'s answers with `weights`, reusing what the same weights answered on the same
    backend before (the generator is built only if some prompt has no stored answer)."""
    files = None if weights.adapter is None else [(f.path, f.sha256) for f in weights.adapter.files]
    identity = backend.identity(weights)
    key = fingerprint(
        base=weights.base, base_revision=weights.revision, adapter_files=files, identity=identity
    )
    describe = {
        **identity,
        "base": str(weights.base_path),
        "adapter": str(weights.folder) if weights.folder else None,
        "decoding": "greedy",
    }
    return StoredAnswers(store, key, lambda: backend.generator(weights), describe)


def index_retriever(store: ObjectStore, suites: Suites) -> tuple[Retrieve | None, dict[str, str]]:
    indexes = {s.index for s in suites.config.suites.values() if s.index}
    if not indexes:
        return None, {}
    from slmops.rag.retrieval import load_index

    loaded = {name: load_index(name, store=store) for name in sorted(indexes)}
    info = {"name": ", ".join(loaded), "version": ", ".join(i.version for i in loaded.values())}

    def retrieve(
        index: str, query: str, k: int, min_similarity: float | None = None
    ) -> list[tuple[str, str]]:
        if not query.strip():
            return []
        hits = loaded[index].retrieve(query, k, min_similarity=min_similarity)
        return [(hit.source, hit.text) for hit in hits]

    return retrieve, info


def _store_verdict(
    store: ObjectStore,
    verdict: Verdict,
    cases: list[CaseResult],
    suites: Suites,
    policy: GatePolicy,
    folder: Path,
    trigger: Trigger | None,
    set_challenger: bool,
) -> GateRecord:
    folder.mkdir(parents=True, exist_ok=True)
    chart(verdict, folder / "comparison.png")
    (folder / "report.json").write_text(verdict.model_dump_json(indent=1))
    (folder / "report.md").write_text(markdown(verdict, "comparison.png"))
    with open(folder / "answers.jsonl", "w", encoding="utf-8") as fh:
        for case in cases:
            fh.write(case.model_dump_json() + "\n")
    evals = VersionedArtifact(store, EVALS, verdict.adapter)
    manifest = Manifest(
        kind="eval-report",
        name=verdict.adapter,
        inputs=[
            InputRef(kind="adapter", name=verdict.adapter, version=verdict.version),
            InputRef(kind="champion", name=verdict.adapter, version=verdict.champion or "none"),
            InputRef(kind="eval-suites", name=suites.folder),
        ],
        config={"policy": policy.model_dump(), "generation": verdict.generation},
        metrics={
            "passed": verdict.passed,
            **{f"{m.metric}.candidate": round(m.candidate, 4) for m in verdict.metrics},
        },
        timings=verdict.timings,
        trigger=trigger or Trigger(),
    )
    key = f"{verdict.version}.vs.{verdict.champion or 'none'}"
    stored = evals.publish(manifest, folder, lookup={VERDICT: key})
    event = "gate.passed" if verdict.passed else "gate.failed"
    AuditLog(store).record(
        event,
        f"slmops.adapter.{verdict.adapter}",
        trigger=trigger,
        version=verdict.version,
        champion=verdict.champion,
        eval_run=stored.version,
        reasons=verdict.reasons,
    )
    if verdict.passed and set_challenger:
        VersionedArtifact(store, ADAPTERS, verdict.adapter).set_alias(
            CHALLENGER,
            verdict.version,
            reason=f"passed the gate against {verdict.champion or 'floors only'}",
            trigger=trigger,
        )
    report_uri = f"{store.uri}/{evals.version_prefix(stored.version)}/report.md"
    return GateRecord(run=stored.version, verdict=verdict, report_uri=report_uri)


def auto_promote(policy: str | Path) -> bool:
    """Does the gate policy let a passing adapter be promoted without a person?"""
    return bool(load_policy(policy, known_metrics=None).auto_promote)


def find_verdict(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> Verdict | None:
    """The stored verdict for `adapter@version` against `champion` (a version, 'base' or None)."""
    evals, found = _verdict_run(store, adapter, version, champion)
    if found is None:
        return None
    return Verdict.model_validate(json.loads(evals.read_file(found.version, "report.json")))


def _verdict_run(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> tuple[VersionedArtifact, Manifest | None]:
    evals = VersionedArtifact(store, EVALS, adapter)
    return evals, evals.find(VERDICT, f"{version}.vs.{champion or 'none'}")


def verdict_answers(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> list[CaseResult] | None:
    """Every case's answer and scores behind that verdict (its answers.jsonl), or None when
    there is no verdict or it was stored without them."""
    evals, found = _verdict_run(store, adapter, version, champion)
    if found is None or "answers.jsonl" not in {f.path for f in found.files}:
        return None
    text = evals.read_file(found.version, "answers.jsonl").decode("utf-8")
    return [CaseResult.model_validate_json(line) for line in text.splitlines() if line.strip()]
