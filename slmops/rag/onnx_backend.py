"""ONNX Runtime encoding for a sentence-transformers model: fp32 (`onnx`) and int8 (`onnx-int8`).

The model's transformer is exported once with `torch.onnx.export`, its attention, layer norms
and GELUs fused by ONNX Runtime's transformer optimizer, and (for `onnx-int8`) its MatMul
weights quantized per channel to int8 (dynamic quantization: activations stay float). The files
are cached by the model's content hash, so every later load is a file open.

sentence-transformers' own ONNX backend needs `optimum-onnx`, whose release on the package index
(0.1.0) requires transformers < 4.58 and fails to import with transformers 5 (no
`get_parameter_dtype`); this module needs only `onnxruntime` and `onnx` (the `onnx` extra).

Only what sentence-transformers models are made of is supported: a Transformer module, a
Pooling module (mean, cls or max) and an optional Normalize. Anything else (a Dense layer, a
custom module) is refused by name, never encoded differently from the PyTorch path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ConfigError

BACKENDS = ("torch", "onnx", "onnx-int8")
_POOLING = ("mean", "cls", "max")
# Architectures ONNX Runtime's transformer optimizer fuses as BERT (attention, layer norm, GELU).
_FUSES_AS_BERT = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert"}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown embedding backend {backend!r}: use one of {', '.join(BACKENDS)}"
        )
    return backend


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "the onnx embedding backends need ONNX Runtime: pip install 'slmops[onnx]' "
            "(onnxruntime and onnx), or use embed_backend 'torch'"
        ) from exc
    return onnxruntime


def pooling_of(model: Any, path: Path) -> str:
    """The pooling mode of a sentence-transformers model, or a ConfigError naming the module
    this backend cannot run."""
    names = [type(module).__name__ for module in model]
    if not names or names[0] != "Transformer":
        raise ConfigError(f"{path}: the onnx backends need a Transformer first module, not {names}")
    mode = "cls"
    for module, name in zip(list(model)[1:], names[1:], strict=True):
        if name == "Pooling":
            mode = str(module.get_config_dict().get("pooling_mode", ""))
            if mode not in _POOLING:
                raise ConfigError(
                    f"{path}: pooling mode {mode!r} is not supported by the onnx backends "
                    f"(supported: {', '.join(_POOLING)}); use embed_backend 'torch'"
                )
        elif name != "Normalize":
            raise ConfigError(
                f"{path}: module {name} is not supported by the onnx backends (Transformer, "
                "Pooling and Normalize are); use embed_backend 'torch'"
            )
    return mode


def _export(model: Any, out: Path) -> None:
    """The model's transformer as ONNX (inputs: the tokenizer's; output: token states)."""
    import torch

    transformer = model[0].auto_model
    names = [n for n in model.tokenizer.model_input_names if n != "position_ids"]

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = model.tokenizer(["an example", "two examples here"], padding=True, return_tensors="pt")
    previous = getattr(transformer.config, "_attn_implementation", None)
    # The eager attention graph is the one ONNX Runtime's optimizer recognises and fuses.
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation("eager")
    try:
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "token_states"]}
        # The exporter's tracing warnings are about Python branches it freezes (padding,
        # masks); the vectors are checked against PyTorch's in the tests.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Wrapped().eval(),
                tuple(sample[n] for n in names),
                str(out),
                input_names=names,
                output_names=["token_states"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    finally:
        if previous and hasattr(transformer, "set_attn_implementation"):
            transformer.set_attn_implementation(previous)


def _fuse(model: Any, source: Path, out: Path) -> bool:
    """Fuse attention, layer norm and GELU (ONNX Runtime's transformer optimizer); False when
    the architecture is not one it fuses (the graph is used as exported)."""
    config = model[0].auto_model.config
    if config.model_type not in _FUSES_AS_BERT:
        return False
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=1,
    )
    fused.save_model_to_file(str(out))
    return True


def _quantize(source: Path, out: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Attention's own projections stay float: quantizing only the dense MatMuls keeps
        # the vectors within cos 0.99 of fp32 on MiniLM, where quantizing more did not.
        op_types_to_quantize=["MatMul"],
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def exported_model(model: Any, model_path: Path, content_hash: str, backend: str) -> Path:
    """The backend's .onnx file for this model, made once into the cache (atomically: a
    concurrent or killed export never leaves a half-written file under the final name)."""
    from slmops.config import get_settings

    ort = _require_onnxruntime()
    root = Path(get_settings().cache_dir).expanduser() / "embedders"
    final = root / f"{content_hash[:16]}-{backend}-ort{ort.__version__}" / "model.onnx"
    if final.is_file():
        return final
    tmp = final.parent.with_name(f".{final.parent.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        _export(model, tmp / "exported.onnx")
        graph = tmp / "exported.onnx"
        if _fuse(model, graph, tmp / "fused.onnx"):
            graph = tmp / "fused.onnx"
        if backend == "onnx-int8":
            _quantize(graph, tmp / "quantized.onnx")
            graph = tmp / "quantized.onnx"
        graph.rename(tmp / "model.onnx")
        for leftover in tmp.iterdir():
            if leftover.name != "model.onnx":
                leftover.unlink()
        # OSError: another process finished the same export first.
        with contextlib.suppress(OSError):
            os.rename(tmp, final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not final.is_file():
        raise ConfigError(f"exporting {model_path} to ONNX left no {final}")
    return final


class OnnxEncoder:
    """Encodes like `SentenceTransformer.encode(normalize_embeddings=True)`, on ONNX Runtime."""

    def __init__(self, model: Any, model_path: Path, content_hash: str, backend: str):
        import torch

        ort = _require_onnxruntime()
        self.pooling = pooling_of(model, model_path)
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        self.file = exported_model(model, model_path, content_hash, backend)
        options = ort.SessionOptions()
        # The same thread count torch uses here (a Dask worker's share, OMP_NUM_THREADS).
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.file), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        # Longest first, as sentence-transformers batches: the least padding per batch.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feeds = {name: batch[name].astype(np.int64) for name in self.inputs}
            states = self.session.run(None, feeds)[0]
            vectors = self._pool(states, batch["attention_mask"])
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-12, None)

    def _pool(self, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask[..., None].astype(np.float32)
        if self.pooling == "max":
            return np.where(weights > 0, states, -1e9).max(axis=1)
        return (states * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
