"""The example's tiny base model: a few-million-parameter Llama built locally for the tests and
the demo, pretrained on the example bot's docs (no download). `build` builds, caches and
releases it; `recipe` is what decides its weights (findings: docs/findings/tiny-model.md)."""
