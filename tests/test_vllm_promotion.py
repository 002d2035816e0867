"""Promotion to real vLLM servers (the CPU build): two replicas serving the tiny base model,
the session's refine-tuned adapter and versions made from it, the store on the S3 server.

The tests run in file order and share the replicas: each says the state it starts from. The
module is named to run after test_training, which trains the session's adapter.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmops.base_models import WatchedModel, current_revision
from slmops.errors import ConfigError
from slmops.generation import LocalGenerator, Prompt
from slmops.pipelines.promotion import promote
from slmops.serving.client import (
    Replica,
    ServingConfig,
    ServingError,
    VLLMClient,
    load_serving_config,
)
from slmops.serving.promotion import PromotionError
from slmops.serving.staging import serving_name
from slmops.store.manifest import Manifest
from slmops.store.s3 import S3Store
from slmops.store.versions import ADAPTERS, VersionedArtifact
from slmops.training.trainer import TrainConfig
from tests.helpers import (
    EVALS,
    TEST_RECIPE,
    free_port,
    invoke,
    make_bucket,
    share_session_adapter,
    subset_suites,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness"),
    # Run alone, the first test also trains the session's adapter (150 steps) and starts
    # the replicas; in the whole suite test_training has trained it already.
    pytest.mark.timeout(1800),
]

ADAPTER = "support-bot"
# Under load the replicas share 2 cores with the clients: answers compared there are cut at 32
# tokens (whole answers took minutes to read back, the versions differ well before).
CUT = 32


@dataclass
class Served:
    store: S3Store
    base: Path
    serving: Path  # the serving config, as `slmops stack up --vllm` writes it
    config: ServingConfig
    suites: Path
    policy: Path  # auto_promote: true
    manual: Path  # the same without auto_promote
    permissive: Path  # floors only on valid JSON: for adapters made to test refusals
    permissive_suites: Path  # what the permissive policy gates on: 20 format cases
    replicas: list[Any]
    work: Path


@pytest.fixture(scope="module")
def served(
    trained: tuple[S3Store, Manifest, list[str]],
    tiny_base: Path,
    s3_endpoint: str,
    vllm_replicas: list[Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    from slmops.config import get_settings

    work = tmp_path_factory.mktemp("promotion")
    env = pytest.MonkeyPatch()  # flows open the store from the settings, as deployments do
    env.setenv("SLMOPS_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    store = S3Store(make_bucket(s3_endpoint), "prod", endpoint_url=s3_endpoint)
    # The session's refine-tuned adapter, stored here as refine-tune stores it (with its
    # training-key lookup): refine-tune with the same inputs finds it instead of training.
    source_store, adapter, _ = trained
    share_session_adapter(source_store, adapter, store, work / "v1")
    revision = current_revision(WatchedModel(name="tiny-llama", source=str(tiny_base))).revision
    serving = work / "serving.yaml"
    serving.write_text(
        yaml.safe_dump(
            {
                "replicas": [
                    {
                        "url": r.url,
                        "model": "tiny-llama",
                        "revision": revision,
                        "max_lora_rank": r.max_lora_rank,
                        "dtype": "float32",  # infra/vllm_server.py's
                    }
                    for r in vllm_replicas
                ],
                "adapter_dir": str(work / "adapters"),
                "drain_s": 0,
                "smoke_cases": 3,
            }
        )
    )
    policies = {}
    for name, doc in {
        "policy": {
            "auto_promote": True,
            "floors": {"format.valid": 0.8, "all.valid_format": 0.6},
            "non_inferiority": {"format.valid": 0.5},
        },
        "manual": {
            "floors": {"format.valid": 0.8, "all.valid_format": 0.6},
            "non_inferiority": {"format.valid": 0.5},
        },
        # (noise runs to the token limit: cut answers are what this policy lets through)
        "permissive": {"floors": {"all.valid_format": 0.0}, "max_cut_share": 1.0},
    }.items():
        policies[name] = work / f"{name}.yaml"
        policies[name].write_text(yaml.safe_dump(doc))
    yield Served(
        store=store,
        base=tiny_base,
        serving=serving,
        config=load_serving_config(serving),
        suites=subset_suites(work / "suites", ["format", "style", "terminology", "adversarial"]),
        # A random rank-32 LoRA answers every case with noise up to the token limit: its gate
        # (which only has to pass, for the refusal after it) asks the fewest cases a metric needs.
        permissive_suites=subset_suites(work / "permissive-suites", ["format"], per_suite=20),
        replicas=vllm_replicas,
        work=work,
        **policies,
    )
    env.undo()


def refine_tune(s: Served, policy: Path) -> Manifest:
    from flows.refine_tune import RefineTuneParams
    from flows.refine_tune import refine_tune as flow

    params = RefineTuneParams(
        model="tiny-llama",
        source=str(s.base),
        store=s.store.uri,
        suites=str(s.suites),
        policy=str(policy),
        serving=str(s.serving),
        config=TrainConfig(**TEST_RECIPE),  # the session adapter's recipe: found, not trained
    )
    return flow(params)


def clients(s: Served) -> list[VLLMClient]:
    return [VLLMClient(r) for r in s.config.replicas]


def snapshot(s: Served, adapter: str = ADAPTER) -> tuple[list[dict[str, str]], str | None]:
    """What every replica serves, and the champion alias: what a refusal must not change."""
    alias = VersionedArtifact(s.store, ADAPTERS, adapter).get_alias("champion")
    return [c.adapters() for c in clients(s)], alias.version if alias else None


def prompts(s: Served, n: int = 6) -> list[Prompt]:
    from slmops.suites.spec import load_suites

    return [c.messages for c in load_suites(s.suites).suite_cases("format")[:n]]


def unusual_prompts(s: Served, n: int = 80) -> list[Prompt]:
    """Adversarial cases short enough for the replicas' 512-token window."""
    from slmops.suites.spec import load_suites

    cases = load_suites(EVALS).suite_cases("adversarial")
    return [c.messages for c in cases if len(json.dumps(c.messages)) < 900][:n]


def local_answers(s: Served, version: str, asked: list[Prompt], tokens: int = 96) -> list[str]:
    """peft's own greedy answers with `version` (what vLLM must reproduce)."""
    folder = s.work / "local" / version
    if not folder.exists():
        VersionedArtifact(s.store, ADAPTERS, ADAPTER).download(version, folder)
    return LocalGenerator(s.base, folder, max_new_tokens=tokens).generate(asked)


def served_answers(
    s: Served, asked: list[Prompt], name: str = ADAPTER, tokens: int = 96
) -> list[list[str]]:
    return [[c.chat(name, p, max_tokens=tokens) for p in asked] for c in clients(s)]


def audit(s: Served, event: str) -> list[Any]:
    from slmops.store.audit import AuditLog

    return list(AuditLog(s.store).events(event=event))


# -- the whole path --------------------------------------------------------------------------
def test_refine_tune_gates_and_promotes_to_every_replica(served: Served) -> None:
    """refine-tune (its adapter already trained) -> gate -> auto-promote -> both replicas
    answer through the stable name exactly as peft does locally with that adapter (greedy)."""
    v1 = refine_tune(served, served.policy)
    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    assert art.resolve("champion").version == v1.version
    name = serving_name(ADAPTER, v1)
    for listed in snapshot(served)[0]:
        assert set(listed) == {ADAPTER, name}
        assert listed[ADAPTER] == listed[name] == str(served.work / "adapters" / name)
    asked = prompts(served)
    expected = local_answers(served, v1.version, asked)
    assert served_answers(served, asked) == [expected, expected]
    # The smoke test asked the format cases the gate saw this version answer in the format
    # (the format floor lets a passing adapter break a few others, so those prove nothing),
    # and every replica answers each of them in the format.
    from slmops.evaluation.verdicts import find_verdict, verdict_answers
    from slmops.serving.smoke import gated_answers, smoke_prompts

    gated = gated_answers(verdict_answers(served.store, ADAPTER, v1.version, None))
    assert gated, "the gate's answers are stored with the verdict"
    # With a serving config, refine-tune gated on the serving engine: the versioned name.
    verdict = find_verdict(served.store, ADAPTER, v1.version, None)
    assert verdict is not None and verdict.generation["candidate"]["backend"] == "vllm"
    assert verdict.generation["candidate"]["model"] == name
    golden, _ = smoke_prompts(served.suites, served.config.smoke_cases, gated)
    assert golden and all(c.id in gated for c in golden)
    for replies in served_answers(served, [c.messages for c in golden]):
        assert all(json.loads(a) for a in replies)
    (succeeded,) = audit(served, "promotion.succeeded")
    assert succeeded.details["version"] == v1.version and succeeded.details["previous"] is None
    assert succeeded.trigger.flow_run_id  # started by the refine-tune run, on record


# -- a new version, under load, then rollback --------------------------------------------------
class Load:
    """Clients calling the stable name on every replica in a bounded loop (loopback only), over
    the project's one load generator (infra.load)."""

    def __init__(
        self,
        s: Served,
        asked: list[Prompt],
        max_requests: int = 2000,
        via: list[Replica] | None = None,
    ):
        """`via`: where to send the requests instead of the replicas (e.g. the router)."""
        from infra.load import Load as Clients

        targets, routed = via or s.config.replicas, via is not None

        def client(i: int) -> Callable[[int], str]:
            # Through a router: no client-side retry, so a request the router drops is counted.
            vllm = VLLMClient(targets[i % len(targets)], retries=0 if routed else 2)
            return lambda n: str(vllm.chat(ADAPTER, asked[n % len(asked)], max_tokens=16))

        self.asked = asked
        self.load = Clients(
            client,
            2 * len(s.config.replicas),
            max_requests=max_requests,
            max_seconds=300,
            failure=ServingError,
        )

    @property
    def answered(self) -> int:
        """Requests that came back, answered or failed."""
        return self.load.done

    @property
    def failures(self) -> list[str]:
        return [r.error or "" for r in self.load.failed]

    @property
    def replies(self) -> list[tuple[int, str]]:
        """(index into asked, the stable name's reply) of every answered request."""
        return [
            (r.number % len(self.asked), r.reply) for r in self.load.records if r.reply is not None
        ]

    def keep_up(self, answered: int, timeout: float = 120) -> None:
        """Go on until `answered` requests have come back (those in flight through the
        change among them)."""
        self.load.keep_up(answered, timeout)

    def __enter__(self) -> Load:
        self.load.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load.__exit__(*exc)


def test_a_new_version_replaces_the_old_under_load_and_rolls_back_without_a_failed_request(
    served: Served,
) -> None:
    """From: v1 champion. A second version (v1 with noise on LoRA B: the same format, other
    answers to unusual prompts) passes the gate against v1; it is promoted and rolled back
    while clients keep calling the stable name."""
    from flows.promote_adapter import PromoteParams, promote_adapter

    v1 = VersionedArtifact(served.store, ADAPTERS, ADAPTER).resolve("champion")
    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    v2 = art.manifest(publish_variant(served, v1, "noised"))
    gate(served, v2.version, served.manual, set_challenger=True)
    assert art.resolve("challenger").version == v2.version
    assert art.resolve("champion").version == v1.version
    # Prompts the two versions answer differently within their first CUT tokens (a stale
    # answer would show), as peft answers them locally: 20 at a time until three do.
    pool, differ = unusual_prompts(served), []
    for start in range(0, len(pool), 20):
        chunk = pool[start : start + 20]
        before = local_answers(served, v1.version, chunk, CUT)
        after = local_answers(served, v2.version, chunk, CUT)
        differ += [p for p, b, a in zip(chunk, before, after, strict=True) if b != a]
        if len(differ) >= 3:
            break
    assert len(differ) >= 3, f"only {len(differ)} of {len(pool)} prompts tell the versions apart"
    asked = differ[:3] + prompts(served, 1)
    old = local_answers(served, v1.version, asked, CUT)
    new = local_answers(served, v2.version, asked, CUT)
    # Ask first, so the prefix cache holds these prompts computed with v1's weights.
    assert served_answers(served, asked, tokens=CUT) == [old, old]

    # Clients call the stable name through the promotion and through the rollback; what the
    # name serves is read back after each (under load, 2 shared cores make that minutes).
    with Load(served, asked) as promoting:
        time.sleep(2)
        promote_adapter(
            PromoteParams(
                adapter=ADAPTER,
                version="challenger",
                serving=str(served.serving),
                suites=str(served.suites),
                store=served.store.uri,
            )
        )
        promoting.keep_up(8)
    # The same prompts through the same stable name: the new version's answers.
    assert served_answers(served, asked, tokens=CUT) == [new, new]
    with Load(served, asked) as rolling_back:
        time.sleep(2)
        code, out = invoke(
            "rollback", ADAPTER, "--serving", str(served.serving), "--store", served.store.uri
        )
        assert code == 0, out
        rolling_back.keep_up(8)
    assert served_answers(served, asked, tokens=CUT) == [old, old]
    for phase, load in (("promotion", promoting), ("rollback", rolling_back)):
        assert load.answered >= 8, f"only {load.answered} requests came back in the {phase}"
        assert load.failures == [], (phase, load.failures[:3])
    assert art.resolve("champion").version == v1.version
    for listed in snapshot(served)[0]:  # v2 stays loaded: rolling forward again is instant
        assert set(listed) == {ADAPTER, serving_name(ADAPTER, v1), serving_name(ADAPTER, v2)}
    assert "rolled back" in out and v1.version in out


def test_the_gate_asks_the_candidate_on_the_replicas_while_clients_keep_the_champion(
    served: Served,
) -> None:
    """From: v1 champion. A candidate is gated on the serving engine: loaded on the replicas
    under its versioned name for the gate, asked there, unloaded after. Clients calling the
    stable name meanwhile get v1's answers, and none fails. The verdict names its backend
    (`slmops gate --generator vllm`, as a person runs it), and the engine answers as peft
    does locally with the same weights (greedy, fp32)."""
    from slmops.evaluation.verdicts import find_verdict, verdict_answers

    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    v1 = art.resolve("champion")
    candidate = art.manifest(publish_variant(served, v1, "nudged"))  # other bytes, v1's answers
    name = serving_name(ADAPTER, candidate)
    before = snapshot(served)
    assert all(name not in listed for listed in before[0])
    policy = served.work / "served-gate.yaml"
    policy.write_text(
        yaml.safe_dump({"floors": {"format.valid": 0.8}, "require_generator": "vllm"})
    )
    asked = prompts(served, 4)
    stable = local_answers(served, v1.version, asked, 16)
    challenger = art.get_alias("challenger")
    with Load(served, asked) as load:
        time.sleep(2)
        code, out = invoke(
            "gate",
            f"{ADAPTER}@{candidate.version}",
            "--generator",
            "vllm",
            "--serving",
            str(served.serving),
            "--suites",
            str(served.permissive_suites),
            "--policy",
            str(policy),
            "--fresh",
            "--store",
            served.store.uri,
        )
        load.keep_up(8)
    assert code == 0, out
    if challenger is not None:  # the later tests start from the challenger they made
        art.set_alias("challenger", challenger.version)
    flat = " ".join(out.split())
    assert "answers from vllm" in flat and "candidate: vllm" in flat and name in flat, flat
    verdict = find_verdict(served.store, ADAPTER, candidate.version, v1.version)
    assert verdict is not None and verdict.passed, verdict
    assert verdict.generation["candidate"]["backend"] == "vllm"
    assert verdict.generation["candidate"]["model"] == name  # never the stable name
    assert verdict.generation["champion"]["model"] == serving_name(ADAPTER, v1)
    assert verdict.generation["candidate"]["version"] and verdict.generation["candidate"]["dtype"]
    assert load.answered >= 8 and load.failures == [], load.failures[:3]
    assert {reply for _, reply in load.replies} <= set(stable), "the stable name moved"
    assert snapshot(served)[0] == before[0]  # the candidate's name is unloaded again
    answers = verdict_answers(served.store, ADAPTER, candidate.version, v1.version)
    assert answers is not None
    case_prompts = [c.messages for c in load_suites_cases(served.permissive_suites)]
    local = local_answers(served, candidate.version, case_prompts)
    same = sum(a.candidate == b for a, b in zip(answers, local, strict=True))
    assert same >= 0.9 * len(local), f"vLLM and peft agree on {same} of {len(local)} answers"


def test_serve_sync_leaves_a_name_being_gated_loaded(served: Served) -> None:
    """From: v1 champion. `serve sync` unloads every version that is neither champion nor
    previous, except one a running gate holds a lease on; once the lease is given up, the next
    sync unloads it."""
    from slmops.serving.leases import gating_lease
    from slmops.serving.reconcile import sync
    from slmops.serving.staging import stage
    from slmops.store.claims import holding

    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    candidate = art.manifest(publish_variant(served, art.resolve("champion"), "nudged"))
    staged = stage(served.store, ADAPTER, candidate.version, served.config.adapter_dir)
    for client in clients(served):
        client.load(staged.name, staged.path)
    with holding(gating_lease(served.store, candidate, staged.name)):
        said: list[str] = []
        assert sync(served.store, ADAPTER, served.config, log=said.append).ok
        assert all(staged.name in listed for listed in snapshot(served)[0])
        assert any("a gate is asking it" in line for line in said), said
    assert sync(served.store, ADAPTER, served.config).ok
    assert all(staged.name not in listed for listed in snapshot(served)[0])


def test_two_gates_ask_one_name_at_once_and_the_first_done_leaves_it_to_the_other(
    served: Served,
) -> None:
    """Two gates at once on the same adapter version (a release's run and the weekly one
    against the same champion): leases are shared, so neither is refused; the first done
    leaves the name it loaded while the other still asks it, and the last one unloads it."""
    from slmops.generation import Weights
    from slmops.serving.answering import ServedBackend

    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    candidate = art.manifest(publish_variant(served, art.resolve("champion"), "nudged"))
    base = candidate.trained_on()
    weights = Weights(base.name, base.version or "", served.base, candidate, None)
    ask = prompts(served, 1)
    first, second = (
        ServedBackend(served.store, served.config),
        ServedBackend(served.store, served.config),
    )
    with second:
        with first:
            assert first.generator(weights).generate(ask, max_new_tokens=8)
            reply = second.generator(weights).generate(ask, max_new_tokens=8)
        name = serving_name(ADAPTER, candidate)
        assert all(name in listed for listed in snapshot(served)[0])  # the second still asks
        assert second.generator(weights).generate(ask, max_new_tokens=8) == reply
    assert all(name not in listed for listed in snapshot(served)[0])


def load_suites_cases(folder: Path) -> list[Any]:
    from slmops.suites.spec import load_suites

    return load_suites(folder).cases


# -- failures that must change nothing ---------------------------------------------------------
def publish_variant(s: Served, source: Manifest, make: str, adapter: str = ADAPTER) -> str:
    """A new version made from `source`'s weights: `rank32` (random LoRA of rank 32),
    `noised` (noise of 0.4 sd added to LoRA B: the format holds, answers to unusual prompts
    change), `nudged` (LoRA B x 1.001: the same answers, other bytes)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = s.work / "variants" / f"{adapter}-{make}-{time.monotonic_ns()}"
    VersionedArtifact(s.store, ADAPTERS, ADAPTER).download(source.version, folder)
    if make == "rank32":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from slmops.training.trainer import finalize_adapter

        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(s.base),
            LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
        )
        shutil.rmtree(folder)
        model.save_pretrained(str(folder))
        finalize_adapter(folder, "tiny-llama")
    else:
        weights = load_file(str(folder / "adapter_model.safetensors"))
        noise = torch.Generator().manual_seed(0)

        def change(v: torch.Tensor) -> torch.Tensor:
            if make == "nudged":
                return v * 1.001
            return v + 0.4 * v.std() * torch.randn(v.shape, generator=noise)

        save_file(
            {k: change(v) if "lora_B" in k else v for k, v in weights.items()},
            str(folder / "adapter_model.safetensors"),
        )
    art = VersionedArtifact(s.store, ADAPTERS, adapter)
    return art.publish(source.model_copy(update={"name": adapter}), folder).version


def gate(
    s: Served, version: str, policy: Path, adapter: str = ADAPTER, set_challenger: bool = False
) -> None:
    from slmops.pipelines.gate import evaluate_adapter

    record = evaluate_adapter(
        s.store,
        adapter,
        version,
        suites=s.permissive_suites if policy == s.permissive else s.suites,
        policy=policy,
        cache_dir=s.work / "cache",
        set_challenger=set_challenger,
    )
    assert record.verdict.passed, record.verdict.reasons


def test_a_replica_that_refuses_the_load_leaves_every_replica_and_the_alias_as_they_were(
    served: Served,
) -> None:
    """From: v1 champion. The serving config wrongly says replica 1 takes rank 32 (it runs
    --max-lora-rank 16): preflight passes, replica 0 loads the rank-32 adapter, replica 1
    refuses it: promotion unloads it from replica 0 and stops."""
    v1 = VersionedArtifact(served.store, ADAPTERS, ADAPTER).resolve("champion")
    version = publish_variant(served, v1, "rank32")
    gate(served, version, served.permissive)
    wrong = served.config.model_copy(
        update={
            "replicas": [r.model_copy(update={"max_lora_rank": 32}) for r in served.config.replicas]
        }
    )
    before = snapshot(served)
    with pytest.raises(PromotionError, match=r"stopped at load[\s\S]*max_lora_rank 16") as err:
        promote(served.store, ADAPTER, version, wrong, suites=served.suites)
    assert "Unloaded" in str(err.value) and "1 replica(s)" in str(err.value)
    assert snapshot(served) == before
    failed = audit(served, "promotion.failed")[-1]
    assert failed.details["phase"] == "1-load" and "max_lora_rank" in failed.details["reason"]


def test_two_promotions_racing_one_wins_and_the_loser_leaves_nothing_loaded(
    served: Served,
) -> None:
    """From: v1 champion. Two candidates with passing verdicts are promoted at once: one
    takes the serving claim, the other waits for it, then finds that its verdict is against
    a champion that is no longer the champion, and changes nothing."""
    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    v1 = art.resolve("champion")
    v2 = art.resolve("challenger")
    v3 = publish_variant(served, v2, "nudged")
    gate(served, v3, served.permissive)
    candidates = {
        v2.version: serving_name(ADAPTER, v2),
        v3: serving_name(ADAPTER, art.manifest(v3)),
    }
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def run(version: str) -> None:
        barrier.wait()
        try:
            outcomes[version] = promote(
                served.store, ADAPTER, version, served.config, suites=served.suites
            )
        except PromotionError as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=run, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    winners = [v for v, o in outcomes.items() if not isinstance(o, Exception)]
    losers = [v for v, o in outcomes.items() if isinstance(o, Exception)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert f"no gate verdict against champion {winners[0]}" in str(outcomes[losers[0]])
    assert art.resolve("champion").version == winners[0]
    for listed in snapshot(served)[0]:
        assert candidates[losers[0]] not in listed
        assert listed[ADAPTER] == listed[candidates[winners[0]]]
        assert serving_name(ADAPTER, v1) in listed  # the previous champion, kept for rollback


def test_a_restarted_replica_gets_the_champion_back_with_serve_sync(served: Served) -> None:
    """From: a champion and a previous one on both replicas. Replica 0 restarts (vLLM forgets
    runtime-loaded adapters); `slmops serve sync` loads them back and says what it fixed."""
    from infra.vllm_server import start, threads_per_replica, wait_ready

    replica = served.replicas[0]
    replica.stop()
    fresh = start(
        served.base,
        replica.port,
        replica.log,
        served_name="tiny-llama",
        max_lora_rank=replica.max_lora_rank,
        threads=threads_per_replica(2),
    )
    replica.proc = fresh.proc
    wait_ready([replica])
    restarted, other = clients(served)
    assert restarted.adapters() == {}
    code, out = invoke(
        "serve", "sync", ADAPTER, "--serving", str(served.serving), "--store", served.store.uri
    )
    assert code == 0, out
    assert out.count("fixed") >= 3 and "not loaded" in out
    assert restarted.adapters() == other.adapters()
    asked = prompts(served, 3)
    assert [restarted.chat(ADAPTER, p) for p in asked] == [other.chat(ADAPTER, p) for p in asked]
    code, out = invoke(
        "serve", "sync", ADAPTER, "--serving", str(served.serving), "--store", served.store.uri
    )
    assert code == 0 and "no drift" in out, out


def test_bad_input_is_refused_before_any_server_changes(served: Served) -> None:
    """Each refusal names the problem, and no replica nor alias changes."""
    import boto3

    adapter = "refusals"
    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    champ = art.resolve("champion")
    good = publish_variant(served, champ, "nudged", adapter=adapter)
    gate(served, good, served.permissive, adapter=adapter)  # passes: floors only
    other = VersionedArtifact(served.store, ADAPTERS, adapter)
    base_input = next(i for i in champ.inputs if i.kind == "base-model")

    def variant(**changes: Any) -> str:
        folder = served.work / "refusal" / str(time.monotonic_ns())
        other.download(good, folder)
        manifest = other.manifest(good)
        if changes.get("drop"):
            (folder / changes["drop"]).unlink()
        if changes.get("base"):
            other_base = base_input.model_copy(update={"name": changes["base"]})
            inputs = [other_base if i.kind == "base-model" else i for i in manifest.inputs]
            manifest = manifest.model_copy(update={"inputs": inputs})
        return other.publish(manifest, folder).version

    down = served.config.model_copy(
        update={
            "replicas": [
                *served.config.replicas,
                Replica(
                    url=f"http://127.0.0.1:{free_port()}",
                    model="tiny-llama",
                    revision=served.config.replicas[0].revision,
                ),
            ]
        }
    )
    rank32 = publish_variant(served, champ, "rank32", adapter=adapter)
    ungated = publish_variant(served, champ, "nudged", adapter=adapter)
    config = served.config
    cases = [
        (variant(base="mistral-7b"), config, r"trained on mistral-7b.*only works on its own base"),
        (rank32, config, r"rank 32, above replica .*--max-lora-rank 16"),
        (variant(drop="adapter_model.safetensors"), config, r"has no adapter_model.safetensors"),
        (good, down, r"replica http://127.0.0.1:\d+ is not usable: .*unreachable"),
        (ungated, config, r"no gate verdict"),
    ]
    before = snapshot(served, adapter)
    for version, config, expected in cases:
        with pytest.raises(PromotionError, match=expected):
            promote(served.store, adapter, version, config, suites=served.suites)
        assert snapshot(served, adapter) == before, expected
    # A stored file damaged after its manifest was written: the copy is refused by hash (on a
    # host with no verified copy yet; one that has it keeps serving the verified bytes).
    shutil.rmtree(served.work / "adapters" / serving_name(adapter, other.manifest(good)))
    key = f"{other.version_prefix(good)}/adapter_model.safetensors"
    s3 = boto3.client("s3", endpoint_url=served.store.endpoint_url)
    bucket, prefix = served.store.bucket, served.store.prefix
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=b"not the weights")
    with pytest.raises(PromotionError, match=r"cannot copy .* sha256"):
        promote(served.store, adapter, good, served.config, suites=served.suites)
    assert snapshot(served, adapter) == before
    assert not list((served.work / "adapters").glob(".*partial"))
    with pytest.raises(ConfigError, match=r"serving config .*replicas.0.url"):
        bad = served.work / "bad-serving.yaml"
        bad.write_text(
            "replicas: [{url: localhost:8000, model: m, revision: r}]\nadapter_dir: /x\n"
        )
        load_serving_config(bad)


def test_replicas_serve_an_adapter_of_another_revision_only_with_the_same_weights() -> None:
    from slmops.serving.placement import base_mismatch
    from slmops.store.manifest import InputRef

    adapter = Manifest(
        kind="adapter",
        name="bot",
        version="v1",
        inputs=[InputRef(kind="base-model", name="tiny", version="r1", sha256="w1")],
    )

    def serving(revision: str, weights: str | None) -> ServingConfig:
        replica = Replica(url="http://127.0.0.1:1", model="tiny", revision=revision)
        replica.weights = weights
        return ServingConfig(replicas=[replica], adapter_dir="/tmp/adapters")

    assert base_mismatch(serving("r1", None), adapter, "bot@v1") is None
    # r2 changed only the model card: same weights digest, the adapter is served as is.
    assert base_mismatch(serving("r2", "w1"), adapter, "bot@v1") is None
    for other in (serving("r2", "w2"), serving("r2", None)):
        why = base_mismatch(other, adapter, "bot@v1")
        assert why is not None and "trained on tiny@r1" in why and "serves tiny@r2" in why


def test_a_promotion_waits_for_the_serving_operation_that_holds_the_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled sync and a manual promotion can start in the same second: the promotion
    waits for the sync instead of failing, and one held past the wait fails, naming it."""
    from slmops.serving import leases
    from slmops.store.claims import try_claim
    from slmops.store.local import LocalStore

    store = LocalStore(tmp_path / "store")
    key = f"{ADAPTERS}/bot/claims/serving.json"
    monkeypatch.setattr(leases, "SERVING_POLL_S", 0.05)
    sync = try_claim(store, key, "sync of bot", ttl=60, holder="scheduled-sync")
    release = threading.Timer(0.5, sync.release)
    release.start()
    said: list[str] = []
    with leases.serving_claim(store, "bot", "promotion", said.append, wait_s=30):
        assert not release.is_alive()  # it got the claim once the sync had let go
    assert len(said) == 1 and "scheduled-sync" in said[0] and "waiting for" in said[0]
    stuck = try_claim(store, key, "sync of bot", ttl=60, holder="stuck-sync")
    with (
        pytest.raises(PromotionError, match=r"stuck-sync[\s\S]*waited 0s"),
        leases.serving_claim(store, "bot", "promotion", wait_s=0.2),
    ):
        pytest.fail("entered while another operation held the claim")
    stuck.release()


def test_a_serving_operation_acts_on_the_replicas_the_serving_file_names_once_it_may_act(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack rolls its replicas onto a new base revision holding the serving claim and
    rewrites serving.yaml before letting go. A sync that read the file before it waited must
    act on what the file says then: it refuses to load the old revision's champion onto the
    new replica process instead of loading it there (vLLM would accept it: same shapes)."""
    import torch
    from safetensors.torch import save_file

    from slmops.serving import leases, reconcile
    from slmops.store.claims import holding, try_claim
    from slmops.store.local import LocalStore
    from slmops.store.manifest import InputRef

    store = LocalStore(tmp_path / "store")
    weights = tmp_path / "adapter_model.safetensors"
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(4, 8)}, weights)
    art = VersionedArtifact(store, ADAPTERS, "bot")
    version = art.publish(
        Manifest(
            kind="adapter",
            name="bot",
            inputs=[InputRef(kind="base-model", name="tiny", version="r1", sha256="w1")],
        ),
        {
            "adapter_config.json": json.dumps({"r": 4}).encode(),
            "adapter_model.safetensors": weights.read_bytes(),
        },
    ).version
    art.set_alias("champion", version)
    serving = tmp_path / "serving.yaml"

    def write(revision: str, weights: str) -> None:
        replica = {"url": "http://127.0.0.1:9", "model": "tiny", "revision": revision}
        serving.write_text(
            yaml.safe_dump(
                {
                    "replicas": [{**replica, "weights": weights}],
                    "adapter_dir": str(tmp_path / "adapters"),
                }
            )
        )

    write("r1", "w1")
    config = load_serving_config(serving)  # read while the replica still ran r1
    assert config.current().replicas == config.replicas
    monkeypatch.setattr(leases, "SERVING_POLL_S", 0.05)
    synced: list[BaseException] = []

    def run_sync() -> None:
        try:
            reconcile.sync(store, "bot", config)
        except BaseException as exc:
            synced.append(exc)

    roll = try_claim(store, f"{ADAPTERS}/bot/claims/serving.json", "replica roll of bot", ttl=60)
    waiting = threading.Thread(target=run_sync)
    with holding(roll):
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive() and not synced  # it waits for the roll
        write("r2", "w2")  # the roll is done: the replica serves r2
    waiting.join(30)
    (error,) = synced
    assert isinstance(error, PromotionError)
    assert "trained on tiny@r1" in str(error) and "serves tiny@r2" in str(error), error
    # An operation given a config built in code, or one given other replicas than its
    # file's, acts on it as given.
    built = ServingConfig(replicas=config.replicas, adapter_dir=config.adapter_dir)
    assert built.current() is built
    other = config.model_copy(
        update={"replicas": [r.model_copy(update={"max_lora_rank": 32}) for r in config.replicas]}
    )
    assert other.current() is other
    assert config.model_copy(update={"drain_s": 0}).current().replicas[0].revision == "r2"

    # The same for the champion: a promotion the sync waited for moved it (onto r2's adapter).
    # The sync acts on that champion, not on the one it read before it waited (it would put
    # the traffic back on the old set: seen in the demo, a scheduled sync during the roll).
    files = {
        "adapter_config.json": json.dumps({"r": 4}).encode(),
        "adapter_model.safetensors": weights.read_bytes(),
    }
    base2 = InputRef(kind="base-model", name="tiny", version="r2", sha256="w2")
    version2 = art.publish(Manifest(kind="adapter", name="bot", inputs=[base2]), files).version
    reports: list[reconcile.SyncReport] = []
    promoting = try_claim(store, f"{ADAPTERS}/bot/claims/serving.json", "promotion of bot", ttl=60)
    waiting = threading.Thread(target=lambda: reports.append(reconcile.sync(store, "bot", config)))
    with holding(promoting):
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive() and not reports  # it waits for the promotion
        art.set_alias("champion", version2)
    waiting.join(30)
    (report,) = reports
    assert report.champion == version2
    assert [d.problem for d in report.drift] == ["unreachable"]  # nothing listens on port 9


# -- replica sets behind a router ---------------------------------------------------------------
def test_the_router_moves_the_stable_name_between_replica_sets_under_load(
    served: Served, tmp_path: Path
) -> None:
    """A real HAProxy in front of the two replicas, each a set of its own (as the sets of two
    base revisions are): clients call the stable name through the router while its traffic
    moves from one set to the other in canary steps (1% -> 5% -> 10% -> 50% -> 100%) and back,
    with no failed request; a set whose replica does not pass its health check is refused a
    share and takes nothing."""
    from infra import haproxy
    from slmops.serving.reconcile import sync
    from slmops.serving.router import RouterError

    if VersionedArtifact(served.store, ADAPTERS, ADAPTER).get_alias("champion") is None:
        refine_tune(served, served.policy)
    assert sync(served.store, ADAPTER, served.config).ok  # the stable name on both replicas
    router = haproxy.start(tmp_path / "router", free_port())
    try:
        rt = router.runtime
        blue, green = served.config.replicas
        rt.add_set("blue", [blue.url])
        rt.add_set("green", [green.url])
        rt.wait_up("blue")
        rt.wait_up("green")
        rt.set_shares({"blue": 100})
        via = [blue.model_copy(update={"url": router.url})]
        asked = prompts(served, 3)
        steps = (1, 5, 10, 50, 100)
        with Load(served, asked, via=via) as load:
            for share in (*steps, *reversed(steps[:-1]), 0, *steps):
                rt.set_shares({"blue": 100 - share, "green": share})
                load.keep_up(load.answered + 3)
        assert load.answered >= 3 * 15, load.answered
        assert load.failures == [], load.failures[:3]
        counts = rt.requests()
        assert counts["blue-0"] > 0 and counts["green-0"] > 0, counts
        # At 100% every request goes to the new set, and it answers as the replicas do.
        with VLLMClient(via[0]) as client:
            answers = [client.chat(ADAPTER, p, max_tokens=CUT) for p in asked]
        after = rt.requests()
        assert after["blue-0"] == counts["blue-0"] and after["green-0"] == counts["green-0"] + 3
        assert answers == served_answers(served, asked, tokens=CUT)[1]

        # A set that cannot serve never gets a share; the traffic stays where it is.
        rt.add_set("dark", [f"http://127.0.0.1:{free_port()}"])
        with pytest.raises(RouterError, match="no healthy replica"):
            rt.set_shares({"green": 50, "dark": 50})
        assert rt.shares(healthy_only=False)["green"] == 100.0
        with pytest.raises(RouterError, match="still takes traffic"):
            rt.remove_set("green")
        assert rt.remove_set("blue") == ["blue-0"]  # retired after its traffic moved
    finally:
        router.stop()


def test_an_adapter_of_a_new_base_revision_takes_the_traffic_on_its_own_set_and_rolls_back(
    served: Served, tmp_path: Path
) -> None:
    """Blue/green across a base-model release, through a real HAProxy: the two session
    replicas are r1's set; r2 (the tiny base trained 20 steps more, a real new revision) gets
    a third vLLM replica as a set of its own. The adapter refine-tune trains on r2 (a warm start
    from the r1 champion, gated against it) is promoted onto r2's set alone, which takes the
    stable name's traffic in canary steps while clients call it through the router; rollback
    gives the traffic back to r1's set at once. No request fails in either. Before it, a
    variant r2's replica refuses to load gets no traffic."""
    from examples.tiny_base.build import publish_release
    from flows.refine_tune import RefineTuneParams
    from flows.refine_tune import refine_tune as flow
    from infra import haproxy, vllm_server
    from slmops.serving.reconcile import rollback, sync

    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    if art.get_alias("champion") is None:
        refine_tune(served, served.policy)
    assert sync(served.store, ADAPTER, served.config).ok  # r1's set serves the champion
    v1 = art.resolve("champion")
    r1 = served.config.replicas[0].revision
    base2 = tmp_path / "tiny-llama"
    shutil.copytree(served.base, base2)
    publish_release(base2, 2)
    r2 = current_revision(WatchedModel(name="tiny-llama", source=str(base2))).revision
    assert r2 != r1
    replica2 = vllm_server.start(
        base2,
        free_port(),
        tmp_path / "r2.log",
        served_name="tiny-llama",
        threads=vllm_server.threads_per_replica(3),  # beside the session's two
    )
    router = haproxy.start(tmp_path / "router", free_port())
    try:
        # The r2 adapter: trained while r2's replica starts (warm start from v1, gated against
        # it on r1's weights); no serving config yet, so it is not promoted by refine-tune.
        v2 = flow(
            RefineTuneParams(
                model="tiny-llama",
                source=str(base2),
                store=served.store.uri,
                suites=str(served.suites),
                policy=str(served.manual),
                config=TrainConfig(**TEST_RECIPE),
            )
        )
        assert v2.trained_on().version == r2 and art.resolve("challenger").version == v2.version
        vllm_server.wait_ready([replica2])
        rt = router.runtime
        rt.add_set("r1", [r.url for r in served.config.replicas])
        rt.wait_up("r1")
        rt.set_shares({"r1": 100})  # r2's set joins the router when the promotion needs it
        doc = yaml.safe_load(served.serving.read_text())
        doc["replicas"] = [{**r, "set": "r1"} for r in doc["replicas"]] + [
            {"url": replica2.url, "model": "tiny-llama", "revision": r2, "set": "r2"}
        ]
        doc["router"] = {
            "url": router.url,
            "admin": rt.admin,
            "canary": [1, 10, 50, 100],
            "step_s": 1.5,
            "max_error_rate": 0.0,
        }
        serving = tmp_path / "serving.yaml"
        serving.write_text(yaml.safe_dump(doc))
        config = load_serving_config(serving)
        via = [config.replicas[0].model_copy(update={"url": router.url})]
        asked = prompts(served, 3)

        # A set that cannot load the adapter gets no traffic, and the old set keeps serving:
        # the serving config wrongly says r2's replica takes rank 32 (it runs --max-lora-rank
        # 16), vLLM refuses the rank-32 variant of v2, the promotion stops before any weight.
        bad = publish_variant(served, v2, "rank32")
        gate(served, bad, served.permissive)
        wrong = config.model_copy(
            update={
                "replicas": [
                    *config.replicas[:2],
                    config.replicas[2].model_copy(update={"max_lora_rank": 32}),
                ]
            }
        )
        with Load(served, asked, via=via) as refused:
            time.sleep(1)
            with pytest.raises(PromotionError, match=r"stopped at load[\s\S]*max_lora_rank 16"):
                promote(served.store, ADAPTER, bad, wrong, suites=served.suites)
            refused.keep_up(refused.answered + 4)
        assert refused.failures == [] and refused.answered >= 4
        assert rt.shares(healthy_only=False).get("r2", 0.0) == 0.0
        assert art.resolve("champion").version == v1.version

        said: list[str] = []
        with Load(served, asked, via=via) as promoting:
            time.sleep(1)
            result = promote(
                served.store, ADAPTER, "challenger", config, suites=served.suites, log=said.append
            )
            promoting.keep_up(promoting.answered + 6)
        assert result.replicas == [replica2.url]  # loaded on r2's set only
        assert result.traffic == {"r1": 0.0, "r2": 100.0}
        assert [line for line in said if line.startswith("traffic")] == [
            f"traffic: replica set r2 takes {share}% of the requests" for share in (1, 10, 50, 100)
        ]
        assert art.resolve("champion").version == v2.version
        name2 = serving_name(ADAPTER, v2)
        with VLLMClient(config.replicas[2]) as client:
            assert set(client.adapters()) == {ADAPTER, name2}
        for replica in config.replicas[:2]:  # r1's set still serves v1, for a rollback
            with VLLMClient(replica) as client:
                assert client.adapters()[ADAPTER].endswith(serving_name(ADAPTER, v1))
        code, out = invoke(
            "serve", "status", ADAPTER, "--serving", str(serving), "--store", served.store.uri
        )
        assert code == 0, out  # r1's set serving the previous champion is not drift
        assert "router: set r1 0%, set r2 100%" in out and out.count("in sync") == 3, out
        before = rt.requests()
        with VLLMClient(via[0]) as client:
            for prompt in asked:
                client.chat(ADAPTER, prompt, max_tokens=8)
        after = rt.requests()
        assert after["r2-0"] == before["r2-0"] + 3
        assert [after[f"r1-{i}"] for i in (0, 1)] == [before[f"r1-{i}"] for i in (0, 1)]

        # r1's set takes no traffic now: it may leave the router (r2's may not: the champion's).
        cli = ("--serving", str(serving), "--store", served.store.uri)
        with pytest.raises(PromotionError, match="serves the base revision of support-bot's"):
            invoke("serve", "retire", "r2", *cli)
        code, out = invoke("serve", "retire", "r1", *cli)
        assert code == 0 and "r1 left the router (r1-0, r1-1)" in out, out
        assert set(rt.sets()) == {"r2"}
        # The rollback brings r1's set back into the router (its replicas still run) and
        # moves the traffic there at once.
        with Load(served, asked, via=via) as rolling_back:
            time.sleep(1)
            back = rollback(served.store, ADAPTER, config)
            rolling_back.keep_up(rolling_back.answered + 6)
        assert back.version == v1.version and back.traffic == {"r1": 100.0, "r2": 0.0}
        for phase, load in (("promotion", promoting), ("rollback", rolling_back)):
            assert load.answered >= 6, (phase, load.answered)
            assert load.failures == [], (phase, load.failures[:3])

        # The router out of step with the store (a person moved weights by hand): sync puts
        # the champion's set back at 100%.
        rt.set_shares({"r1": 50, "r2": 50})
        report = sync(served.store, ADAPTER, config)
        assert report.ok and any(
            "not all to the champion's set r1" in d.problem for d in report.drift
        )
        assert rt.shares(healthy_only=False) == {"r1": 100.0, "r2": 0.0}
    finally:
        router.stop()
        replica2.stop()


def test_the_smoke_test_asks_only_what_the_gate_saw_the_version_answer_in_the_format(
    tmp_path: Path,
) -> None:
    """A promotion's golden prompts are format cases the gated version answered validly (its
    verdict's answers): a case the gate saw it fail proves nothing about the load, and made a
    good adapter's promotion fail by chance. Without stored answers: the first cases."""
    from slmops.evaluation.gate import CaseResult
    from slmops.serving.smoke import gated_answers, smoke_prompts
    from slmops.suites.spec import load_suites
    from tests.helpers import EXAMPLE

    suites = EXAMPLE / "evals"
    loaded = load_suites(suites)
    fmt = loaded.suite_cases("format")
    first, scorer = smoke_prompts(suites, 3)
    assert [c.id for c in first] == [c.id for c in fmt[:3]]
    good = '{"answer": "Open Settings > Inlets.", "sources": [], "confidence": "high"}'
    cut = '{"answer": "Open Settings > Inl'  # what a reply cut at max_tokens looks like
    answers = [
        CaseResult(
            id=c.id,
            suite="format",
            candidate=reply,
            candidate_scores=scorer.score(c, reply),
        )
        for c, reply in zip(fmt[:5], [cut, good, cut, good, good], strict=True)
    ]
    gated = gated_answers(answers)
    assert gated == {fmt[i].id: good for i in (1, 3, 4)}
    golden, _ = smoke_prompts(suites, 3, gated)
    assert [c.id for c in golden] == [fmt[i].id for i in (1, 3, 4)]
    assert gated_answers(None) is None
    # nothing the gate answered in the format: the first cases again (the gate would not have
    # passed such a version; a hand-made verdict could)
    assert [c.id for c in smoke_prompts(suites, 3, gated_answers(answers[:1]))[0]] == [
        c.id for c in fmt[:3]
    ]


def test_without_replicas_the_gate_starts_a_vllm_engine_of_its_own_and_stops_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slmops gate --generator vllm` with no serving config: a vLLM engine on loopback for
    the run (fp32 on CPU), the candidate loaded there under its versioned name, the verdict
    naming it; the engine is gone when the gate ends, and a second gate whose answers are
    all stored starts none."""
    import httpx

    from slmops.evaluation.verdicts import find_verdict
    from slmops.serving.engine import VLLMServerError

    monkeypatch.delenv("SLMOPS_SERVING", raising=False)
    monkeypatch.setenv("SLMOPS_VLLM_PYTHON", str(Path(".venv-vllm/bin/python").absolute()))
    art = VersionedArtifact(served.store, ADAPTERS, ADAPTER)
    v1 = art.resolve("champion")
    challenger = art.get_alias("challenger")
    args = [
        "gate",
        f"{ADAPTER}@{v1.version}",
        "--champion",
        "none",
        "--generator",
        "vllm",
        "--suites",
        str(served.permissive_suites),
        "--policy",
        str(served.permissive),
        "--store",
        served.store.uri,
    ]
    code, out = invoke(*args)
    assert code == 0, out
    flat = " ".join(out.split())
    assert "starting a vLLM engine for tiny-llama (CPU, fp32)" in flat, flat
    verdict = find_verdict(served.store, ADAPTER, v1.version, None)
    assert verdict is not None
    made = verdict.generation["candidate"]
    assert made["backend"] == "vllm" and made["dtype"] == "float32"
    assert made["model"] == serving_name(ADAPTER, v1)
    assert made["url"] not in {r.url for r in served.config.replicas}
    with pytest.raises(httpx.TransportError):  # stopped with the gate
        httpx.get(f"{made['url']}/health", timeout=2)

    code, again = invoke(*args)  # every answer stored: no engine starts
    assert code == 0 and "starting a vLLM engine" not in again, again
    monkeypatch.setenv("SLMOPS_VLLM_PYTHON", "/nonexistent/python")
    with pytest.raises(VLLMServerError, match="SLMOPS_VLLM_PYTHON"):
        invoke(*args[:-2], "--fresh", "--store", served.store.uri)
    if challenger is not None:
        art.set_alias("challenger", challenger.version)
