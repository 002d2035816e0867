"""Training settings that need no training: where CPU threads come from, and which settings
enter the training key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.training.adapters import training_key
from slmops.training.trainer import TrainConfig, _cgroup_cpu_quota, cpu_threads


def test_threads_come_from_the_config_then_the_worker_then_the_cores_it_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLMOPS_TRAIN_THREADS", raising=False)
    assert cpu_threads(3) == (3, "config")
    monkeypatch.setenv("SLMOPS_TRAIN_THREADS", "1")
    assert cpu_threads(None) == (1, "SLMOPS_TRAIN_THREADS")
    assert cpu_threads(2) == (2, "config")  # the run's own setting wins
    monkeypatch.delenv("SLMOPS_TRAIN_THREADS")
    cores = len(os.sched_getaffinity(0))
    threads, source = cpu_threads(None)
    # Not a sample of the machine's load: the same answer however busy the machine is.
    assert 1 <= threads <= cores and cpu_threads(None) == (threads, source)
    assert source.startswith(("CPU affinity", "cgroup CPU quota"))


def test_a_process_limited_to_one_core_trains_on_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLMOPS_TRAIN_THREADS", raising=False)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # as `taskset -c 0` would start a worker
    try:
        assert cpu_threads(None)[0] == 1
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SLMOPS_TRAIN_THREADS", value)
    with pytest.raises(ConfigError, match=f"SLMOPS_TRAIN_THREADS={value!r}"):
        cpu_threads(None)


def test_a_container_cpu_limit_caps_the_threads(tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert _cgroup_cpu_quota(quota) == 1.5
    quota.write_text("max 100000\n")
    assert _cgroup_cpu_quota(quota) is None
    assert _cgroup_cpu_quota(tmp_path / "missing") is None


def test_settings_that_do_not_change_the_weights_keep_the_training_key() -> None:
    key = training_key("m", "rev", "data", "sha", TrainConfig())
    same = TrainConfig(threads=1, save_steps=7, max_memory_gb=4.0, cpu_hour_usd=1.0)
    assert training_key("m", "rev", "data", "sha", same) == key
    assert training_key("m", "rev", "data", "sha", TrainConfig(max_steps=301)) != key
    assert training_key("m", "rev", "data", "sha", TrainConfig(group_by_length=True)) != key
    # A recipe that may warm-start keeps a cold run's key; a warm start names its parent.
    warm = TrainConfig(warm_start_steps=40)
    assert training_key("m", "rev", "data", "sha", warm) == key
    parent = training_key("m", "rev", "data", "sha", warm, warm_start="v1")
    assert parent != key and parent != training_key("m", "rev", "data", "sha", warm, "v2")
    steps = TrainConfig(warm_start_steps=30)
    assert training_key("m", "rev", "data", "sha", steps, warm_start="v1") != parent


def test_a_setting_added_later_leaves_earlier_keys_as_they_were() -> None:
    import json

    from slmops.store.hashing import sha256_bytes

    # The key as it was computed before `group_by_length` existed.
    fields = set(TrainConfig.weight_fields()) - {"group_by_length"}
    basis = {
        "model": "m",
        "weights": "rev",
        "dataset": "data",
        "rows_sha256": "sha",
        "config": TrainConfig().model_dump(include=fields),
    }
    before = sha256_bytes(json.dumps(basis, sort_keys=True).encode())[:24]
    assert training_key("m", "rev", "data", "sha", TrainConfig()) == before


def test_a_warm_start_trains_its_own_steps_with_a_warmup_and_keys_it() -> None:
    config = TrainConfig(max_steps=150, warm_start_steps=40, learning_rate=0.003)
    warm = config.warm_start_config()
    assert (warm.max_steps, warm.warmup_steps, warm.learning_rate) == (40, 8, 0.003)
    assert TrainConfig(warm_start_steps=3).warm_start_config().warmup_steps == 1
    assert TrainConfig(warm_start_steps=40, warmup_steps=20).warm_start_config().warmup_steps == 20
    with pytest.raises(ValueError, match="warm_start_steps"):
        TrainConfig().warm_start_config()
    # The warm start's recipe is in its key: the champion it starts from, its steps, warmup.
    key = training_key("m", "w", "d", "rows", config, warm_start="v1")
    assert key != training_key("m", "w", "d", "rows", config, warm_start="v2")
    assert key != training_key(
        "m", "w", "d", "rows", config.model_copy(update={"warmup_steps": 10}), warm_start="v1"
    )
    assert training_key("m", "w", "d", "rows", config) != key  # a cold run's key
