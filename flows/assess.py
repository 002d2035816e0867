"""assess: prompt engineering, RAG or fine-tuning? Every arm (prompt-only, prompt + examples,
RAG, the champion adapter with and without RAG) answers the task's edge cases; failure rates
with intervals, failures classed as behaviour or knowledge, costs at the task's volume, and a
recommendation with the evidence for every branch, stored under evals/assess-NAME/.

Run it:  python -m flows.assess examples/support-bot/assess.yaml
    or:  prefect deployment run 'assess/manual'
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.generation import GeneratorChoice
from tasks.assess import answer_every_arm, store_report
from tasks.trigger import current_trigger

EXAMPLE_TASK = "examples/support-bot/assess.yaml"


class AssessParams(BaseModel):
    """Which task to assess (its cases, adapter, index, prices and threshold are in the file)."""

    task: str = Field(
        EXAMPLE_TASK,
        description="Assessment task YAML: eval suites (the team's edge cases), the adapter "
        "whose champion is the fine-tuned arm, few-shot examples, threshold, volume and prices.",
    )
    max_cases_per_suite: int | None = Field(
        None,
        ge=5,
        description="A quick look: answer only the first N cases of each suite (empty: the "
        "task file's setting, by default every case).",
    )
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )
    generator: GeneratorChoice = Field(
        "auto",
        description="What answers: vllm (the replicas: the base model for the prompt-only and "
        "RAG arms, the champion's versioned name for the fine-tuned ones), transformers (in the "
        "worker), auto (vllm when a serving config is set).",
    )
    serving: str | None = Field(
        None, description="Serving config YAML (the vLLM replicas). Empty: SLMOPS_SERVING."
    )


@flow(name="assess")
def assess(params: AssessParams) -> str:
    """Measure prompt-only, RAG and fine-tuning on the task's cases and recommend one.

    Args:
        params: The assessment task file, a quick look (fewer cases), the store.
    """
    store_uri = params.store or get_settings().store
    run = answer_every_arm(
        store_uri=store_uri,
        task_file=params.task,
        max_cases=params.max_cases_per_suite,
        generator=params.generator,
        serving=params.serving,
    )
    summary = store_report(store_uri=store_uri, run=run, trigger=current_trigger())
    get_run_logger().info(summary)
    return summary


if __name__ == "__main__":
    assess(AssessParams(task=sys.argv[1] if len(sys.argv) > 1 else EXAMPLE_TASK))
