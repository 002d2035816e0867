"""Prefect flows, one file per pipeline; prefect.yaml points its deployments here."""
