"""What the store keeps of each kind of artifact that more than one stage reads: an adapter
version's served files (what training writes, what a replica loads and promotion stages)."""

from __future__ import annotations

# The files of a LoRA adapter that vLLM loads; training writes them, promotion stages them.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
