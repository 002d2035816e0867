"""Training: datasets, LoRA/QLoRA training (`trainer`) and its memory plan, adapters in the
store and their claims, and the refine-tune pipeline (`refine_tune`) that chains them with the
gate and promotion."""
