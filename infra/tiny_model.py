"""Build a tiny Llama base model locally, for tests and the demo: no hub download.

    python -m infra.tiny_model .slmops/models/tiny-llama            # revision 1
    python -m infra.tiny_model .slmops/models/tiny-llama --seed 2   # other weights

A few million parameters, a byte-level BPE tokenizer trained in well under a second on the
bundled docs, a chat template, pad and eos tokens; saved with save_pretrained so it loads like
any Hugging Face model (transformers, peft, vLLM). A different seed or layer count gives a new
revision of the same model, which is how tests simulate a base-model release.

The weights are not left random: the model is pretrained (every weight, next-token loss) for
1,000 steps on conversations about the bundled docs, drawn afresh every step (`Chats`):
questions answered from the docs, 7 of every 10 sequences with three retrieved passages (the
chunks the product's ingestion cuts, in the serving prompt's form) and a reply citing the
first, 3 of 10 packed with plain questions, half about the docs and half about anything else
(turned away), as a real base model has read text like the one it will serve. A LoRA adapter on a
random base learns the answer format but not the job (it declines everything or repeats one
answer); on this base the example's adapter passes the gate within its 150 steps (README, "What
the tiny model learns", has the rates). The pretrained weights are cached by the hash of
everything that decides them (this file's code, the docs, samples of the conversations, the
torch version) in the user's cache folder (`~/.cache/slmops/tiny-models/<hash>`, or under
XDG_CACHE_HOME, or SLMOPS_TINY_MODEL_CACHE), so the cost (about 11 minutes on 2 cores) is paid
once per machine, not once per clone, and `make clean` keeps it.
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
# Each step: `batch` sequences of `seq` tokens: `passages` of them a whole conversation with
# retrieved passages (Chats.passage), `plain` of them as many whole plain conversations as fit
# (Chats.plain), the rest windows of the docs (none: with 6 passages and a window of the docs,
# the example's adapter cited a retrieved doc in 0.42 of knowledge answers and declined 0.68
# of off-topic ones; with 7 and none, 0.45 and 0.90).
PRETRAIN: dict[str, Any] = {
    "steps": 1000,
    "seq": 384,
    "batch": 10,
    "passages": 7,
    "plain": 3,
    "lr": 3e-3,
    "warmup": 20,
}
# The conversations the base is pretrained on besides the docs (Chats), as an instruct model
# has seen conversations: questions about the docs answered from them (with or without
# passages to read, citing the one that answers), and questions about anything else turned
# away. No JSON object, no system prompt, and phrasings and subjects of their own (none is in
# the example's training rows or eval suites): the adapter still has to learn the bot's
# format, fields, style and refusal wording.
CONTEXT_CHARS = 240  # as much of each passage as the example's knowledge suite shows
# Subjects far from Tidewell (none is in the learning-curve benchmark's fresh prompts).
_OFF_NOUNS = (
    "volcanoes, the Roman empire, chess openings, winter gardening, origami, the human heart, "
    "electric cars, ancient Egypt, bird watching, yoga, the moon landing, pasta sauces, the "
    "piano, sailing knots, honey bees, the Renaissance, mountain bikes, cheese, the Amazon "
    "river, ballet, solar panels, the Great Wall, snowboards, fairy tales, coral reefs, "
    "fountain pens, opera, sushi, tax law, wedding speeches, dog breeds, marathons, "
    "cryptocurrency, vintage cameras, the Vikings, skin care, podcasts, the Nile, rock "
    "climbing, tea ceremonies, dinosaur fossils, lullabies, weather balloons, the Cold War, "
    "sourdough, table tennis, the periodic table, haircuts, camping stoves, poetry, video game "
    "consoles, the Eiffel Tower, horse riding, tulips, submarines, violins, black holes, "
    "knitting, the French revolution, jazz, photosynthesis, medieval castles, electric "
    "guitars, tomatoes, the stock market, earthquakes, penguins, the Olympic games, "
    "mushrooms, thunderstorms, pyramids, rainbows, chocolate, football, the ocean tides, "
    "lighthouses, kites, bread, cats, glaciers, the Titanic, sunflowers, trains, the brain, "
    "Mars, diamonds, surfing, pizza, robots, the Beatles, tornadoes, the Sahara, owls"
)
OFF_SUBJECTS = [n.strip() for n in _OFF_NOUNS.split(",")]
OFF_DOINGS = [
    "bake a cake",
    "learn French",
    "fix a leaking tap",
    "train a puppy",
    "grow tomatoes",
    "paint a room",
    "write a novel",
    "start running",
    "save money",
    "sleep better",
    "tie a tie",
    "knit a scarf",
    "play chess",
    "make pancakes",
    "swim faster",
    "clean my oven",
    "learn to draw",
    "meditate",
    "plant a tree",
    "brew beer",
    "buy a house",
    "change a car battery",
    "speak in public",
    "fold a paper crane",
]
OFF_PLACES = [
    "Paris",
    "Tokyo",
    "Peru",
    "Iceland",
    "Cairo",
    "New York",
    "Norway",
    "Kenya",
    "Rome",
    "Mexico",
    "Vienna",
    "Sydney",
    "Canada",
    "Bali",
    "Chile",
    "Prague",
]
# The frames questions are asked in, on Tidewell and on anything else alike (so the subject,
# not the phrasing, tells the model whether to answer): {s} a subject, {t} a doc title.
ASK_FRAMES = [
    "What does the documentation say about {s}?",
    "What should I know about {s}?",
    "Tell me about {s}.",
    "How does {s} work?",
    "Explain {s} please.",
    "Can you tell me about {s}?",
    "Quick question about {s}",
    "Where do I read about {s}?",
    "I want to know about {s}",
    "Help with {s} please",
    "{s}: explain",
    "{s} -- how?",
    "{s}?",
]
OFF_FRAMES = [
    "Who invented {s}?",
    "What is the history of {s}?",
    "Write a short poem about {s}.",
    "Give me tips on {s}.",
    "Why do people like {s}?",
    "Is {s} worth it?",
]
DOING_FRAMES = [
    "How do I {d}?",
    "Can you help me {d}?",
    "What is the best way to {d}?",
    "Teach me to {d}.",
    "I need to {d}. Any advice?",
]
PLACE_FRAMES = [
    "Plan a trip to {p}.",
    "What is the capital of {p}?",
    "What is {p} famous for?",
    "What is the weather like in {p}?",
    "What should I eat in {p}?",
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


def _turn(user: str, reply: str) -> str:
    return f"<|user|>\n{user}<|end|>\n<|assistant|>\n{reply}<|end|>\n"


def _title(text: str) -> str:
    return text.splitlines()[0].lstrip("# ").strip()


class Chats:
    """Conversations of the pretraining corpus, a new one for every draw (so what is learned
    is the rule, not the conversations: fixed ones are memorized whole, labels included).

    `passage()`: a question about one section of a doc with three retrieved passages, the
    answering doc's first (as retrieval ranks them), each labelled with its path, in the form
    the gate and serving prompts use (`slmops.evaluation.gate.with_context`); the reply cites
    the first passage's path in a list, as chat models cite (`Sources: ["path"].`), then
    answers. (Passages labelled with made-up paths, to teach copying the label, taught
    nothing in 1,100 steps: this network does not learn to copy in minutes.)

    `plain()`: a question without passages, half about a section of the docs (answered with
    its first sentence), half about anything else (turned away with OUT_OF_SCOPE), asked in
    the same frames (ASK_FRAMES) so that the subject decides, not the phrasing."""

    def __init__(self, seed: int) -> None:
        import random

        from slmops.rag.docs import section_leads
        from slmops.rag.ingest import chunk_folder

        self.rng = random.Random(seed)
        self.chunks = chunk_folder(EXAMPLE_DOCS)  # what retrieval puts into the prompt
        self.all_chunks = [(p, c) for p in sorted(self.chunks) for c in self.chunks[p]]
        self.sections = [
            (path, heading, answer, _title(text))
            for path, text in _docs().items()
            for heading, answer in section_leads(text)
        ]

    def _subject(self, heading: str, title: str) -> str:
        form = self.rng.choice(["{h} in {t}", "{h} ({t})", "{h} for {t}", "{t}, {h}", "{t}"])
        return form.format(h=heading.lower(), t=title)

    def passage(self) -> str:
        from slmops.evaluation.gate import with_context

        rng = self.rng
        path, heading, answer, title = rng.choice(self.sections)
        own = self.chunks[path]
        flat = " ".join(answer.split())
        right = next((c for c in own if flat in " ".join(c.split())), own[0])
        others = [(path, c) for c in own if c is not right] if rng.random() < 0.3 else []
        others += rng.sample([(p, c) for p, c in self.all_chunks if p != path], 2)
        hits = [(path, right), *others[:2]]
        ask = rng.choice(ASK_FRAMES).format(s=self._subject(heading, title))
        user = with_context([{"role": "user", "content": ask}], hits, CONTEXT_CHARS)[-1]
        return _turn(user["content"], f'Sources: ["{path}"]. {answer}')

    def plain(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            _, heading, answer, title = rng.choice(self.sections)
            if rng.random() < 0.8:
                ask = rng.choice(ASK_FRAMES + OFF_FRAMES).format(s=self._subject(heading, title))
            else:
                doing = rng.choice(["use", "handle", "get right", "set up"])
                ask = rng.choice(DOING_FRAMES).format(d=f"{doing} {heading.lower()} in {title}")
            return _turn(ask, answer)
        kind = rng.random()
        if kind < 0.6:
            ask = rng.choice(ASK_FRAMES + OFF_FRAMES).format(s=rng.choice(OFF_SUBJECTS))
        elif kind < 0.8:
            ask = rng.choice(DOING_FRAMES).format(d=rng.choice(OFF_DOINGS))
        else:
            ask = rng.choice(PLACE_FRAMES).format(p=rng.choice(OFF_PLACES))
        return _turn(ask, OUT_OF_SCOPE)


def pretrain(model: Any, tokenizer: Any, steps: int, *, seed: int, log: bool = True) -> float:
    """Next-token training of every weight on conversations drawn afresh and on windows of
    the bundled docs (see PRETRAIN, Chats). Returns the last loss."""
    import torch

    ids: list[int] = []
    for text in _docs().values():
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    data = torch.tensor(ids)
    seq, batch = PRETRAIN["seq"], PRETRAIN["batch"]
    passages, plain = PRETRAIN["passages"], PRETRAIN["plain"]
    gen = torch.Generator().manual_seed(seed)
    chats = Chats(seed)
    pad = tokenizer.pad_token_id

    def encode(text: str) -> list[int]:
        tokens: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokens

    def packed() -> list[int]:
        row: list[int] = []
        while True:
            chat = encode(chats.plain())
            if len(row) + len(chat) > seq:
                return row
            row += chat

    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.0)
    warm = PRETRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps)
    )
    model.train()
    loss = float("nan")
    t0 = time.perf_counter()
    for step in range(steps):
        # Windows of the docs; whole conversations, padded (the padding is not learned).
        starts = torch.randint(0, len(data) - seq - 1, (batch - passages - plain,), generator=gen)
        rows = [data[i : i + seq].tolist() for i in starts]
        chat_rows = [encode(chats.passage())[:seq] for _ in range(passages)]
        chat_rows += [packed() for _ in range(plain)]
        rows += [chat + [-100] * (seq - len(chat)) for chat in chat_rows]
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
    chats = Chats(seed)  # the conversations' form, the product's prompt form included
    for text in (
        _corpus() + [chats.passage() for _ in range(20)] + [chats.plain() for _ in range(20)]
    ):
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
