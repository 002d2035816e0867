"""The pipelines: the drivers that chain the stages (rag, training, evaluation, serving,
assess), which never import each other. Each is written once here and runs in-process (the
CLI, tests) or with each stage as a Prefect task (flows/ pass the stage functions wrapped).

- refine_tune: base release -> dataset -> training -> gate -> promotion
- gate: a gate run (suites, policy, the indexes the knowledge suites retrieve from, the
  answering backend) and its verdict stored
- assess: prompting, RAG or fine-tuning, measured on a team's own cases
- promotion: promotion of an adapter the gate passed
- ingest: docs -> versioned index
"""
