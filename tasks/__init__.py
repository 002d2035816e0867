"""Prefect tasks: orchestration policy (retries, caching, artifacts) over the slmops core."""
