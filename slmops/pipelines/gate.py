"""A gate run: resolve the candidate and the champion, open the suites, the policy, the
indexes the knowledge suites retrieve from and the backend that answers; answer the suites on
each model's base revision (answers reused by fingerprint), judge them (slmops.evaluation.gate)
and store the verdict (slmops.evaluation.verdicts), which promotion reads.

    from slmops.pipelines.gate import evaluate_adapter
    record = evaluate_adapter(store, "support-bot", "latest", champion="auto",
                              suites="examples/support-bot/evals",
                              policy="examples/support-bot/evals/policy.yaml",
                              cache_dir=Path("~/.cache/slmops").expanduser())
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from slmops.errors import ConfigError
from slmops.evaluation.answers import stored_answers
from slmops.evaluation.gate import Progress, known_metrics, run_gate
from slmops.evaluation.policy import load_policy
from slmops.evaluation.progress import Heartbeat
from slmops.evaluation.verdicts import GateRecord, champion_label, store_verdict
from slmops.generation import Generator, GeneratorBackend, TransformersBackend, Weights
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, LATEST, VersionedArtifact
from slmops.suites.prompts import Retrieve
from slmops.suites.spec import Suites, load_suites

log = logging.getLogger("slmops.gate")


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
        return store_verdict(
            store, verdict, cases, loaded, gate_policy, work / "report", trigger, set_challenger
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
