"""Evaluation: eval suites, scorers, the paired comparison and the gate's decision, and the
verdict stored with the adapter.

    from slmops.evaluation.verdicts import evaluate_adapter
    verdict = evaluate_adapter(store, "support-bot", "latest", champion="auto",
                               suites="examples/support-bot/evals",
                               policy="examples/support-bot/evals/policy.yaml")

The verdict is stored under `evals/<adapter>/versions/<run>/` (report.json, report.md,
comparison.png, answers.jsonl) with a lookup pointer per (candidate, champion) pair, so
promotion finds it with `find_verdict(store, adapter, version, champion_version)`.
"""
