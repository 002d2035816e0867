"""The demo on another base model (`make demo MODEL=gemma-270m`): the deployments it deploys
are prefect.yaml's, for that model. (The tiny demo itself runs whole in test_stack.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples import demo
from infra.stack import LocalStack, StackConfig
from slmops.pipelines.refine_tune import RefineTuneParams
from tests.helpers import ROOT


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return [node] if isinstance(node, str) else []


def test_the_gemma_demo_deploys_prefect_yaml_for_gemma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "MODEL", "gemma-270m")
    monkeypatch.setattr(demo, "SOURCE", demo.GEMMA_SOURCE)
    out = demo.model_prefect_file(
        ROOT / "prefect.yaml", tmp_path / "p.yaml", demo.GEMMA_RECIPE, demo.GEMMA_DATASET
    )
    derived = yaml.safe_load(out.read_text())
    original = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert [d["name"] for d in derived["deployments"]] == [
        d["name"] for d in original["deployments"]
    ]
    assert not [s for s in strings(derived) if "tiny-llama" in s]
    by_name = {(d["entrypoint"], d["name"]): d for d in derived["deployments"]}
    recipe = yaml.safe_load(demo.GEMMA_RECIPE.read_text())
    release = by_name[("flows/refine_tune.py:refine_tune", "on-base-model-release")]
    (trigger,) = release["triggers"]
    assert trigger["match"] == {"prefect.resource.id": "slmops.model.gemma-270m"}
    assert trigger["parameters"]["params"]["source"] == "{{ event.payload.source }}"
    runs = [trigger["parameters"]["params"], release["parameters"]["params"]]
    runs.append(by_name[("flows/refine_tune.py:refine_tune", "weekly")]["parameters"]["params"])
    for params in runs:
        assert params["model"] == "gemma-270m" and params["config"] == recipe
        assert params["dataset"] == demo.GEMMA_DATASET and (ROOT / demo.GEMMA_DATASET).is_file()
        if params["source"] != "{{ event.payload.source }}":
            assert params["source"] == demo.GEMMA_SOURCE
        RefineTuneParams.model_validate({**params, "source": demo.GEMMA_SOURCE})
    (watcher,) = [d for d in derived["deployments"] if "watch" in d["entrypoint"]]
    assert watcher["parameters"]["params"]["models"] == [
        {"name": "gemma-270m", "source": demo.GEMMA_SOURCE}
    ]


def test_the_stack_remembers_a_package_source(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, model_source=demo.GEMMA_SOURCE)
    config.served_model = "gemma-270m"
    assert config.source == demo.GEMMA_SOURCE
    LocalStack(config, log=lambda _: None)._save({})
    saved = json.loads((tmp_path / "stack.json").read_text())["config"]
    assert saved["model_source"] == demo.GEMMA_SOURCE
    again = StackConfig.load(tmp_path)
    assert (again.source, again.served_model) == (demo.GEMMA_SOURCE, "gemma-270m")
    folder = StackConfig(state_dir=tmp_path / "other")
    assert folder.source == str((folder.project_dir / folder.model_dir).absolute())


def test_the_demo_uses_the_stacks_store_when_settings_were_read_before_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fresh clone, starting the stack builds the base model, which reads the settings
    (the embedding model's name) before the stack's environment is set: the demo then looked
    for its index in the local default store, not the stack's S3 store. (The stack's start is
    replaced by that read: the order is the fault; the stack itself runs in test_stack.)"""
    from slmops.config import get_settings
    from slmops.store import open_store

    config = StackConfig(state_dir=tmp_path)
    for key in config.client_env():
        monkeypatch.setenv(key, "-")  # restored (removed) after the test
        monkeypatch.delenv(key)
    monkeypatch.setattr(demo, "STATE_DIR", tmp_path)
    monkeypatch.setattr(LocalStack, "up", lambda self, *a, **k: get_settings())
    get_settings.cache_clear()
    try:
        assert not get_settings().store.startswith("s3://")
        demo.stack_up(vllm=0)
        assert open_store().uri == f"s3://{config.bucket}"
    finally:
        get_settings.cache_clear()
