"""Prompt engineering, RAG or fine-tuning? Measured on a team's own edge cases, with costs.

Every arm answers the same cases (the eval suites) with greedy decoding:
  prompt            the base model with the system prompt, zero-shot;
  prompt+examples   the same with a long few-shot system prompt (what "just write a better
                    prompt" costs in tokens);
  rag               the base model with retrieved context in every prompt;
  fine-tuned        the champion adapter; fine-tuned+rag: the same with retrieved context.
Each answer is scored by the gate's scorers; a failed case is classified as behaviour (format,
style, terminology, injection: what fine-tuning fixes) or knowledge (the answer does not cite a
doc that holds the answer: what RAG fixes). Failure rates carry bootstrap intervals, and each
arm is compared with prompt-only case by case (paired). Costs come from the prompt and answer
tokens of each arm, the adapter manifests' training cost and how often the store saw the base
model and the docs change. `decide()` then walks the decision tree and keeps the evidence of
every branch.

    from slmops.assess.task import load_task
    from slmops.pipelines.assess import run_assessment
    result = run_assessment(store, load_task("examples/support-bot/assess.yaml"), cache_dir)
"""
