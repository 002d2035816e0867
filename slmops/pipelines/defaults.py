"""The bundled example bot's files: what the deployments of prefect.yaml and the flows' forms
default to, so a first run needs no file of its own."""

EXAMPLE_DATA = "examples/support-bot/train.jsonl"
EXAMPLE_SUITES = "examples/support-bot/evals"
EXAMPLE_POLICY = "examples/support-bot/evals/policy.yaml"
