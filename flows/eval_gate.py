"""eval-gate: a candidate adapter against the champion on the eval suites, under the policy:
answers -> per-case scores -> paired comparison -> verdict stored with the adapter.

A passing candidate becomes the adapter's `challenger` (what promotion picks up); a failing
one moves no alias. Either way the verdict, report and chart are stored under
evals/ADAPTER/, the run shows them, and `slmops.gate.passed|failed` is emitted.

Run it:  python -m flows.eval_gate support-bot
    or:  prefect deployment run 'eval-gate/manual' --param params='{"adapter": "support-bot"}'
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.evaluation.verdicts import GateRecord
from slmops.generation import GeneratorChoice
from slmops.pipelines.defaults import EXAMPLE_POLICY, EXAMPLE_SUITES
from slmops.store.versions import check_name
from tasks.gate import report_gate, run_gate
from tasks.trigger import current_trigger


class EvalGateParams(BaseModel):
    """Which adapter version to judge, against what, under which suites and policy."""

    adapter: str = Field("support-bot", description="Adapter name in the store.")
    version: str = Field(
        "latest", description="Candidate: a version id or an alias of the adapter (latest)."
    )
    champion: str = Field(
        "auto",
        description="What the candidate must not be worse than: auto (the adapter's champion "
        "alias, or floors only if there is none), none (floors only), base (the base model "
        "alone), or a version or alias.",
    )
    suites: str = Field(EXAMPLE_SUITES, description="Eval suites folder (with suites.yaml).")
    policy: str = Field(EXAMPLE_POLICY, description="Gate policy YAML: floors, margins, rules.")
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )
    generator: GeneratorChoice = Field(
        "auto",
        description="What answers the cases: vllm (the replica set serving the base revision, "
        "the candidate under its versioned name), transformers (in the worker: bf16 on a GPU, "
        "fp32 on CPU), auto (vllm when a serving config is set).",
    )
    serving: str | None = Field(
        None, description="Serving config YAML (the vLLM replicas). Empty: SLMOPS_SERVING."
    )


@flow(name="eval-gate")
def eval_gate(params: EvalGateParams) -> GateRecord:
    """Judge a candidate adapter against the champion and store the verdict with it.

    Args:
        params: The candidate, the champion to compare with, the suites and the policy.
    """
    logger = get_run_logger()
    check_name(params.adapter, "adapter name")
    store_uri = params.store or get_settings().store
    record = run_gate(
        store_uri=store_uri,
        adapter=params.adapter,
        version=params.version,
        champion=params.champion,
        suites=params.suites,
        policy=params.policy,
        trigger=current_trigger(),
        generator=params.generator,
        serving=params.serving,
    )
    logger.info(report_gate(store_uri=store_uri, record=record))
    return record


if __name__ == "__main__":
    eval_gate(EvalGateParams(adapter=sys.argv[1] if len(sys.argv) > 1 else "support-bot"))
