"""Evaluation: the paired comparison of a candidate and the champion on the suites, the
gate's decision under a policy, its report, and the verdict stored with the adapter.

A gate run is a pipeline (it opens indexes and an answering backend):

    from slmops.pipelines.gate import evaluate_adapter
    record = evaluate_adapter(store, "support-bot", "latest", champion="auto",
                              suites="examples/support-bot/evals",
                              policy="examples/support-bot/evals/policy.yaml", cache_dir=...)

The verdict is stored under `evals/<adapter>/versions/<run>/` (report.json, report.md,
comparison.png, answers.jsonl) with a lookup pointer per (candidate, champion) pair, so
promotion finds it with `find_verdict(store, adapter, version, champion_version)`.
"""
