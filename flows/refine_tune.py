"""refine-tune: base model + revision + dataset -> validated dataset version -> claim the
training key -> LoRA/QLoRA adapter -> adapter version in the store, with its lineage -> eval
gate -> promotion.

Triggered by `slmops.base-model.released` for the adapter's own base model (adapters do not
transfer between base revisions), weekly, or by hand. The pipeline is
`slmops.pipelines.refine_tune` (the same one `slmops refine-tune` runs without Prefect); this
flow runs each of its stages as a task (tasks/training.py), and the eval gate
(flows/eval_gate.py) and promote-adapter as subflows, so each shows on the run's page with its
own log, report and retries.

Run it:  python -m flows.refine_tune tiny-llama .slmops/models/tiny-llama
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from flows.eval_gate import EvalGateParams, eval_gate
from flows.promote_adapter import PromoteParams, promote_adapter
from slmops.evaluation.verdicts import GateRecord
from slmops.pipelines.refine_tune import RefineTuneParams, RefineTuneStages, run_refine_tune
from slmops.store.manifest import Manifest, Trigger
from tasks import training
from tasks.gate import has_verdict
from tasks.trigger import current_trigger

__all__ = ["RefineTuneParams", "refine_tune"]


def gate_subflow(params: RefineTuneParams, store_uri: str, version: str, _: Trigger) -> GateRecord:
    """The eval gate as a subflow: the new adapter against the champion."""
    return eval_gate(
        EvalGateParams(
            adapter=params.adapter,
            version=version,
            champion="auto",
            suites=params.suites,
            policy=params.policy,
            store=store_uri,
            generator=params.generator,
            serving=params.serving,
        )
    )


def promote_subflow(params: RefineTuneParams, store_uri: str, version: str, _: Trigger) -> None:
    """Promotion as a subflow: every replica, all or none."""
    promote_adapter(
        PromoteParams(
            adapter=params.adapter,
            version=version,
            serving=params.serving,
            suites=params.suites,
            store=store_uri,
        )
    )


TASK_STAGES = RefineTuneStages(
    checkout=training.base_model,
    dataset=training.dataset_version,
    warm_start=training.warm_start_from,
    find_trained=training.find_trained,
    claim=training.claim_training,
    train=training.train,
    check=training.format_check,
    publish=training.publish,
    report=training.report_training,
    has_verdict=has_verdict,
    gate=gate_subflow,
    promote=promote_subflow,
)


@flow(name="refine-tune")
def refine_tune(params: RefineTuneParams) -> Manifest:
    """Fine-tune an adapter for a base-model revision and store it with its lineage.

    Args:
        params: Base model and revision, training data, adapter name and hyperparameters.
    """
    return run_refine_tune(
        params, trigger=current_trigger(), stages=TASK_STAGES, log=get_run_logger()
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m flows.refine_tune MODEL_NAME MODEL_SOURCE")
    refine_tune(RefineTuneParams(model=sys.argv[1], source=sys.argv[2]))
