"""The `slmops` command line, run as a user would against a store on either backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.training_throughput import SHAPES
from slmops.errors import ConfigError
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest
from slmops.store.versions import VersionedArtifact
from tests.helpers import corrupt, invoke

EXAMPLE_TRAIN = Path(__file__).resolve().parent.parent / "examples/support-bot/train.jsonl"


@pytest.fixture
def populated(store: ObjectStore, store_uri_env: str) -> dict[str, str]:
    adapters = VersionedArtifact(store, "adapters", "support-bot")
    v1 = adapters.publish(
        Manifest(
            kind="adapter",
            name="support-bot",
            inputs=[InputRef(kind="base-model", name="tiny", version="rev-a")],
            metrics={"json_valid": 0.97},
        ),
        {"adapter_model.safetensors": b"w1"},
    ).version
    v2 = adapters.publish(
        Manifest(kind="adapter", name="support-bot"), {"adapter_model.safetensors": b"w2"}
    ).version
    adapters.set_alias("champion", v1)
    index = VersionedArtifact(store, "indexes", "docs")
    i1 = index.publish(Manifest(kind="index", name="docs"), {"index.json": b"{}"}).version
    index.set_alias("latest", i1)
    return {"v1": v1, "v2": v2, "i1": i1}


def test_status_lists_artifacts_versions_and_aliases(populated: dict[str, str]) -> None:
    code, out = invoke("status")
    assert code == 0
    assert "adapters/support-bot" in out and "indexes/docs" in out
    assert f"champion -> {populated['v1']}" in out.replace("\n", "")
    assert f"latest -> {populated['i1']}" in out.replace("\n", "")


def test_status_of_an_empty_store(tmp_path: Path) -> None:
    code, out = invoke("status", "--store", str(tmp_path / "empty"))
    assert code == 0 and "nothing has been published yet" in out


def test_store_ls_lists_folders_and_objects(populated: dict[str, str]) -> None:
    code, out = invoke("store", "ls")
    assert code == 0 and "adapters/" in out and "indexes/" in out and "audit/" in out
    code, out = invoke("store", "ls", "--recursive")
    assert f"adapters/support-bot/versions/{populated['v1']}/manifest.json" in out


def test_store_show_prints_a_manifest(populated: dict[str, str]) -> None:
    code, out = invoke("store", "show", "adapters/support-bot@champion")
    assert code == 0
    assert populated["v1"] in out and "json_valid" in out and "rev-a" in out
    code, out = invoke("store", "show", "adapters/support-bot", "--json")
    assert code == 0 and '"version": "' + populated["v2"] in out


def test_alias_set_and_rollback_from_the_cli(populated: dict[str, str]) -> None:
    code, out = invoke(
        "alias",
        "set",
        "adapters/support-bot",
        "champion",
        populated["v2"],
        "--reason",
        "manual promotion",
    )
    assert code == 0 and f"champion -> {populated['v2']}" in out
    code, out = invoke("alias", "rollback", "adapters/support-bot", "champion")
    assert code == 0 and f"champion -> {populated['v1']}" in out
    code, out = invoke("audit", "--resource", "slmops.adapter.support-bot")
    assert out.count("alias.set") == 2 and "alias.rollback" in out


def test_store_verify_fails_on_a_damaged_version(
    store: ObjectStore, populated: dict[str, str]
) -> None:
    code, out = invoke("store", "verify")
    assert code == 0 and "3 versions checked, 0 with problems" in out
    corrupt(
        store, f"adapters/support-bot/versions/{populated['v2']}/adapter_model.safetensors", b"XX"
    )
    code, out = invoke("store", "verify")
    assert code == 1 and "CORRUPT" in out and "1 with problems" in out


def test_installed_command_reports_errors_in_one_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "slmops"
    help_out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "status" in help_out.stdout and "stack" in help_out.stdout
    bad = subprocess.run(
        [str(exe), "store", "show", "nonsense", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "error:" in bad.stderr and "COLLECTION/NAME" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_memory_plan_says_whether_a_run_fits_a_card_before_renting_it(
    tmp_path: Path, tiny_base: Path
) -> None:
    import json

    # Llama-3.1-8B's config.json alone: no weights needed to plan.
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SHAPES["8b"]))
    code, out = invoke(
        "memory-plan",
        str(config),
        "--method",
        "qlora",
        "--max-memory-gb",
        "12",
        "--batch-size",
        "8",
    )
    assert code == 0 and "fits: 8.03B parameters" in out, out
    assert "gradient checkpointing on" in out and "the effective batch is kept" in out
    assert "(chosen)" in out
    code, out = invoke("memory-plan", str(config), "--method", "lora", "--max-memory-gb", "12")
    assert code == 1 and "does not fit" in out and "method: qlora" in out
    # The longest row of a training file sets the length; the tiny model on CPU as it trains.
    code, out = invoke(
        "memory-plan",
        str(tiny_base),
        "--data",
        str(EXAMPLE_TRAIN),
        "--device",
        "cpu",
        "--max-length",
        "512",
    )
    assert code == 0 and "micro-batch 8 x 1 accumulation = batch 8" in out, out
    assert "longest row 2,048" not in out and "checkpointing off" in out.replace("\n", " ")
    with pytest.raises(ConfigError, match="--method 'bogus': choose lora, qlora or auto"):
        invoke("memory-plan", str(config), "--method", "bogus", "--max-memory-gb", "8")


def test_memory_plan_plans_the_recipe_refine_tune_would_run(tiny_base: Path) -> None:
    """The CLI reads its options as a recipe, the way refine-tune reads one (`plan_for`): a
    gradient-checkpointing setting is kept as given, and a bad option is named."""
    code, out = invoke(
        "memory-plan",
        str(tiny_base),
        "--device",
        "cpu",
        "--max-length",
        "512",
        "--gradient-checkpointing",
        "on",
    )
    assert code == 0 and "gradient checkpointing on" in out.replace("\n", " "), out
    with pytest.raises(ConfigError, match="--gradient-checkpointing 'maybe': auto, on or off"):
        invoke(
            "memory-plan", str(tiny_base), "--device", "cpu", "--gradient-checkpointing", "maybe"
        )
    with pytest.raises(ConfigError, match="--rank: Input should be greater than or equal to 1"):
        invoke("memory-plan", str(tiny_base), "--device", "cpu", "--rank", "0")


def test_long_work_reports_each_tenth_once() -> None:
    from slmops.progress import Tenths

    tenths = Tenths()
    crossed = [done for done in range(0, 301) if tenths.crossed(done, 300)]
    assert crossed == list(range(30, 301, 30))
    assert Tenths(from_zero=True).crossed(0, 5) and not Tenths().crossed(0, 5)
    per_stage = Tenths()
    assert per_stage.crossed(1, 2, "a") and per_stage.crossed(1, 2, "b")
    assert not per_stage.crossed(1, 2, "a") and not per_stage.crossed(3, None, "c")


def test_slow_work_says_how_far_it_is_every_period_between_tenths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slmops import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    tenths = progress.Tenths(every_s=30)
    said = []
    for done in range(0, 101):  # 100 steps of 2 s: a tenth every 20 s, so 30 s never passes
        clock[0] = 2.0 * done
        if tenths.crossed(done, 100):
            said.append(done)
    assert said == list(range(10, 101, 10))
    slow = progress.Tenths(every_s=30)
    said = []
    for done in range(0, 11):  # 10 s a step: 100 s a tenth, a line every 30 s between them
        clock[0] = 1000 + 10.0 * done
        if slow.crossed(done, 100):
            said.append(done)
    assert said == [3, 6, 9, 10]
    # The tenth is still said once it is crossed, and never twice.
    assert not slow.crossed(10, 100)


def test_refine_tune_checks_what_the_gate_needs_before_it_trains(tmp_path: Path) -> None:
    """The example suites retrieve from support-docs; a store without it is refused before
    any model is touched (the base model path does not even exist), saying what to run."""
    store = tmp_path / "store"
    with pytest.raises(ConfigError) as refused:
        invoke("refine-tune", "tiny-llama", str(tmp_path / "no-model-here"), "--store", str(store))
    message = str(refused.value)
    assert "index support-docs" in message and "slmops ingest" in message
    assert "nothing was trained" in message
    assert not (store / "adapters").exists() and not (store / "datasets").exists()
    with pytest.raises(ConfigError, match="choose auto, vllm or transformers"):
        invoke("gate", "support-bot@latest", "--generator", "sometimes", "--store", str(store))
