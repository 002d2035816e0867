"""Fine-tuning on the tiny base model: real training that measurably learns, QLoRA on CPU,
resume from a stored checkpoint, idempotency, lineage, and faults that publish nothing."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest
import yaml

from slmops.base_models import WatchedModel, current_revision
from slmops.errors import ConfigError
from slmops.evaluation.answers import stored_answers
from slmops.generation import Generator, Prompt, TransformersBackend, Weights
from slmops.store.base import ObjectStore
from slmops.store.claims import ClaimRecord
from slmops.store.local import LocalStore
from slmops.store.manifest import Manifest
from slmops.store.s3 import S3Store
from slmops.store.versions import ADAPTERS, VersionedArtifact
from slmops.training import adapters
from slmops.training.datasets import chat_token_counter
from slmops.training.memory_plan import USABLE, MemoryPlan, ModelShape, PlanError, estimate_peak
from slmops.training.trainer import (
    TrainConfig,
    TrainingError,
    TrainResult,
    finalize_adapter,
    train_adapter,
)
from tests.helpers import EVALS, EXAMPLE, TEST_RECIPE, invoke, latest_artifact, task_runs

# The session's adapter (the suite's recipe + its gate, a few minutes on 2 cores) is trained
# by the first test that needs it, which may be one of these when this file runs alone.
pytestmark = pytest.mark.timeout(1800)

ROWS = [json.loads(line)["messages"] for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]


def test_training_teaches_the_answer_format(trained: tuple[S3Store, Manifest, list[str]]) -> None:
    _, manifest, _ = trained
    metrics = manifest.metrics
    # Held-out prompts: the base never answers in JSON; the adapter mostly does. (Two in five
    # held-out rows carry a retrieved passage; on a few of those the 3M-parameter model starts
    # a memorised answer and loses the thread: 36 of 41 valid with the suite's recipe.)
    assert metrics["base_json_valid"] <= 0.1
    assert metrics["json_valid"] >= 0.8, metrics
    curve = metrics["loss_curve"]
    assert curve[0][1] - curve[-1][1] > 1.5, "loss did not fall"
    assert metrics["tokens_seen"] > 10_000 and metrics["steps"] == TEST_RECIPE["max_steps"]


def test_the_adapter_has_full_lineage(
    trained: tuple[S3Store, Manifest, list[str]], tiny_base: Path
) -> None:
    _, manifest, _ = trained
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    data = next(i for i in manifest.inputs if i.kind == "dataset")
    assert base.name == "tiny-llama" and base.uri == str(tiny_base)
    assert base.version == current_revision(WatchedModel(name="x", source=str(tiny_base))).revision
    assert data.name == "support-bot" and data.version and data.sha256
    assert manifest.config["rank"] == 16 and manifest.config["training_key"]
    assert manifest.config["served_base_model"] == "tiny-llama"
    assert manifest.resources["method"] == "lora" and manifest.resources["cpu_seconds"] > 0
    assert manifest.resources["estimated_cost_usd"] > 0
    assert manifest.code.version and manifest.trigger.flow_run_id
    # The memory plan of the run, and what it measured: the tiny model on CPU trains as
    # configured (no checkpointing, the whole batch at once).
    plan = MemoryPlan.model_validate(manifest.resources["memory_plan"])
    assert (plan.method, plan.device, plan.gradient_checkpointing) == ("lora", "cpu", False)
    batch = TEST_RECIPE["batch_size"]
    assert (plan.micro_batch, plan.grad_accum, plan.effective_batch) == (batch, 1, batch)
    assert 0 < plan.longest_row_tokens <= 512 and plan.measured_peak_gb
    assert plan.estimate.total_gb <= plan.usable_gb


def test_the_adapter_loads_in_peft_as_vllm_expects(
    trained: tuple[S3Store, Manifest, list[str]], tiny_base: Path, tmp_path: Path
) -> None:
    store, manifest, _ = trained
    folder = tmp_path / "adapter"
    VersionedArtifact(store, ADAPTERS, "support-bot").download(manifest.version, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert not config.get("modules_to_save") and config["r"] == 16
    assert (folder / "training" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(folder))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_the_same_inputs_train_once(
    trained: tuple[S3Store, Manifest, list[str]], tiny_base: Path
) -> None:
    from flows.refine_tune import RefineTuneParams, refine_tune

    store, manifest, first_tasks = trained
    assert any(name.startswith("train-adapter") for name in first_tasks)
    # Another thread count and checkpoint interval do not change the weights: same key.
    config = TrainConfig(**TEST_RECIPE, threads=1, save_steps=7)
    state = refine_tune(
        RefineTuneParams(model="tiny-llama", source=str(tiny_base), store=store.uri, config=config),
        return_state=True,
    )
    assert state.result().version == manifest.version
    again = task_runs(state.state_details.flow_run_id)
    assert not any(name.startswith(("train-adapter", "claim-training")) for name in again), again
    assert VersionedArtifact(store, ADAPTERS, "support-bot").versions() == [manifest.version]

    report = asyncio.run(latest_artifact("training-report-support-bot"))
    assert "already trained" in report and "### Memory plan" in report
    batch = TEST_RECIPE["batch_size"]
    assert f"micro-batch {batch} x 1 accumulation = batch {batch}" in report
    assert "(chosen)" in report


def test_a_release_that_changes_only_the_model_card_trains_nothing(
    trained: tuple[S3Store, Manifest, list[str]], tiny_base: Path, tmp_path: Path
) -> None:
    """A new revision whose weights, config and tokenizer are the adapter's base's (the model
    card and licence changed) finds the adapter by its key: no training, no warm start."""
    import shutil

    from flows.refine_tune import RefineTuneParams, refine_tune
    from slmops.base_models import WatchedModel, current_revision, weights_digest

    store, manifest, _ = trained
    release = tmp_path / "tiny-llama"
    shutil.copytree(tiny_base, release)
    (release / "README.md").write_text("# tiny-llama\n\nRelease 2: the model card, rewritten.\n")
    (release / "LICENSE").write_text("Apache-2.0\n")
    r2 = current_revision(WatchedModel(name="tiny-llama", source=str(release))).revision
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    assert r2 != base.version and base.sha256 == weights_digest(release)
    state = refine_tune(
        RefineTuneParams(
            model="tiny-llama",
            source=str(release),
            store=store.uri,
            config=TrainConfig(**TEST_RECIPE),  # warm_start_steps set: still no warm start
            gate=False,
        ),
        return_state=True,
    )
    assert state.result().version == manifest.version
    tasks = task_runs(state.state_details.flow_run_id)
    assert not any(name.startswith(("train-adapter", "claim-training")) for name in tasks), tasks


def test_the_pipeline_runs_without_prefect_from_the_cli(
    trained: tuple[S3Store, Manifest, list[str]], tiny_base: Path, tmp_path: Path
) -> None:
    """`slmops refine-tune`: the flow's pipeline in-process. On a model-card-only release of
    the session's base with the session's recipe it finds the session's adapter by its key."""
    import shutil

    store, manifest, _ = trained
    release = tmp_path / "tiny-llama"
    shutil.copytree(tiny_base, release)
    (release / "README.md").write_text("# tiny-llama\n\nRelease 3: the model card only.\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TEST_RECIPE))
    code, out = invoke(
        "refine-tune", "tiny-llama", str(release), "--recipe", str(recipe), "--no-gate",
        "--store", store.uri,
    )  # fmt: skip
    assert code == 0, out
    assert f"adapter support-bot version {manifest.version} was already trained" in out, out
    assert f"adapter support-bot version {manifest.version}: already trained" in out, out
    recipe.write_text("max_steps: 10\nlearning_rte: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown setting\(s\) \['learning_rte'\]"):
        invoke("refine-tune", "tiny-llama", str(release), "--recipe", str(recipe))
    recipe.write_text("max_steps: many\n")
    with pytest.raises(
        ConfigError, match=r"recipe\.yaml: max_steps: Input should be a valid integer"
    ):
        invoke("refine-tune", "tiny-llama", str(release), "--recipe", str(recipe))


def test_qlora_trains_on_cpu_with_bitsandbytes(tiny_base: Path, tmp_path: Path) -> None:
    result = train_adapter(
        tiny_base,
        ROWS[:32],
        [],
        tmp_path,
        TrainConfig(method="qlora", max_steps=4, batch_size=4),
        served_model="tiny-llama",
    )
    assert result.method == "qlora" and result.steps == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_padding_free_batches_train_as_padded_ones_do_and_never_truncate(
    tiny_base: Path, tmp_path: Path
) -> None:
    def run(name: str, **settings: object) -> TrainResult:
        config = TrainConfig(max_steps=3, batch_size=8, save_steps=3, **settings)
        return train_adapter(tiny_base, ROWS[:24], [], tmp_path / name, config, served_model="m")

    flat, padded = run("flat"), run("padded", padding_free=False)
    assert flat.padding_free and not padded.padding_free
    # The same rows and seed: attention stops at each row's end, so the loss is the padded
    # one (up to float rounding), and both count the rows' tokens, not padding.
    assert [loss for _, loss in flat.loss_curve] == pytest.approx(
        [loss for _, loss in padded.loss_curve], rel=1e-3
    )
    assert flat.tokens_seen == padded.tokens_seen
    # A row that reaches max_length may be truncated: padded batches, and the plan says why.
    short = run("short", max_length=max(map(chat_token_counter(tiny_base), ROWS[:24])))
    assert not short.padding_free
    assert short.memory_plan and any("padded batches" in r for r in short.memory_plan.reasons)


def test_a_tight_memory_budget_splits_the_batch_and_keeps_its_size(
    tiny_base: Path, tmp_path: Path
) -> None:
    # A budget between what micro-batches of 8 and of 4 need: the plan must split the batch.
    longest = max(map(chat_token_counter(tiny_base), ROWS[:32]))

    def need(micro: int) -> float:
        return estimate_peak(
            ModelShape.from_pretrained(tiny_base),
            method="lora",
            device="cpu",
            rank=16,
            target_modules="all-linear",
            micro_batch=micro,
            seq_len=longest,
            gradient_checkpointing=False,
            liger=False,
        ).total_gb

    budget = (need(4) + need(8)) / 2 / USABLE
    result = train_adapter(
        tiny_base,
        ROWS[:32],
        [],
        tmp_path,
        TrainConfig(max_steps=4, batch_size=8, save_steps=4, max_length=512, max_memory_gb=budget),
        served_model="tiny-llama",
    )
    plan = result.memory_plan
    assert plan is not None and (plan.micro_batch, plan.grad_accum) == (4, 2), plan
    state = json.loads((tmp_path / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    # 4 optimizer steps of 8 rows each went through all 32 rows once.
    assert state["train_batch_size"] == 4 and state["epoch"] == pytest.approx(1.0)


def test_a_run_that_cannot_fit_fails_before_loading_the_model(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    loaded: list[object] = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(PlanError, match=r"does not fit in memory.*Turn: method: qlora"):
        train_adapter(
            tiny_base,
            ROWS[:32],
            [],
            tmp_path,
            TrainConfig(max_steps=2, max_memory_gb=0.2),
            served_model="tiny-llama",
        )
    assert loaded == [] and not (tmp_path / "adapter").exists()


def test_a_killed_run_resumes_from_its_stored_checkpoint(tiny_base: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    config = TrainConfig(max_steps=6, save_steps=3, batch_size=4)

    def save_then_die(folder: Path, step: int) -> None:
        adapters.save_checkpoint(store, "bot", "key1", folder)
        raise SystemExit("worker lost")  # the pod is killed right after the checkpoint

    with pytest.raises(SystemExit):
        train_adapter(
            tiny_base,
            ROWS[:48],
            [],
            tmp_path / "run1",
            config,
            served_model="tiny-llama",
            on_checkpoint=save_then_die,
        )
    checkpoint = adapters.latest_checkpoint(store, "bot", "key1", tmp_path / "resume")
    assert checkpoint is not None and checkpoint.name == "checkpoint-3"
    result = train_adapter(
        tiny_base,
        ROWS[:48],
        [],
        tmp_path / "run2",
        config,
        served_model="tiny-llama",
        resume_from=checkpoint,
    )
    assert result.resumed_from_step == 3 and result.steps == 6
    assert [step for step, _ in result.loss_curve] == [4, 5, 6]


def test_a_corrupt_adapter_is_refused(tiny_base: Path, tmp_path: Path) -> None:
    train_adapter(
        tiny_base,
        ROWS[:16],
        [],
        tmp_path,
        TrainConfig(max_steps=1, batch_size=4),
        served_model="tiny-llama",
    )
    adapter = tmp_path / "adapter"
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(TrainingError, match="unreadable"):
        finalize_adapter(adapter, "tiny-llama")
    weights.unlink()
    with pytest.raises(TrainingError, match=r"missing adapter_model\.safetensors"):
        finalize_adapter(adapter, "tiny-llama")


def test_a_full_disk_while_storing_leaves_nothing_visible(
    store: ObjectStore, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = train_adapter(
        tiny_base,
        ROWS[:16],
        [],
        tmp_path,
        TrainConfig(max_steps=1, batch_size=4),
        served_model="tiny-llama",
    )
    art = VersionedArtifact(store, ADAPTERS, "bot")
    good = art.publish(Manifest(kind="adapter", name="bot"), {"adapter_config.json": b"{}"})
    art.set_alias("latest", good.version)
    real_put_file = type(store).put_file
    calls = {"n": 0}

    def disk_full(self: ObjectStore, key: str, path: Path, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put_file(self, key, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(type(store), "put_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        adapters.publish_adapter(
            store,
            "bot",
            tmp_path / "adapter",
            result,
            adapters.Lineage(
                key="k",
                base_model="tiny-llama",
                base_revision="r1",
                base_source=str(tiny_base),
                dataset="d",
                dataset_version="v",
                dataset_sha="s",
                config=TrainConfig(),
            ),
        )
    assert art.versions() == [good.version]
    assert art.resolve("latest").version == good.version


def test_a_superseded_revision_is_not_trained_on(
    prefect_harness: None, tiny_base: Path, tmp_path: Path
) -> None:
    from flows.refine_tune import RefineTuneParams, refine_tune

    state = refine_tune(
        RefineTuneParams(
            model="tiny-llama",
            source=str(tiny_base),
            revision="0" * 40,
            store=str(tmp_path / "store"),
            gate=False,  # (no index to gate with here: the gate's preflight is not the subject)
        ),
        return_state=True,
    )
    assert state.is_failed() and "not the requested 000000000000" in str(state.message)
    assert "superseded" in str(state.message)
    with pytest.raises(ConfigError, match="does not exist"):
        refine_tune(
            RefineTuneParams(
                model="tiny-llama",
                source=str(tmp_path / "no-model"),
                store=str(tmp_path / "store"),
                gate=False,
            )
        )


def test_an_adapter_is_never_retrained_on_another_base_model(
    prefect_harness: None, tiny_base: Path, tmp_path: Path
) -> None:
    from flows.refine_tune import RefineTuneParams, refine_tune

    store = LocalStore(tmp_path / "store")
    art = VersionedArtifact(store, ADAPTERS, "support-bot")
    from slmops.store.manifest import InputRef

    trained_on_other = art.publish(
        Manifest(
            kind="adapter",
            name="support-bot",
            inputs=[InputRef(kind="base-model", name="qwen-0.5b", version="abc")],
        ),
        {"adapter_model.safetensors": b"w"},
    )
    art.set_alias("latest", trained_on_other.version)
    with pytest.raises(ConfigError, match=r"trained on base model 'qwen-0\.5b', not 'tiny-llama'"):
        refine_tune(RefineTuneParams(model="tiny-llama", source=str(tiny_base), store=store.uri))
    assert art.versions() == [trained_on_other.version]


def test_a_refine_tune_run_that_cannot_fit_stores_nothing_and_releases_its_key(
    prefect_harness: None, tiny_base: Path, tmp_path: Path
) -> None:
    from flows.refine_tune import RefineTuneParams, refine_tune

    store = LocalStore(tmp_path / "store")
    params = RefineTuneParams(
        model="tiny-llama",
        source=str(tiny_base),
        store=store.uri,
        config=TrainConfig(max_memory_gb=0.2),
        gate=False,  # (no index here: what fails is the memory plan)
    )
    with pytest.raises(PlanError, match="Turn: method: qlora"):
        refine_tune(params)
    left = [o.key for o in store.list_objects(f"{ADAPTERS}/")]
    assert len(left) == 1 and "/claims/" in left[0], left  # no version, no checkpoint
    assert ClaimRecord.model_validate_json(store.get_bytes(left[0])).released


# -- the eval gate on real adapters -----------------------------------------------------------
def gate(store: ObjectStore, adapter: str, version: str = "latest", **kw: object) -> object:
    from slmops.config import get_settings
    from slmops.pipelines.gate import evaluate_adapter

    return evaluate_adapter(
        store,
        adapter,
        version,
        suites=EVALS,
        policy=kw.pop("policy", EVALS / "policy.yaml"),  # type: ignore[arg-type]
        cache_dir=Path(get_settings().cache_dir),
        **kw,  # type: ignore[arg-type]
    )


def test_refine_tune_gates_the_new_adapter(trained: tuple[S3Store, Manifest, list[str]]) -> None:
    from slmops.evaluation.verdicts import find_verdict
    from slmops.store.audit import AuditLog

    store, manifest, _ = trained
    verdict = find_verdict(store, "support-bot", manifest.version, None)  # no champion yet
    assert verdict is not None and verdict.passed, verdict and verdict.reasons
    assert {m.metric for m in verdict.metrics if m.checks} >= {"format.valid", "style.pass"}
    art = VersionedArtifact(store, ADAPTERS, "support-bot")
    assert art.resolve("challenger").version == manifest.version
    assert art.get_alias("champion") is None  # promotion, not the gate, moves the champion
    events = list(AuditLog(store).events(event="gate.passed"))
    assert events and events[-1].details["version"] == manifest.version
    report = asyncio.run(latest_artifact("gate-support-bot"))
    assert "Gate PASSED" in report and "data:image/png;base64," in report


def test_a_verdict_made_under_other_rules_is_not_reused(
    trained: tuple[S3Store, Manifest, list[str]], tmp_path: Path
) -> None:
    """refine-tune gates an adapter it finds already trained unless a verdict exists; one made
    under other cases or another policy does not count."""
    import shutil

    from slmops.evaluation.verdicts import find_verdict
    from slmops.pipelines.training_steps import judged_under

    store, manifest, _ = trained
    verdict = find_verdict(store, "support-bot", manifest.version, None)  # the fixture's gate
    assert verdict is not None and verdict.rules_sha256
    policy = EVALS / "policy.yaml"
    assert judged_under(verdict, EVALS, policy)
    moved = tmp_path / "evals"
    shutil.copytree(EVALS, moved)
    assert judged_under(verdict, moved, moved / "policy.yaml")  # where they are is no rule
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(policy.read_text().replace("format.valid: 0.90", "format.valid: 0.95"))
    assert not judged_under(verdict, EVALS, stricter)
    with (moved / "knowledge.jsonl").open("a") as cases:
        cases.write('{"id": "kn-new", "input": "Where is the Ledger?", "facts": [["settings"]]}\n')
    assert not judged_under(verdict, moved, policy)
    assert not judged_under(verdict.model_copy(update={"rules_sha256": None}), EVALS, policy)


def test_a_good_adapter_passes_against_the_base_model(
    trained: tuple[S3Store, Manifest, list[str]],
) -> None:
    store, manifest, _ = trained
    record = gate(store, "support-bot", manifest.version, champion="base", set_challenger=False)
    verdict = record.verdict  # type: ignore[attr-defined]
    assert verdict.passed, verdict.reasons
    metrics = {m.metric: m for m in verdict.metrics}
    assert metrics["format.valid"].candidate >= 0.95 and metrics["format.valid"].champion == 0.0
    assert metrics["adversarial.valid_format"].n >= 200


class Planted:
    """A candidate whose answers are the good adapter's own, each with one defect planted:
    what an adapter trained to answer in plain text or with banned phrases would say, without
    training one (the test is about what the gate makes of such answers)."""

    def __init__(self, inner: Generator, kind: str):
        self.inner, self.kind = inner, kind

    def describe(self) -> dict[str, object]:
        return {**self.inner.describe(), "planted": self.kind}

    def generate(
        self, prompts: list[Prompt], on_progress: object = None, *, max_new_tokens: int = 96
    ) -> list[str]:
        answers = self.inner.generate(prompts, on_progress, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
        return [self.plant(a) for a in answers]

    def plant(self, answer: str) -> str:
        try:
            obj = json.loads(answer)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            return answer if self.kind == "plain_text" else f"I'm sorry, but {answer}"
        if self.kind == "plain_text":
            return str(obj.get("answer", ""))
        return json.dumps(
            {**obj, "answer": f"As an AI language model, I'm sorry, but {obj.get('answer', '')}"}
        )


def random_adapter(tiny_base: Path, out: Path, rank: int = 16, modules: str = "all-linear") -> Path:
    """LoRA weights that were never trained (peft's random init, not the identity)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base),
        LoraConfig(
            r=rank,
            lora_alpha=32,
            target_modules=modules if modules == "all-linear" else modules.split(","),
            init_lora_weights=False,
        ),
    )
    model.save_pretrained(str(out / "adapter"))
    finalize_adapter(out / "adapter", "tiny-llama")
    return out / "adapter"


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("random", "format.valid"),
        ("plain_text", "format.valid"),
        ("banned_phrases", "style.pass"),
    ],
)
def test_planted_bad_adapters_fail_with_reasons_naming_the_metric(
    trained: tuple[S3Store, Manifest, list[str]],
    tiny_base: Path,
    tmp_path: Path,
    kind: str,
    named: str,
) -> None:
    store, good, _ = trained
    if kind == "random":
        folder, make = random_adapter(tiny_base, tmp_path), None
    else:  # the good adapter's weights, its answers rewritten on the way out
        folder = tmp_path / "good"
        VersionedArtifact(store, ADAPTERS, "support-bot").download(good.version, folder)
        base_ref = next(i for i in good.inputs if i.kind == "base-model")

        def make(base: Path, adapter_dir: Path | None) -> Planted:
            # The good adapter's answers, as its own gate stored them (or generated now).
            weights = Weights(base_ref.name, base_ref.version or "", base, good, adapter_dir)
            return Planted(stored_answers(store, TransformersBackend(), weights), kind)

    art = VersionedArtifact(store, ADAPTERS, f"planted-{kind.replace('_', '-')}")
    version = art.publish(good.model_copy(update={"name": art.name}), folder).version
    record = gate(store, art.name, version, champion="none", make_generator=make)
    verdict = record.verdict  # type: ignore[attr-defined]
    assert not verdict.passed
    assert any(r.startswith(f"{named}:") for r in verdict.reasons), verdict.reasons
    if kind == "banned_phrases":  # the format holds: style alone fails it
        assert not any(r.startswith("format.valid:") for r in verdict.reasons), verdict.reasons
    assert art.get_alias("challenger") is None  # a failing candidate moves no alias


def test_a_twin_of_the_champion_holds_the_line_but_is_no_improvement(
    trained: tuple[S3Store, Manifest, list[str]], tmp_path: Path
) -> None:
    store, good, _ = trained
    source = VersionedArtifact(store, ADAPTERS, "support-bot")
    source.download(good.version, tmp_path / "weights")
    twin = VersionedArtifact(store, ADAPTERS, "twin")
    first = twin.publish(good.model_copy(update={"name": "twin"}), tmp_path / "weights").version
    second = twin.publish(good.model_copy(update={"name": "twin"}), tmp_path / "weights").version
    twin.set_alias("champion", first)
    stricter = tmp_path / "policy.yaml"
    stricter.write_text(
        (EVALS / "policy.yaml")
        .read_text()
        .replace("improvement: {}", "improvement:\n  style.pass: 0.0\n  all.valid_format: 0.0")
    )
    # the CLI, as a user runs it: exit 0 pass, 1 fail
    code, out = invoke("gate", f"twin@{second}", "--suites", str(EVALS), "--store", store.uri)
    assert code == 0 and "gate passed" in out, out
    # The same weights: the champion's answers are the candidate's, generated once (or reused
    # from the session adapter's own gate, which answered the same cases with these weights).
    cases = sum(1 for f in EVALS.glob("*.jsonl") for _ in f.open())
    assert f"champion 0 generated, {cases} reused" in " ".join(out.split()), out
    code, out = invoke(
        "gate",
        f"twin@{second}",
        "--suites",
        str(EVALS),
        "--policy",
        str(stricter),
        "--store",
        store.uri,
    )
    assert code == 1 and "no proven improvement of at least 0.0" in out, out
    assert f"candidate 0 generated, {cases} reused" in " ".join(out.split()), out


def test_a_candidate_on_another_base_model_is_refused(
    trained: tuple[S3Store, Manifest, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from slmops.cli import main
    from slmops.evaluation.verdicts import find_verdict
    from slmops.store.manifest import InputRef

    store, good, _ = trained
    source = VersionedArtifact(store, ADAPTERS, "support-bot")
    source.download(good.version, tmp_path / "weights")
    art = VersionedArtifact(store, ADAPTERS, "rebased")
    other = InputRef(kind="base-model", name="other-llama", version="0" * 40, uri="/elsewhere")
    champion = art.publish(
        good.model_copy(update={"name": "rebased", "inputs": [other]}), tmp_path / "weights"
    ).version
    art.set_alias("champion", champion)
    candidate = art.publish(good.model_copy(update={"name": "rebased"}), tmp_path / "weights")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "slmops",
            "gate",
            f"rebased@{candidate.version}",
            "--store",
            store.uri,
            "--suites",
            str(EVALS),
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2  # bad input: an error, never a verdict
    assert find_verdict(store, "rebased", candidate.version, champion) is None
    with pytest.raises(ConfigError, match="a different base model is a new deployment"):
        gate(store, "rebased", candidate.version)
    # The same base model on a revision that is neither current nor cached: refused before
    # any model answers (the gate would otherwise judge the champion on the wrong weights).
    gone = InputRef(kind="base-model", name="tiny-llama", version="0" * 40, uri="/elsewhere")
    older = art.publish(
        good.model_copy(update={"name": "rebased", "inputs": [gone]}), tmp_path / "weights"
    ).version
    art.set_alias("champion", older)
    with pytest.raises(ConfigError, match="does not exist"):
        gate(store, "rebased", candidate.version)
    assert find_verdict(store, "rebased", candidate.version, older) is None


def lora_weights(adapter: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return dict(load_file(str(adapter / "adapter_model.safetensors")))


def test_a_warm_start_begins_from_the_parent_and_refuses_another_shape(
    tiny_base: Path, tmp_path: Path
) -> None:
    import torch

    parent = random_adapter(tiny_base, tmp_path / "parent")
    # One step at a learning rate of ~0: what is saved is where training started.
    still = TrainConfig(max_steps=1, batch_size=4, learning_rate=1e-12)

    def train(out: str, init_from: Path | None) -> dict[str, object]:
        train_adapter(
            tiny_base, ROWS[:8], [], tmp_path / out, still, served_model="t", init_from=init_from
        )
        return lora_weights(tmp_path / out / "adapter")

    warm, theirs = train("warm", parent), lora_weights(parent)
    assert warm.keys() == theirs.keys() and len(warm) > 0
    assert all(torch.allclose(warm[k], theirs[k], atol=1e-6) for k in warm)  # type: ignore[arg-type]
    cold = train("cold", None)  # LoRA's own start: B = 0 (one step of 1e-12 from it)
    lora_b = [v for k, v in cold.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) < 1e-9 for v in lora_b)  # type: ignore[attr-defined]

    for rank, modules, named in [(8, "all-linear", "'r': 8"), (16, "q_proj,v_proj", "missing")]:
        other = random_adapter(tiny_base, tmp_path / f"other-{rank}", rank, modules)
        with pytest.raises(ConfigError, match=f"cannot warm-start from .*{named}"):
            train(f"refused-{rank}", other)


def test_a_release_warm_starts_from_the_champion_of_the_same_shape(tmp_path: Path) -> None:
    from slmops.store.manifest import InputRef

    store = LocalStore(tmp_path / "store")
    art = VersionedArtifact(store, ADAPTERS, "bot")
    recipe = TrainConfig(warm_start_steps=40)

    def champion(model: str, revision: str, **config: object) -> str:
        shape = {"rank": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"], **config}
        version = art.publish(
            Manifest(
                kind="adapter",
                name="bot",
                inputs=[InputRef(kind="base-model", name=model, version=revision)],
                config=shape,
            ),
            {"adapter_config.json": b"{}"},
        ).version
        art.set_alias("champion", version)
        return version

    def start(config: TrainConfig = recipe) -> tuple[str | None, str]:
        found, why = adapters.warm_start_from(store, "bot", "tiny", "r2", config)
        return (found.version if found else None), why

    assert start() == (None, "from scratch: bot has no champion yet")
    v1 = champion("tiny", "r1")
    assert start()[0] == v1 and "40 steps instead of 150" in start()[1]
    assert start(TrainConfig())[0] is None  # the recipe does not ask for it
    assert start(TrainConfig(warm_start_steps=40, rank=8))[1].endswith(
        "this recipe: {'rank': 8, 'alpha': 32})"
    )
    assert start(TrainConfig(warm_start_steps=40, target_modules="q_proj"))[0] is None
    assert start(TrainConfig(warm_start_steps=40, target_modules="v_proj, q_proj"))[0] == v1
    # A champion on another revision with the same weights (a model-card-only release): no
    # warm start, so the run's key is the champion's and it finds that adapter.
    same = Manifest(
        kind="adapter",
        name="bot",
        inputs=[InputRef(kind="base-model", name="tiny", version="r1", sha256="w1")],
        config={"rank": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
    )
    art.set_alias("champion", art.publish(same, {"adapter_config.json": b"{}"}).version)
    found, why = adapters.warm_start_from(store, "bot", "tiny", "r2", recipe, weights="w1")
    assert found is None and "same weights" in why and "model card" in why
    assert adapters.warm_start_from(store, "bot", "tiny", "r2", recipe, weights="w2")[0]
    champion("tiny", "r2")  # a champion on this revision: a rerun finds it by its key
    assert "on this revision already" in start()[1]
    champion("other-model", "r1")
    assert "not trained on tiny" in start()[1]
