"""slmops: keep a self-hosted, fine-tuned, RAG-backed language model current in production.

The core package: plain Python, no Prefect import. flows/ and tasks/ orchestrate it.
"""

__version__ = "0.1.0"
