"""Our checkpoint format for the upstream option, and a safetensors writer that streams.

A directory with:

- ``config.json``: ``{"format": "lda-upstream-checkpoint", "format_version": 1, "config": UpstreamConfig,
  "source": {...}}`` (``source`` says where the weights came from);
- ``model.safetensors``: the action model (MM-DiT, encoders, decoder, tokens, DINOv3) under our names;
- ``vlm.safetensors``: the Qwen3-VL weights under transformers' names (absent for a head-only import);
- ``normalization.json``: the authors' dataset statistics as their release carries them, or ``null``.

Pickle is never read here (the importer reads the authors' ``pytorch_model.pt`` with
``torch.load(weights_only=True)``, the only place a pickle container is opened).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lda_common.config import parse, read_versioned_json, write_versioned_json
from safetensors import safe_open

from ..checkpoint import CheckpointError
from .config import UpstreamConfig

FORMAT = "lda-upstream-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, VLM_FILE, NORMALIZATION_FILE = ("config.json", "model.safetensors", "vlm.safetensors",
                                                           "normalization.json")

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def write_safetensors_streaming(path: Path, entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                                get: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None,
                                dtype: torch.dtype | None = None) -> int:
    """Writes a safetensors file one tensor at a time: only one tensor (and its cast) is in memory at once.

    ``entries``: (name, shape, dtype) of each tensor, for the header; ``get(name)`` then returns it (a
    memory-mapped tensor is read only while it is written). ``dtype`` casts floating tensors.
    Returns the number of bytes of tensor data written.
    """
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": metadata or {}}
    offset = 0
    for name, shape, src_dtype in entries:
        out_dtype = dtype if dtype is not None and src_dtype.is_floating_point else src_dtype
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=out_dtype).element_size()
        header[name] = {"dtype": _DTYPES[out_dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data must start 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, _, _ in entries:
            t = get(name)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            f.write(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return offset


def write_config(directory: Path, config: UpstreamConfig, source: dict[str, Any]) -> None:
    body = {"config": config.to_dict(), "source": source}
    write_versioned_json(directory / CONFIG_FILE, FORMAT, FORMAT_VERSION, body)


def read_upstream_config(directory: str | Path) -> UpstreamConfig:
    path = Path(directory).expanduser() / CONFIG_FILE
    body = read_versioned_json(path, FORMAT, FORMAT_VERSION, "an imported upstream LDA checkpoint", CheckpointError)
    return parse(UpstreamConfig, body.get("config"), path, prefix="config", error=CheckpointError)


def is_upstream_checkpoint(directory: str | Path) -> bool:
    """True for a directory written by ``lda-import-upstream`` (its config.json names our upstream format)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_state(found: Mapping[str, torch.Size], expected: Mapping[str, torch.Size], what: str) -> None:
    """Refuses missing or unexpected keys and shape mismatches, naming them (the first few of each)."""
    missing = [k for k in expected if k not in found]
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k!r} has shape {tuple(found[k])}, expected {tuple(v)}" for k, v in expected.items()
             if k in found and tuple(found[k]) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:6]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:6]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:6]))
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))


def load_upstream(directory: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> Any:
    """The :class:`UpstreamLDA` of an imported checkpoint, weights loaded, in eval mode."""
    from .head import UpstreamLDA

    directory = Path(directory).expanduser()
    config = read_upstream_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} is missing {WEIGHTS_FILE}")
    model = UpstreamLDA(config)
    with safe_open(str(weights), framework="pt") as f:
        found = {k: f.get_slice(k).get_shape() for k in f.keys()}
        check_state(found, {k: v.shape for k, v in model.state_dict().items()}, str(weights))
        state = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def read_normalization(directory: str | Path) -> Any:
    """The authors' statistics stored at import (``None`` when their release carried none)."""
    path = Path(directory).expanduser() / NORMALIZATION_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} is missing {NORMALIZATION_FILE}")
    return json.loads(path.read_text()).get("statistics")


def write_normalization(directory: str | Path, statistics: Any, source: str | None = None,
                        **extra: Any) -> Path:
    """``normalization.json`` as the importer writes it (``statistics`` in the authors' layout, or None);
    ``extra`` keys are added to the body (e.g. the statistics of the checkpoint a fine-tune started from)."""
    body = {"format": "lda-upstream-normalization", "source": source, "statistics": statistics, **extra}
    path = Path(directory) / NORMALIZATION_FILE
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


def save_upstream(directory: str | Path, model: Any, source: dict[str, Any], statistics: Any = None,
                  vlm_state: Mapping[str, torch.Tensor] | None = None, vlm_file: str | Path | None = None,
                  normalization_source: str | None = None, **normalization_extra: Any) -> Path:
    """Writes ``model`` (an :class:`UpstreamLDA`) as an upstream checkpoint that :func:`load_upstream` reads.

    The VLM comes from ``vlm_state`` (a Qwen3-VL state dict; a tied ``lm_head.weight`` is stored once, as
    the importer does) or ``vlm_file`` (an existing ``vlm.safetensors``, hard-linked when possible, else
    copied); with neither the checkpoint is head-only. ``source`` is recorded in config.json.
    """
    import os
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    write_safetensors_streaming(directory / WEIGHTS_FILE, [(k, tuple(v.shape), v.dtype) for k, v in state.items()],
                                lambda k: state[k], {"format": FORMAT})
    config = model.config
    target = directory / VLM_FILE
    if target.exists():
        target.unlink()
    if vlm_state is not None:
        vlm = dict(vlm_state)
        tied = (config.vlm or {}).get("tie_word_embeddings", True)
        embed = "model.language_model.embed_tokens.weight"
        if tied and "lm_head.weight" in vlm and embed in vlm and vlm["lm_head.weight"].data_ptr() == \
                vlm[embed].data_ptr():
            del vlm["lm_head.weight"]
        write_safetensors_streaming(target, [(k, tuple(v.shape), v.dtype) for k, v in vlm.items()],
                                    lambda k: vlm[k], {"format": "pt"})
    elif vlm_file is not None:
        try:
            os.link(vlm_file, target)
        except OSError:
            shutil.copyfile(vlm_file, target)
    write_config(directory, config, source)
    write_normalization(directory, statistics, normalization_source, **normalization_extra)
    return directory
