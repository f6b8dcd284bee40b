"""Typed training configuration: YAML file + dotted ``key=value`` overrides, checked field by field.

    cfg = load_config("config/train/demo_cpu.yaml", ["optim.lr=3e-4", "data.datasets.0.role=low"])

Every section is a dataclass with documented defaults. Loading rejects unknown keys (naming the full
dotted path and suggesting the closest known key) and values of the wrong type (``optim.lr: expected
a float, got 'fast'``). YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the dotted key."""


# ---------------------------------------------------------------------------------------------- sections


@dataclass
class DatasetConfig:
    """One local LeRobot v3.0 dataset."""

    root: str  # dataset directory (holds meta/info.json); relative paths are relative to the config file
    repo_id: str | None = None  # LeRobot repo id; default "local/<directory name>"
    name: str | None = None  # label in logs and metrics; default: the directory name
    # How each episode's data role is decided: "quality" reads the episode's quality label (the
    # per-episode label when the dataset has one, else the most restrictive per-frame `quality`);
    # "high" / "low" / "actionless" give the whole dataset that role.
    role: Literal["quality", "high", "low", "actionless"] = "quality"
    embodiment: str | None = None  # default: meta/lda_embodiment.json written by the recorder
    image_key: str | None = None  # camera feature for DINO; default: the dataset's only/first camera
    weight: float = 1.0  # sampling weight per frame relative to other datasets (2.0 = twice as often)
    heldout_fraction: float | None = None  # default: data.heldout_fraction
    heldout_episodes: list[int] | None = None  # explicit held-out episode indices (overrides the fraction)


@dataclass
class TaskWeights:
    """Share of each objective in a batch; renormalised over the tasks a sample's role allows."""

    policy: float = 0.4
    forward_dynamics: float = 0.2
    inverse_dynamics: float = 0.2
    forecast: float = 0.2


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    heldout_fraction: float = 0.1  # share of each dataset's episodes kept for evaluation
    task_weights: TaskWeights = field(default_factory=TaskWeights)
    num_workers: int = 0  # DataLoader workers decoding video (only without the latent cache)


@dataclass
class ModelConfig:
    preset: str | None = "lda-tiny"  # architecture to start from with random weights (see PRESETS)
    checkpoint: str | None = None  # LDA checkpoint directory to fine-tune (takes precedence over preset)
    gradient_checkpointing: bool = False  # recompute MM-DiT activations in backward (lda-1b)
    compile: bool = False  # torch.compile the denoiser (GPU: faster steps after a compile warm-up)


@dataclass
class EncoderConfig:
    dino_path: str | None = None  # local DINOv3 ViT checkpoint directory (save_pretrained format)
    language: Literal["minilm", "qwen3vl"] = "minilm"
    language_path: str | None = None  # local directory; default for minilm: the bundled all-MiniLM-L6-v2
    device: str = "auto"  # where the frozen encoders run: auto | cpu | cuda | cuda:N
    batch_size: int = 32  # frames per DINO forward


@dataclass
class CacheConfig:
    enabled: bool = True  # train from cached DINO latents (False: decode video + run DINO every step)
    dir: str | None = None  # cache root; default $XDG_CACHE_HOME/lda_train/latents
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    shard_frames: int = 4096  # frames per safetensors shard
    # auto: a missing, stale (dataset or encoder changed) or corrupt cache is rebuilt;
    # never: such a cache is an error (use on training nodes that must not run the encoder)
    rebuild: Literal["auto", "never"] = "auto"


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr`` (paper Table V)."""

    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema: bool = False  # keep an exponential moving average of the weights (exported as ema/)
    ema_decay: float = 0.999  # reached after a warm-up: decay_t = min(ema_decay, (1 + t) / (10 + t))


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 32  # global batch (all processes, all accumulation micro-batches)
    micro_batch_size: int | None = None  # samples per forward per process; default batch_size / world size
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # multi-process wrapper (fsdp shards lda-1b over GPUs)
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # newest checkpoints kept (0 keeps all)
    eval_every: int = 500  # 0: evaluate only at the end
    num_threads: int = 0  # torch CPU threads per process (0: torch default; 1 is fastest on a busy shared CPU)
    deterministic: bool = False  # torch deterministic kernels: bit-exact reruns, somewhat slower


@dataclass
class EvalConfig:
    enabled: bool = True
    max_samples: int = 256  # held-out samples per evaluation (evenly spaced, deterministic)
    batch_size: int = 32
    num_inference_steps: int | None = None  # Euler steps; default: the model's
    seed: int = 0  # noise seed of the samplers (evaluations are reproducible)


@dataclass
class TrainingRunConfig:
    """Everything `lda-train` and `lda-cache-latents` need."""

    output_dir: str = "out/train"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (each torchrun process takes cuda:LOCAL_RANK)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingRunConfig:
    """Reads a YAML config (or starts from the defaults), applies dotted overrides, validates.

    Relative paths (dataset roots, output and cache dirs, encoder and checkpoint directories) are
    relative to the current directory, as on the command line.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        _apply_override(data, item)
    cfg = _build(TrainingRunConfig, data, "")
    _validate(cfg)
    return cfg


def parse_override(item: str) -> tuple[list[str], str]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], "value")."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    return key.split("."), value


def _apply_override(data: dict[str, Any], item: str) -> None:
    parts, raw = parse_override(item)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float, bool)) or value is None:
        value = _RawScalar(raw, value)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            idx = _list_index(part, node, where)
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: cannot descend into a {type(node).__name__}")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, ".".join(parts))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{'.'.join(parts[:-1])}: cannot set a key inside a {type(node).__name__}")


def _list_index(part: str, node: list, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"{where}: expected a list index, got {part!r}") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"{where}: index {idx} out of range (the list has {len(node)} item(s))")
    return idx


class _RawScalar:
    """An override value YAML parsed as a scalar, with its raw text (so `name=123` stays a string)."""

    def __init__(self, raw: str, value: Any) -> None:
        self.raw, self.value = raw, value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean {_join(where, close[0])!r}?" if close else f"; known keys: {names}"
        raise ConfigError(f"{_join(where, str(key))}: unknown key{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _join(where, f.name)
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    raw = None
    if isinstance(value, _RawScalar):
        raw, value = value.raw, value.value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(_RawScalar(raw, value) if raw is not None else value, a, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {_describe(value)} fits none of {errors}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if raw is not None:
            value = raw.strip()
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {_describe(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if tp is str:
        if raw is not None:
            return raw.strip()
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _validate(cfg: TrainingRunConfig) -> None:
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.model.preset is not None or cfg.model.checkpoint is not None, "model",
         "set model.preset or model.checkpoint")
    if cfg.model.preset is not None and cfg.model.checkpoint is None:
        from lda_policy.model import PRESETS

        need(cfg.model.preset in PRESETS, "model.preset", f"unknown preset {cfg.model.preset!r}; "
             f"available: {sorted(PRESETS)}")
    o, t, d = cfg.optim, cfg.train, cfg.data
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(0 <= o.min_lr <= o.lr, "optim.min_lr", "must lie in [0, optim.lr]")
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", "must lie in [0, 1)")
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
    need(0 < o.ema_decay < 1, "optim.ema_decay", "must lie in (0, 1)")
    need(t.steps >= 1, "train.steps", "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.micro_batch_size is None or t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1")
    need(t.log_every >= 1, "train.log_every", "must be >= 1")
    need(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    need(t.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0")
    need(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    need(0 <= d.heldout_fraction < 1, "data.heldout_fraction", "must lie in [0, 1)")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    w = d.task_weights
    weights = [w.policy, w.forward_dynamics, w.inverse_dynamics, w.forecast]
    need(all(x >= 0 for x in weights) and sum(weights) > 0, "data.task_weights",
         "must be >= 0 with a positive sum")
    for i, ds in enumerate(d.datasets):
        need(ds.weight > 0, f"data.datasets.{i}.weight", "must be > 0")
        need(ds.heldout_fraction is None or 0 <= ds.heldout_fraction < 1, f"data.datasets.{i}.heldout_fraction",
             "must lie in [0, 1)")
    need(cfg.encoders.batch_size >= 1, "encoders.batch_size", "must be >= 1")
    need(cfg.cache.shard_frames >= 1, "cache.shard_frames", "must be >= 1")
    need(cfg.eval.max_samples >= 1 and cfg.eval.batch_size >= 1, "eval", "max_samples and batch_size must be >= 1")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (dict, list)) else type(value).__name__


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def dump_config(cfg: TrainingRunConfig) -> str:
    """YAML text of a resolved config (written next to every run's checkpoints)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
