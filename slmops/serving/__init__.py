"""Serving: the vLLM client and serving config (`client`), and promotion of adapters to the
replicas with rollback and sync (`promotion`)."""
