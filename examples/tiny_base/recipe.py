"""Everything that decides the tiny base model's weights: its tokenizer, its architecture and
its pretraining (corpus and loop). `examples.tiny_base.build` builds, caches and publishes it.

The build's cache key is what decides the weights, not this module's source: the settings
below (PRETRAIN, the word lists and frames, the chat template), RECIPE (the recipe's version:
bump it when a change to the code makes other weights from the same settings and data), the
docs, samples of the conversations and the torch version. A comment or a refactor rebuilds
nothing; a changed setting rebuilds the base on every machine (about 11 minutes on 2 cores).

The weights are not left random: the model is pretrained (every weight, next-token loss) for
1,000 steps on conversations about the bundled docs, drawn afresh every step (`Chats`):
questions answered from the docs, 7 of every 10 sequences with three retrieved passages (the
chunks the product's ingestion cuts, in the serving prompt's form) and a reply citing the
first, 3 of 10 packed with plain questions, half about the docs and half about anything else
(turned away), as a real base model has read text like the one it will serve. A LoRA adapter on a
random base learns the answer format but not the job (it declines everything or repeats one
answer); on this base the example's adapter passes the gate within its 150 steps
(docs/findings/tiny-model.md has the rates).
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DOCS = ROOT / "examples" / "support-bot" / "docs"
# Each step: `passages` sequences of one whole conversation with retrieved passages each
# (Chats.passage) and `plain` sequences of as many whole plain conversations as fit in `seq`
# tokens (Chats.plain). (6 passages, 3 plain and a window of the docs: the example's adapter
# cited a retrieved doc in 0.42 of knowledge answers and declined 0.68 of off-topic ones; 7, 3
# and no window: 0.45 and 0.90.)
# The recipe's own version, part of the weights' cache key with the settings and the data the
# conversations are drawn from (examples.tiny_base.build): bump it when a change to the code below
# makes other weights from the same settings and data (the training loop, how a conversation is
# written). Comments and refactors leave the key, and every machine's cached base, as they are.
RECIPE = 1
PRETRAIN: dict[str, Any] = {
    "steps": 1000,
    "seq": 384,
    "passages": 7,
    "plain": 3,
    "lr": 3e-3,
    "warmup": 20,
}
# The conversations the base is pretrained on besides the docs (Chats), as an instruct model
# has seen conversations: questions about the docs answered from them (with or without
# passages to read, citing the one that answers), and questions about anything else turned
# away. No system prompt, no whole JSON object (a reply that cites opens with the bot's
# citation header, CITE_HEAD, and goes on in plain text), and phrasings and subjects of their
# own (none is in the example's training rows or eval suites): the adapter still has to learn
# the bot's format, fields, style and refusal wording.
CONTEXT_CHARS = 240  # as much of each passage as the example's knowledge suite shows
# How a reply that cites opens: the first keys of the bot's answer object, in the order the
# example's training rows write them. The label to cite is then as many tokens from the
# prompt's list of sources ("Sources you can cite: ..." , `with_context`) as it will be in the
# adapter's replies, so the copying learned here is the copying the adapter needs.
CITE_HEAD = '{"confidence": "high", "sources": ["'
# Share of passages whose labels are other docs' paths (the reply cites the first label all
# the same): the label can then only be copied, not recalled from what the passage is about.
# Without them the base cited by memory (the example's adapter: a doc other than the ones
# shown in 9 of 33 knowledge answers, seed 42). With 1 in 10, 5 of 33 still cited a doc not
# shown. With 3 in 10 it copied every label, but the answer no longer followed the label and
# collapsed onto a few doc sentences (r1's adapter: format.distinct_answers 0.175, the gate
# failed it). 2 in 10 copies (with every doc an answering one, `_chunk_leads`: r1 cites a
# retrieved doc in 0.97 of knowledge answers) and still answers by the label (distinct 0.40)
# (docs/findings/tiny-model.md, "Citing is copying").
RELABELLED = 0.2
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
    # Every bundled doc's path as one token (HTML and PDF ones too: retrieval puts them in
    # prompts): a reply cites a passage by copying its label, and this network copies one
    # token far better than the 7-10 pieces BPE cuts a path into (`in|lets|/|e|mail|-|inlet|
    # .md`): the example's adapter cited a retrieved doc in 0.67-0.79 of knowledge answers on
    # this base (three seeds), 0.39-0.45 with BPE paths (docs/findings/tiny-model.md, "Citing is
    # copying").
    tokenizer.add_tokens(sorted(_chunks()))
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


@functools.cache
def _chunks() -> dict[str, list[str]]:
    """The chunks ingestion cuts the bundled docs into, every format it reads (once per
    process: the build's key and its pretraining both draw conversations from them)."""
    from slmops.rag.chunking import chunk_folder
    from slmops.rag.docs import FORMATS

    return chunk_folder(EXAMPLE_DOCS, suffixes=FORMATS)


def _chunk_leads(chunks: list[str]) -> list[tuple[str, str]]:
    """(title, first line) of each of a doc's first chunks, for a doc without `## ` sections
    (a table, an HTML page, a PDF): what a question about it is answered with, so that it is
    an answering doc of the pretraining too (never one, a doc's label was never the one to
    cite: the adapter cited another doc for "What does error TW-131 mean?" with
    api/error-codes.md first in the prompt)."""
    title = _title(chunks[0])
    leads = []
    for chunk in chunks[:3]:
        lines = [
            " ".join(line.split())
            for line in chunk.splitlines()[1:]
            if line.strip() and not line.startswith("#") and not set(line) <= set("|-: ")
        ]
        if lines and lines[0].startswith("|") and len(lines) > 1:
            lines = lines[1:]  # a table's header row says nothing
        if lines:
            leads.append((title, re.split(r"(?<=[.!?])\s(?=[A-Z])", lines[0])[0][:200]))
    return leads


class Chats:
    """Conversations of the pretraining corpus, a new one for every draw (so what is learned
    is the rule, not the conversations: fixed ones are memorized whole, labels included).

    `passage()`: a question about one section of a doc with three retrieved passages, the
    answering doc's first (as retrieval ranks them), each labelled with its path, in the form
    the gate and serving prompts use (`slmops.suites.prompts.with_context`: the passages,
    the question, then the list of sources); the reply opens with the bot's citation header
    (CITE_HEAD) and the first passage's label, then answers in plain text. A share of the
    passages (RELABELLED) carry other docs' paths, so that the label is copied, not recalled:
    with each path one token and the list at a fixed distance from the citation, the copy is
    learned within a few hundred steps (the base before this form, continued for 150 such
    steps with 1 in 10 relabelled: 0.90 of relabelled passages cited by their first label,
    1.00 of the others). (With BPE paths of 7-10 tokens and the label only before each
    passage, relabelled passages taught nothing in 1,100 steps.)

    `plain()`: a question without passages, half about a section of the docs (answered with
    its first sentence), half about anything else (turned away with OUT_OF_SCOPE), asked in
    the same frames (ASK_FRAMES) so that the subject decides, not the phrasing."""

    def __init__(self, seed: int) -> None:
        import random

        from slmops.rag.docs import section_leads

        self.rng = random.Random(seed)
        self.chunks = _chunks()  # what retrieval puts into the prompt
        self.paths = sorted(self.chunks)
        self.all_chunks = [(p, c) for p in self.paths for c in self.chunks[p]]
        self.sections = [
            (path, heading, answer, _title(text))
            for path, text in _docs().items()
            for heading, answer in section_leads(text)
        ]
        answering = {path for path, *_ in self.sections}
        self.sections += [
            (path, "what it says", answer, title)
            for path in self.paths
            if path not in answering
            for title, answer in _chunk_leads(self.chunks[path])
        ]

    def _subject(self, heading: str, title: str) -> str:
        form = self.rng.choice(["{h} in {t}", "{h} ({t})", "{h} for {t}", "{t}, {h}", "{t}"])
        return form.format(h=heading.lower(), t=title)

    def passage(self) -> str:
        from slmops.rag.chunking import chunk_holding
        from slmops.suites.prompts import with_context

        rng = self.rng
        path, heading, answer, title = rng.choice(self.sections)
        own = self.chunks[path]
        right = chunk_holding(own, answer)
        others = [(path, c) for c in own if c is not right] if rng.random() < 0.3 else []
        others += rng.sample([(p, c) for p, c in self.all_chunks if p != path], 2)
        hits = [(path, right), *others[:2]]
        if rng.random() < RELABELLED:
            labels = rng.sample(self.paths, len(hits))
            hits = [(label, chunk) for label, (_, chunk) in zip(labels, hits, strict=True)]
        ask = rng.choice(ASK_FRAMES).format(s=self._subject(heading, title))
        user = with_context([{"role": "user", "content": ask}], hits, CONTEXT_CHARS)[-1]
        return _turn(user["content"], f'{CITE_HEAD}{hits[0][0]}"]}} {answer}')

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
    """Next-token training of every weight on conversations drawn afresh (see PRETRAIN,
    Chats). Returns the last loss."""
    import torch

    seq, passages, plain = PRETRAIN["seq"], PRETRAIN["passages"], PRETRAIN["plain"]
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
        # Whole conversations, padded (the padding is not learned).
        chat_rows = [encode(chats.passage())[:seq] for _ in range(passages)]
        chat_rows += [packed() for _ in range(plain)]
        rows = [chat + [-100] * (seq - len(chat)) for chat in chat_rows]
        y = torch.tensor(rows)
        x = y.masked_fill(y == -100, pad)
        out = model(input_ids=x, labels=y)
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = out.loss.item()
        if log and ((step + 1) % 25 == 0 or step + 1 == steps):
            print(
                f"  pretraining the tiny base on the bundled docs: step {step + 1}/{steps}, "
                f"loss {loss:.2f}, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    model.eval()
    return loss


def new_model(tokenizer: Any, *, seed: int, layers: int, hidden: int) -> Any:
    """A Llama of `layers` x `hidden` for `tokenizer`, its weights drawn from `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrained(*, seed: int, layers: int, hidden: int, steps: int) -> tuple[Any, Any]:
    """(model, tokenizer): the base, pretrained for `steps` (0: random weights)."""
    tokenizer = build_tokenizer()
    model = new_model(tokenizer, seed=seed, layers=layers, hidden=hidden)
    if steps:
        pretrain(model, tokenizer, steps, seed=seed)
    return model, tokenizer


def save(model: Any, tokenizer: Any, folder: Path) -> None:
    """The folder a Hugging Face model loads from: weights, tokenizer, chat template and a
    greedy generation config."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config = model.config
    (folder / "generation_config.json").write_text(
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
