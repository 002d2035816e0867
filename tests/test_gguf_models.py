"""GGUF base models: a GGUF file (or a package that assembles one) is a model source like a
folder, converted once into a save_pretrained folder. The GGUF here is written by the test
(a tiny Gemma 3 with the `gguf` package), so CI downloads nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

from slmops import base_models, gguf_models
from slmops.base_models import WatchedModel, checkout, current_revision
from slmops.errors import ConfigError

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
PIECES = [
    *["\n", "\u2581", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!':"],
    *["th", "he", "\u2581t", "\u2581the", "er", "in", "\u2581a", "an", "on", "re"],
    *["us", "\u2581us", "\u2581user", "mo", "del", "\u2581model", "user", "model"],
]
TERMS = "Use of this model is subject to the test terms.\n"


def tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(SPECIALS) + len(PIECES),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # norms away from their init, so a lost +1 would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(-0.5, 0.5)
    return model


def write_gguf(model: Gemma3ForCausalLM, path: Path) -> Path:
    """A GGUF of `model` as llama.cpp writes one for Gemma 3: float32 tensors, norms stored
    as 1 + weight, a sentencepiece vocabulary, no chat template."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(int(cfg.sliding_window or 512))
    writer.add_vocab_size(cfg.vocab_size)
    tokens = SPECIALS + PIECES
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(SPECIALS) + [-float(i) for i in range(len(PIECES))])
    writer.add_token_types([3, 3, 3, 2, 1, 3, 3] + [1] * len(PIECES))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings, as in Gemma
        array = tensor.detach().float().numpy()
        if "norm" in name:
            array = array + 1.0
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name, name
        writer.add_tensor(gguf_name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (path.parent / "LICENSE-terms.txt").write_text(TERMS)
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Gemma3ForCausalLM, Path]:
    model = tiny_gemma3()
    return model, write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf: tuple[Gemma3ForCausalLM, Path], tmp_path_factory) -> Path:
    _, path = tiny_gguf
    out = tmp_path_factory.mktemp("converted") / "model"
    return gguf_models.convert(path, out, terms=gguf_models.terms_files(f"gguf://{path}", path))


def test_a_converted_gguf_computes_what_the_gguf_computes(tiny_gguf, converted: Path) -> None:
    model, _ = tiny_gguf
    files = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE-terms.txt"} <= files
    assert not any(name.endswith(".gguf") for name in files)
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    ids = torch.tensor([[2, 5, 12, 30, 41, 9, 20]])
    with torch.no_grad():
        want, got = model(ids).logits, plain(ids).logits
    # bf16 on disk: the logits agree to bf16's precision, and rank the next token alike.
    assert torch.allclose(want, got, atol=0.05, rtol=0.05), (want - got).abs().max()
    assert torch.equal(want.argmax(-1), got.argmax(-1))


def test_the_converted_tokenizer_chats_in_gemma_turns_and_stops_at_the_end_of_one(
    converted: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.decode(tokenizer("the user", add_special_tokens=False)["input_ids"]) == (
        "the user"
    )
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
        tokenize=False,
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n"
        "<start_of_turn>model\nhello<end_of_turn>\n"
    )
    assert tokenizer.eos_token == "<end_of_turn>"
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [6, 1]  # <end_of_turn>, then the file's <eos>
    assert json.loads((converted / "config.json").read_text())["eos_token_id"] == [6, 1]


def test_a_gguf_file_is_a_source_whose_revision_is_its_hash(tiny_gguf, tmp_path: Path) -> None:
    _, original = tiny_gguf
    path = tmp_path / "base.gguf"
    path.write_bytes(original.read_bytes())
    (tmp_path / "LICENSE-terms.txt").write_text(TERMS)
    source = f"gguf://{path}"
    rev = current_revision(WatchedModel(name="tiny-gemma", source=source))
    assert rev.revision == hashlib.sha256(path.read_bytes()).hexdigest()[:40]

    cache = tmp_path / "cache"
    checked, folder = checkout("tiny-gemma", source, None, cache)
    assert checked.revision == rev.revision and checked.weights
    assert (folder / "LICENSE-terms.txt").read_text() == TERMS
    made = (folder / "model.safetensors").stat().st_mtime_ns
    # Once per GGUF: a second checkout finds the conversion.
    _, again = checkout("tiny-gemma", source, rev.revision, cache)
    assert again == folder and (again / "model.safetensors").stat().st_mtime_ns == made
    # The licence is not the weights: terms alone do not change what the folder computes.
    (folder / "LICENSE-terms.txt").write_text("other terms")
    assert base_models.weights_digest(folder) == checked.weights

    # A new GGUF is a new revision; the old one stays usable (the champion's base).
    write_gguf(tiny_gemma3(seed=1), path)
    newer = current_revision(WatchedModel(name="tiny-gemma", source=source))
    assert newer.revision != rev.revision
    assert checkout("tiny-gemma", source, rev.revision, cache)[1] == folder
    with pytest.raises(ConfigError, match="not the requested revision"):
        checkout("tiny-gemma", source, "0" * 40, cache)


def test_a_package_that_assembles_a_gguf_is_a_source(tiny_gguf, tmp_path, monkeypatch) -> None:
    _, original = tiny_gguf
    sha = hashlib.sha256(original.read_bytes()).hexdigest()
    package = tmp_path / "pkgs" / "tiny_gemma_gguf"
    (package / "data").mkdir(parents=True)
    (package / "data" / "MODEL_TERMS.html").write_text("<p>terms</p>")
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"EXPECTED_SHA256 = {sha!r}\n"
        "CALLS = []\n"
        "def assemble():\n"
        "    CALLS.append(1)\n"
        f"    target = Path({str(tmp_path / 'assembled.gguf')!r})\n"
        f"    target.write_bytes(Path({str(original)!r}).read_bytes())\n"
        "    return target\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    source = "gguf-package://tiny-gemma-gguf"
    # The watcher reads the revision the package states: nothing is assembled to poll it.
    assert current_revision(WatchedModel(name="g", source=source)).revision == sha[:40]
    assert sys.modules["tiny_gemma_gguf"].CALLS == []
    _, folder = checkout("g", source, None, tmp_path / "cache")
    assert (folder / "MODEL_TERMS.html").read_text() == "<p>terms</p>"
    assert (folder / "config.json").is_file()


def test_bad_gguf_sources_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pip install 'no-such-gguf-package'"):
        current_revision(WatchedModel(name="g", source="gguf-package://no-such-gguf-package"))
    with pytest.raises(ConfigError, match="does not exist"):
        current_revision(WatchedModel(name="g", source=f"gguf://{tmp_path}/missing.gguf"))
    with pytest.raises(ConfigError, match=r"names a \.gguf file"):
        current_revision(WatchedModel(name="g", source=f"gguf://{tmp_path}"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"broken\.gguf"):
        checkout("g", f"gguf://{broken}", None, cache)
    # Nothing half-converted is left to be found later.
    assert not [p for p in cache.rglob("*") if p.is_file()]
