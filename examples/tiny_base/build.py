"""Build a tiny Llama base model locally, for tests and the demo: no hub download.

    python -m examples.tiny_base.build                                   # into the cache
    python -m examples.tiny_base.build .slmops/models/tiny-llama         # revision 1, a folder
    python -m examples.tiny_base.build .slmops/models/tiny-llama --seed 2   # other weights

A few million parameters, a byte-level BPE tokenizer trained in well under a second on the
bundled docs, a chat template, pad and eos tokens; saved with save_pretrained so it loads like
any Hugging Face model (transformers, peft, vLLM). A different seed or layer count gives a new
revision of the same model, which is how tests simulate a base-model release.

The weights are pretrained on conversations about the bundled docs (`examples.tiny_base.recipe`,
which decides them). They are cached by the hash of what decides them (its settings and recipe
version, the docs, every section lead and chunk the conversations are drawn from, samples of
the conversations, the torch version), not by its source text, in the user's cache
folder (`~/.cache/slmops/tiny-models/<hash>`, or under XDG_CACHE_HOME, or
SLMOPS_TINY_MODEL_CACHE), so the cost (about 11 minutes on 2 cores) is paid once per machine,
not once per clone, and `make clean` keeps it. One build of a key runs at a time on a machine:
a second process that needs it (another clone, the test session's background build) waits for
the first and then finds it.

The default build (seed 1, the recipe's settings) ships with the example, in `release/` beside
this file with the key it was built from: a machine whose key matches copies it into the cache
in a second instead of pretraining for 11 minutes. A changed recipe, docs or torch version is a
new key, built here as before; `python -m examples.tiny_base.build --ship` builds the new
default and writes it to `release/` (a test fails until the shipped build is the recipe's).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from examples.tiny_base import recipe as tiny_weights

# The default build, shipped: its files and KEY, the build key they were built from.
RELEASE = Path(__file__).resolve().parent / "release"
DEFAULT = {"seed": 1, "layers": 4, "hidden": 256}


def _cache_dir() -> Path:
    if os.environ.get("SLMOPS_TINY_MODEL_CACHE"):
        return Path(os.environ["SLMOPS_TINY_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slmops" / "tiny-models"


def _build_key(seed: int, layers: int, hidden: int, steps: int) -> str:
    import torch

    w = tiny_weights
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "seed": seed,
                "layers": layers,
                "hidden": hidden,
                "steps": steps,
                "recipe": w.RECIPE,
                "pretrain": w.PRETRAIN,
                "context_chars": w.CONTEXT_CHARS,
                "cite_head": w.CITE_HEAD,
                "relabelled": w.RELABELLED,
                "words": [w.OFF_SUBJECTS, w.OFF_DOINGS, w.OFF_PLACES, w.OUT_OF_SCOPE],
                "frames": [w.ASK_FRAMES, w.OFF_FRAMES, w.DOING_FRAMES, w.PLACE_FRAMES],
                "template": w.CHAT_TEMPLATE,
                "special": w.SPECIAL,
                "torch": torch.__version__,
            },
            sort_keys=True,
        ).encode()
    )
    chats = w.Chats(seed)
    # What the conversations are drawn from, whole: every section's lead (slmops.rag.docs)
    # and every chunk retrieval puts into a prompt (slmops.rag.chunking), so a change to how
    # either is cut rebuilds the base; then samples of the conversations' form, the product's
    # prompt form included.
    h.update(json.dumps([chats.sections, chats.all_chunks]).encode())
    for text in (
        w._corpus() + [chats.passage() for _ in range(20)] + [chats.plain() for _ in range(20)]
    ):
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:20]


def cache_path(
    *, seed: int = 1, layers: int = 4, hidden: int = 256, pretrain_steps: int | None = None
) -> Path:
    """Where this build is (or will be) cached; `is_built` says whether it is there."""
    steps = tiny_weights.PRETRAIN["steps"] if pretrain_steps is None else pretrain_steps
    return _cache_dir() / _build_key(seed, layers, hidden, steps)


def is_built(cached: Path) -> bool:
    return (cached / "model.safetensors").is_file()


@contextlib.contextmanager
def _build_lock(cached: Path) -> Iterator[None]:
    """Hold the build of `cached` for this process; when another holds it, say so and wait."""
    import fcntl

    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.with_name(cached.name + ".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            print(
                f"waiting for the tiny base model's build in progress ({holder}) into {cached}",
                flush=True,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_build(
    *, seed: int = 1, layers: int = 4, hidden: int = 256, pretrain_steps: int | None = None
) -> Path:
    """The cache folder holding this build, built first if missing (see build_tiny_model)."""
    steps = tiny_weights.PRETRAIN["steps"] if pretrain_steps is None else pretrain_steps
    cached = cache_path(seed=seed, layers=layers, hidden=hidden, pretrain_steps=steps)
    if is_built(cached):
        return cached
    with _build_lock(cached):
        if is_built(cached):  # built by the process this one waited for
            return cached
        if shipped_key() == cached.name:
            _write_folder(cached, lambda tmp: _copy_files(RELEASE, tmp))
            print(f"tiny base model: the build shipped in {RELEASE}, copied to {cached}")
            return cached
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

    return _write_folder(out, lambda tmp: _copy_files(cached, tmp))


def _copy_files(source: Path, dest: Path) -> None:
    for f in source.iterdir():
        if f.is_file() and f.name != "KEY":
            shutil.copy2(f, dest / f.name)


def shipped_key() -> str | None:
    """The build key of the default build shipped in RELEASE (None: none is shipped)."""
    key = RELEASE / "KEY"
    if not key.is_file() or not is_built(RELEASE):
        return None
    return key.read_text().split()[0]


def ship() -> Path:
    """Write the recipe's default build (built here first if this machine lacks it) to
    RELEASE, with its key: what every machine with the same key then copies."""
    cached = cache_path(**DEFAULT)
    if shipped_key() == cached.name:
        return RELEASE
    built = cached_build(**DEFAULT)

    def fill(tmp: Path) -> None:
        _copy_files(built, tmp)
        (tmp / "KEY").write_text(
            f"{built.name}\n\nThe build key of these files (examples/tiny_base/build.py, "
            f"_build_key): seed 1, the recipe's settings.\n"
        )

    return _write_folder(RELEASE, fill)


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
    model, tokenizer = tiny_weights.pretrained(seed=seed, layers=layers, hidden=hidden, steps=steps)
    return _write_folder(out, lambda tmp: tiny_weights.save(model, tokenizer, tmp))


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
        tiny_weights.pretrain(model, tokenizer, steps, seed=1000 + number, log=False)
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
        f"the demo (`python -m examples.tiny_base.build`). {change}\n"
    )
    tmp_card.rename(card)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny base model.")
    parser.add_argument(
        "out_dir", nargs="?", help="a folder to write it to (default: build it into the cache)"
    )
    parser.add_argument("--seed", type=int, default=1, help="a different seed: a new revision")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--ship",
        action="store_true",
        help="write the default build to examples/tiny_base/release (after a change to the "
        "recipe), built here first if this machine has not built it",
    )
    args = parser.parse_args()
    if args.ship:
        path = ship()
    elif args.out_dir is None:
        path = cached_build(seed=args.seed, layers=args.layers)
    else:
        path = build_tiny_model(args.out_dir, seed=args.seed, layers=args.layers)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"tiny base model in {path} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
