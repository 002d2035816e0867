"""Build a tiny Llama base model locally, for tests and the demo: no hub download.

    python -m infra.tiny_model .slmops/models/tiny-llama            # revision 1
    python -m infra.tiny_model .slmops/models/tiny-llama --seed 2   # other weights

A few million parameters, random weights, a byte-level BPE tokenizer trained in well under a
second on the bundled docs, a chat template, pad and eos tokens; saved with save_pretrained so
it loads like any Hugging Face model (transformers, peft, vLLM). A different seed or layer count
gives a new revision of the same model, which is how tests simulate a base-model release.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

EXAMPLE_DOCS = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "docs"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def _corpus() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted(EXAMPLE_DOCS.rglob("*.md"))]
    # JSON punctuation the support bot answers in, so it tokenises compactly.
    texts.append('{"answer": "", "sources": [], "confidence": "high"} ' * 50)
    return texts


def build_tokenizer(vocab_size: int = 2048) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|end|>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | Path, *, seed: int = 1, layers: int = 4, hidden: int = 256
) -> Path:
    """Write a tiny Llama (weights from `seed`) and its tokenizer to `out_dir`, atomically."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = Path(
        tempfile.mkdtemp(prefix=".tiny-model-", dir=out.parent if out.parent.exists() else None)
    )
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        (tmp / "generation_config.json").write_text(
            json.dumps(
                {
                    "bos_token_id": config.bos_token_id,
                    "eos_token_id": config.eos_token_id,
                    "pad_token_id": config.pad_token_id,
                    "do_sample": False,
                },
                indent=2,
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def publish_release(model_dir: str | Path, number: int) -> Path:
    """A new revision of the model in place, as a Hub repo gets a commit that changes its
    model card and not its weights: the revision (a hash of the folder) changes, the adapter
    must be retrained and gated on it, and a good retrain matches the champion."""
    card = Path(model_dir) / "README.md"
    tmp = card.with_name(f".README.md.{number}")
    tmp.write_text(
        f"# tiny-llama, release {number}\n\nA tiny random Llama built by slmops for tests and "
        "the demo (`python -m infra.tiny_model`). This release updates the model card only.\n"
    )
    tmp.rename(card)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny base model.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=1, help="a different seed: a new revision")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    path = build_tiny_model(args.out_dir, seed=args.seed, layers=args.layers)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"tiny base model in {path} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
