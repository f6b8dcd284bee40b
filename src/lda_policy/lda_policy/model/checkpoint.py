"""Checkpoint directory format and its loader.

A checkpoint is a directory with three files:

- ``config.json``: ``{"format": "lda-checkpoint", "format_version": 1, "config": LDAConfig.to_dict()}``
  (architecture, time layout, flow settings and the embodiment specs);
- ``model.safetensors``: every trainable parameter (buffers are derived from the config);
- ``normalization.json``: :meth:`Normalizer.to_dict` (robust statistics per embodiment and of latents).

Pickle is never loaded: a directory holding only pickle-based weights (``*.bin``, ``*.pt``, ``*.pth``,
``*.ckpt``, ``*.pkl``, ``*.pickle``), or a ``model.safetensors`` that is really a pickle/zip file, is
refused with a :class:`CheckpointError` that names the file. So are missing, unexpected or mis-shaped
keys, a truncated/corrupt weights file, a missing/malformed config, and NaN/Inf in any weight or buffer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lda_common.config import ConfigError, parse, read_versioned_json, write_versioned_json
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import PRESETS, LDAConfig

if TYPE_CHECKING:
    from .lda import LDAModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"
FORMAT = "lda-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ConfigError):
    """A checkpoint directory is missing a file, holds pickle, is malformed or does not fit the model."""


def save_checkpoint(model: LDAModel, directory: str | Path) -> Path:
    """Writes the three checkpoint files into ``directory`` (created if needed) and returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_versioned_json(directory / CONFIG_FILE, FORMAT, FORMAT_VERSION, {"config": model.config.to_dict()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / NORMALIZATION_FILE).write_text(json.dumps(model.normalizer.to_dict(), indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> LDAConfig:
    """The :class:`LDAConfig` stored in a checkpoint directory (no weights are read)."""
    path = _existing(Path(directory), CONFIG_FILE)
    _refuse_upstream(path)
    body = read_versioned_json(path, FORMAT, FORMAT_VERSION, "an LDA checkpoint config", CheckpointError)
    return parse(LDAConfig, body.get("config"), path, prefix="config", error=CheckpointError)


def _refuse_upstream(path: Path) -> None:
    """An imported checkpoint of the authors' model is another architecture: say so instead of 'no format'."""
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (ValueError, AttributeError, OSError):
        return  # read_versioned_json reports what is wrong with the file
    if fmt == "lda-upstream-checkpoint":
        raise CheckpointError(f"{path.parent} is an imported checkpoint of the authors' LDA-1B (lda-import-upstream): "
                              "load it with lda_policy.model.upstream (load_upstream, UpstreamPolicy); LDAModel and "
                              "the model host do not run that architecture yet")


def load_checkpoint(cls: type[LDAModel], directory: str | Path, device: torch.device | str = "cpu",
                    preset: str | None = None) -> LDAModel:
    """Builds a model from a checkpoint; ``preset`` (optional) must match its architecture."""
    directory = Path(directory)
    config = read_config(directory)
    if preset is not None:
        if preset not in PRESETS:
            raise CheckpointError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
        _check_architecture(config, PRESETS[preset], f"preset {preset!r}", directory)
    with torch.device(device):
        model = cls(config)
    _load_state(model, directory)
    return model


def load_into(model: LDAModel, directory: str | Path) -> None:
    """Loads a checkpoint's weights and statistics into ``model``; its config must match exactly."""
    directory = Path(directory)
    config = read_config(directory)
    _check_architecture(config, model.config, f"this model ({model.config.name!r})", directory)
    if config != model.config:
        diff = [k for k, v in config.to_dict().items() if model.config.to_dict()[k] != v]
        raise CheckpointError(f"checkpoint {directory} differs from this model's config in {diff}")
    _load_state(model, directory)


def _check_architecture(found: LDAConfig, expected: LDAConfig, what: str, directory: Path) -> None:
    a, b = found.architecture(), expected.architecture()
    diff = [f"{k}: checkpoint {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise CheckpointError(
            f"checkpoint {directory} (preset {found.name!r}) does not fit {what}: " + "; ".join(diff))


def _load_state(model: LDAModel, directory: Path) -> None:
    weights = _existing(directory, WEIGHTS_FILE)
    with weights.open("rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80" or magic == b"PK\x03\x04":
        raise CheckpointError(f"{weights} is a pickle / torch.save file, not safetensors; pickle is never "
                              "loaded (convert it with safetensors.torch.save_file)")
    try:
        state = load_file(str(weights), device=str(model.action_pos.device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} is not a valid safetensors file: {err}") from None
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]!r}: {missing[:5]}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}: {unexpected[:5]}")
    problems += [f"{k!r} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"{weights} does not match the model: " + "; ".join(problems))
    _check_finite({k: state[k] for k in expected}, weights)
    model.load_state_dict(state, strict=True)
    norm = _existing(directory, NORMALIZATION_FILE)
    try:
        model.normalizer.load_dict(json.loads(norm.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{norm}: invalid normalisation statistics: {err}") from None
    _check_finite(dict(model.named_buffers()), norm)


def _check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuses NaN/Inf: one vectorised check per tensor and a single device sync for all of them."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point() or v.is_complex()}
    if not floats or bool(torch.stack([torch.isfinite(v).all() for v in floats.values()]).all()):
        return
    key, bad = next((k, int((~torch.isfinite(v)).sum())) for k, v in floats.items() if not torch.isfinite(v).all())
    raise CheckpointError(f"{source}: tensor {key!r} holds {bad} non-finite (NaN/Inf) value(s) of "
                          f"{floats[key].numel()}; refusing to load a diverged or corrupt checkpoint")


def _existing(directory: Path, name: str) -> Path:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / name
    if path.is_file():
        return path
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = (f"; found pickle file(s) {pickles}, which are never loaded (pickle can run arbitrary code)"
            if pickles else "")
    raise CheckpointError(f"checkpoint {directory} is missing {name}{hint}")
