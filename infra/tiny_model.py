"""Build a tiny Llama base model locally, for tests and the demo: no hub download.

    python -m infra.tiny_model .slmops/models/tiny-llama            # revision 1
    python -m infra.tiny_model .slmops/models/tiny-llama --seed 2   # other weights

A few million parameters, a byte-level BPE tokenizer trained in well under a second on the
bundled docs, a chat template, pad and eos tokens; saved with save_pretrained so it loads like
any Hugging Face model (transformers, peft, vLLM). A different seed or layer count gives a new
revision of the same model, which is how tests simulate a base-model release.

The weights are not left random: the model is pretrained (every weight, next-token loss) on the
bundled docs and on conversations about them for 1,000 steps, as a real base model has read
text like the one it will serve. A LoRA adapter on a random base learns the answer format but
not the job (it declines everything or repeats one answer); on this base it passes the gate
after about 100 steps. The pretrained weights are cached by the hash of everything that decides
them (this file's code, the corpus, the torch version) in the user's cache folder
(`~/.cache/slmops/tiny-models/<hash>`, or under XDG_CACHE_HOME, or SLMOPS_TINY_MODEL_CACHE), so
the cost (about 10-12 minutes on 2 cores) is paid once per machine, not once per clone, and
`make clean` keeps it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DOCS = ROOT / "examples" / "support-bot" / "docs"
# Each step: `batch` sequences of `seq` tokens, `passages` of them whole conversations with
# retrieved passages (ContextChats), the rest windows of the docs and the plain chats.
PRETRAIN: dict[str, Any] = {
    "steps": 1000,
    "seq": 384,
    "batch": 10,
    "passages": 6,
    "lr": 3e-3,
    "warmup": 20,
}
# Plain-text chats the base is pretrained on besides the docs, as an instruct model has seen
# conversations: questions about the docs answered from them (and, in ContextChats, with
# passages to read, citing the one that answers), and questions about anything else turned
# away. No JSON object, no system prompt, and phrasings and subjects of their own (none is in
# the example's training rows or eval suites): the adapter still has to learn the bot's
# format, fields, style and refusal wording.
CHAT_ASKS = [
    "What does the documentation say about {h} in {t}?",
    "{t}, {h}: explain",
    "Help with {h} for {t} please",
    "I want to know about {h} ({t})",
    "Where do I read about {h}? It is for {t}.",
    "{h} -- {t}",
]
_OFF_NOUNS = (
    "volcanoes, the Roman empire, chess openings, winter gardening, origami, the human heart, "
    "electric cars, ancient Egypt, bird watching, yoga, the moon landing, pasta sauces, the "
    "piano, sailing knots, honey bees, the Renaissance, mountain bikes, cheese, the Amazon "
    "river, ballet, solar panels, wine, the Great Wall, snowboards, fairy tales, card games, "
    "coral reefs, fountain pens, opera, sushi, tax law, wedding speeches, dog breeds, "
    "marathons, cryptocurrency, vintage cameras, the Vikings, skin care, podcasts, the Nile, "
    "rock climbing, tea ceremonies, dinosaur fossils, lullabies, weather balloons, the Cold "
    "War, sourdough, table tennis, the periodic table, haircuts, camping stoves, poetry, "
    "video game consoles, the Eiffel Tower, horse riding, tulips, submarines, violins"
)
CHAT_OFF_SUBJECTS = [
    frame.format(n=noun.strip())
    for noun in _OFF_NOUNS.split(",")
    for frame in ("{n}", "the history of {n}", "{n} for beginners", "the best {n}")
]
CHAT_OFF_ASKS = [
    "What does the documentation say about {x}?",
    "{x}: explain",
    "Help with {x} please",
    "I want to know about {x}",
    "Where do I read about {x}?",
    "{x} -- tips",
]
OUT_OF_SCOPE = "That is outside the Tidewell documentation."
CACHE_VERSION = 2  # the key also hashes this file's source: any change to the build rebuilds
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


def _docs() -> dict[str, str]:
    return {
        p.relative_to(EXAMPLE_DOCS).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(EXAMPLE_DOCS.rglob("*.md"))
    }


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, first sentence of its prose) of each `## ` section of a markdown doc."""
    import re

    out = []
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        prose = [
            ln
            for ln in body.strip().splitlines()
            if ln and not ln.startswith(("|", "```", "-", "1.", "<"))
        ]
        if prose:
            first = re.split(r"(?<=[.!?])\s", " ".join(prose))[0]
            out.append((heading.strip(), first.strip()))
    return out


def _turn(user: str, reply: str) -> str:
    return f"<|user|>\n{user}<|end|>\n<|assistant|>\n{reply}<|end|>\n"


class ContextChats:
    """Conversations with retrieved passages, a new one for every draw: a question about one
    section of a doc, that doc's passage first among three (as retrieval ranks them), each
    labelled with its path, and a reply that cites the first passage's path in a list, as chat
    models cite (`Sources: ["path"].`), then answers. Drawn afresh (the other passages and the
    wording change), so what is learned is which path goes with which passage, not the
    conversations themselves. (Passages labelled with made-up paths, to teach copying the
    label, taught nothing in 1,100 steps: this network does not learn to copy in minutes.)"""

    def __init__(self, seed: int) -> None:
        import random

        self.rng = random.Random(seed)
        docs = _docs()
        self.flat = {path: " ".join(text.split()) for path, text in docs.items()}
        self.paths = sorted(docs)
        self.sections = [
            (path, heading, answer, text.splitlines()[0].lstrip("# ").strip())
            for path, text in docs.items()
            for heading, answer in _sections(text)
        ]

    def draw(self) -> str:
        rng = self.rng
        path, heading, answer, title = rng.choice(self.sections)
        chunks = [path, *rng.sample([p for p in self.paths if p != path], 2)]
        context = "\n".join(f"[{src}] {self.flat[src][:240]}" for src in chunks)
        ask = rng.choice(CHAT_ASKS).format(h=heading.lower(), t=title)
        return _turn(f"Context:\n{context}\n\nQuestion: {ask}", f'Sources: ["{path}"]. {answer}')


def _chats() -> list[str]:
    """The plain-text conversations of the pretraining corpus (see CHAT_ASKS)."""
    import random

    rng = random.Random(7)
    docs = _docs()
    out = []
    for text in docs.values():
        title = text.splitlines()[0].lstrip("# ").strip()
        for heading, answer in _sections(text):
            for template in rng.sample(CHAT_ASKS, 4):
                out.append(_turn(template.format(h=heading.lower(), t=title), answer))
    for subject in CHAT_OFF_SUBJECTS:
        for template in rng.sample(CHAT_OFF_ASKS, 3):
            out.append(_turn(template.format(x=subject), OUT_OF_SCOPE))
    rng.shuffle(out)
    return out


def _pretrain_texts() -> list[str]:
    return list(_docs().values()) + _chats()


def pretrain(model: Any, tokenizer: Any, steps: int, *, seed: int, log: bool = True) -> float:
    """Next-token training of every weight on the bundled docs and chats (random windows) and
    on conversations with retrieved passages (see PRETRAIN). Returns the last loss."""
    import torch

    ids: list[int] = []
    for text in _pretrain_texts():
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    data = torch.tensor(ids)
    seq, batch, passages = PRETRAIN["seq"], PRETRAIN["batch"], PRETRAIN["passages"]
    gen = torch.Generator().manual_seed(seed)
    contexts = ContextChats(seed)
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.0)
    warm = PRETRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps)
    )
    model.train()
    loss = float("nan")
    t0 = time.perf_counter()
    for step in range(steps):
        # Half of each batch: windows of the docs and chats; half: whole conversations with
        # passages (padded; the padding is not learned).
        starts = torch.randint(0, len(data) - seq - 1, (batch - passages,), generator=gen)
        rows = [data[i : i + seq].tolist() for i in starts]
        for _ in range(passages):
            chat = tokenizer(contexts.draw(), add_special_tokens=False)["input_ids"][:seq]
            rows.append(chat + [-100] * (seq - len(chat)))
        y = torch.tensor(rows)
        x = y.masked_fill(y == -100, pad)
        out = model(input_ids=x, labels=y)
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = out.loss.item()
        if log and ((step + 1) % 50 == 0 or step + 1 == steps):
            print(
                f"  pretraining the tiny base on the bundled docs: step {step + 1}/{steps}, "
                f"loss {loss:.2f}, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    model.eval()
    return loss


def _cache_dir() -> Path:
    if os.environ.get("SLMOPS_TINY_MODEL_CACHE"):
        return Path(os.environ["SLMOPS_TINY_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slmops" / "tiny-models"


def _build_key(seed: int, layers: int, hidden: int, steps: int) -> str:
    import torch

    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "v": CACHE_VERSION,
                "seed": seed,
                "layers": layers,
                "hidden": hidden,
                "steps": steps,
                "pretrain": PRETRAIN,
                "template": CHAT_TEMPLATE,
                "special": SPECIAL,
                "torch": torch.__version__,
            },
            sort_keys=True,
        ).encode()
    )
    h.update(Path(__file__).read_bytes())  # the build's own code
    for text in _corpus() + _pretrain_texts():
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:20]


def cached_build(
    *, seed: int = 1, layers: int = 4, hidden: int = 256, pretrain_steps: int | None = None
) -> Path:
    """The cache folder holding this build, built first if missing (see build_tiny_model)."""
    steps = PRETRAIN["steps"] if pretrain_steps is None else pretrain_steps
    cached = _cache_dir() / _build_key(seed, layers, hidden, steps)
    if not (cached / "model.safetensors").is_file():
        if steps:
            print(
                f"building the tiny base model (seed {seed}, {steps} pretraining steps, "
                f"about 11 minutes on 2 cores, once: cached in {cached})",
                flush=True,
            )
        _build(cached, seed=seed, layers=layers, hidden=hidden, steps=steps)
    return cached


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 1,
    layers: int = 4,
    hidden: int = 256,
    pretrain_steps: int | None = None,
) -> Path:
    """Write a tiny Llama (weights from `seed`, pretrained on the bundled docs for
    `pretrain_steps`, default PRETRAIN["steps"]; 0: random) and its tokenizer to `out_dir`,
    atomically. A build with the same inputs is copied from the cache."""
    out = Path(out_dir)
    cached = cached_build(seed=seed, layers=layers, hidden=hidden, pretrain_steps=pretrain_steps)

    def copy(tmp: Path) -> None:
        for f in cached.iterdir():
            shutil.copy2(f, tmp / f.name)

    return _write_folder(out, copy)


def _write_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """`fill` a temporary folder beside `out`, then rename it onto `out`: a reader sees the
    old folder or the whole new one, never a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build(out: Path, *, seed: int, layers: int, hidden: int, steps: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

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
    if steps:
        pretrain(model, tokenizer, steps, seed=seed)

    def save(tmp: Path) -> None:
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

    return _write_folder(out, save)


def publish_release(model_dir: str | Path, number: int, *, steps: int = 20) -> Path:
    """A new revision of the model in place, as a patch release on the Hub: the weights are
    trained on for `steps` more steps (0: the model card changes and the weights do not) and
    the model card says so. The revision (a hash of the folder) changes; an adapter must be
    retrained on it and gated against the champion trained on the release before."""
    model_dir = Path(model_dir)
    if steps:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        pretrain(model, tokenizer, steps, seed=1000 + number, log=False)
        tmp = Path(tempfile.mkdtemp(prefix=".release-", dir=model_dir))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            (tmp / "model.safetensors").replace(model_dir / "model.safetensors")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    card = model_dir / "README.md"
    tmp_card = card.with_name(f".README.md.{number}")
    change = (
        f"This release continues pretraining for {steps} steps (new weights)."
        if steps
        else "This release updates the model card only."
    )
    tmp_card.write_text(
        f"# tiny-llama, release {number}\n\nA tiny Llama built by slmops for tests and "
        f"the demo (`python -m infra.tiny_model`). {change}\n"
    )
    tmp_card.rename(card)
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
