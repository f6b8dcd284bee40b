"""Typed training configuration: YAML file + dotted ``key=value`` overrides, checked field by field.

    cfg = load_config("config/train/demo_cpu.yaml", ["optim.lr=3e-4", "data.datasets.0.role=low"])

Every section is a dataclass with documented defaults, validated by :func:`lda_common.config.parse`:
unknown keys (naming the full dotted path and suggesting the closest known key), values of the wrong type
(``c.yaml: optim.lr: expected a number, got 'fast'``) and out-of-range values are refused; an error in an
override names it (``override: train.steps: ...``). YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from lda_common.config import (
    ConfigError,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    check,
    load_yaml,
    parse,
    plain,
)

Fraction = Annotated[float, Field(ge=0, lt=1)]  # a share in [0, 1)


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
    weight: PositiveFloat = 1.0  # sampling weight per frame relative to other datasets (2.0 = twice as often)
    heldout_fraction: Fraction | None = None  # default: data.heldout_fraction
    heldout_episodes: list[int] | None = None  # explicit held-out episode indices (overrides the fraction)
    # train only on these episode indices (held-out ones excluded); the other episodes are not used at all.
    # Default: every episode that is not held out. For studies on a subset of one recording.
    train_episodes: list[int] | None = None


@dataclass
class TaskWeights:
    """Share of each objective in every batch (objective first: see ``lda_train.data.TaskSampler``); an
    objective that no training frame can serve gives its share to the others."""

    policy: NonNegativeFloat = 0.4
    forward_dynamics: NonNegativeFloat = 0.2
    inverse_dynamics: NonNegativeFloat = 0.2
    forecast: NonNegativeFloat = 0.2

    def __post_init__(self) -> None:
        check(self.policy + self.forward_dynamics + self.inverse_dynamics + self.forecast > 0, "",
              "must have a positive sum")


@dataclass
class RoleWeights:
    """How often a frame of each data role is drawn, within an objective, relative to its share of the frames
    eligible for that objective.

    Among the frames an objective may use, a frame of role ``r`` is drawn with probability proportional to
    ``weight[r]`` x the dataset's ``weight``: all 1.0 (the default) draws every eligible frame equally
    often; ``low: 2.0`` draws each low-quality frame twice as often as a high one for the dynamics and
    forecasting objectives; ``low: 0`` leaves that role out of training (its episodes still count for the
    held-out split and the statistics). The objectives' shares of a batch are ``task_weights``'.
    """

    high: NonNegativeFloat = 1.0
    low: NonNegativeFloat = 1.0
    actionless: NonNegativeFloat = 1.0

    def __post_init__(self) -> None:
        check(self.high + self.low + self.actionless > 0, "",
              "must not all be zero (set high, low or actionless above 0)")

    def as_dict(self) -> dict[str, float]:
        return {"high": self.high, "low": self.low, "actionless": self.actionless}


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    heldout_fraction: Fraction = 0.1  # share of each dataset's episodes kept for evaluation
    task_weights: TaskWeights = field(default_factory=TaskWeights)
    # per-role sampling weight of a frame relative to its share of frames (all 1.0: every frame equally often)
    role_weights: RoleWeights = field(default_factory=RoleWeights)
    num_workers: NonNegativeInt = 0  # DataLoader workers decoding video (only without the latent cache)


@dataclass
class ModelConfig:
    preset: str | None = "lda-tiny"  # architecture to start from with random weights (see PRESETS)
    # checkpoint directory to fine-tune (takes precedence over preset): one of ours, or an authors' checkpoint
    # imported with lda-import-upstream (then the `upstream` section applies)
    checkpoint: str | None = None
    gradient_checkpointing: bool = False  # recompute MM-DiT activations in backward (lda-1b)
    compile: bool = False  # torch.compile the denoiser (GPU: faster steps after a compile warm-up)

    def __post_init__(self) -> None:
        check(self.preset is not None or self.checkpoint is not None, "", "set model.preset or model.checkpoint")
        if self.preset is not None and self.checkpoint is None:
            from lda_policy.model import PRESETS

            check(self.preset in PRESETS, "preset", f"unknown preset {self.preset!r}; available: {sorted(PRESETS)}")


@dataclass
class EncoderConfig:
    dino_path: str | None = None  # local DINOv3 ViT checkpoint directory (save_pretrained format)
    language: Literal["minilm", "qwen3vl"] = "minilm"
    language_path: str | None = None  # local directory; default for minilm: the bundled all-MiniLM-L6-v2
    device: str = "auto"  # where the frozen encoders run: auto | cpu | cuda | cuda:N
    batch_size: PositiveInt = 32  # frames per DINO forward
    # qwen3vl only (paper, appendix A): the VLM sees the current camera frame (t = 0) and the instruction
    vlm_image: bool = True  # False: the instruction alone (tokens fixed per task string)
    vlm_image_size: PositiveInt = 224  # the frame is resized to this square first (a multiple of 32)
    vlm_prompt: str = "{instruction}"  # user-turn text; {instruction} is replaced by the task string
    vlm_batch_size: PositiveInt = 8  # frames per VLM forward while building the cache
    # fine-tune the VLM's last N decoder layers + final norm with the model (paper, appendix A; 0 = frozen
    # VLM). The cache then holds the hidden states entering those layers, not the VLM's outputs.
    vlm_finetune_layers: NonNegativeInt = 0

    def __post_init__(self) -> None:
        check(self.vlm_prompt.count("{instruction}") == 1, "vlm_prompt",
              f"must contain '{{instruction}}' exactly once, got {self.vlm_prompt!r}")
        check(self.vlm_image_size % 32 == 0, "vlm_image_size",
              f"must be a multiple of 32 (Qwen3-VL: 16 px patches merged 2 x 2), got {self.vlm_image_size}")
        if self.vlm_finetune_layers:
            key = "vlm_finetune_layers"
            check(self.language == "qwen3vl", key, f"fine-tunes Qwen3-VL layers, but encoders.language is "
                  f"{self.language!r}: set encoders.language=qwen3vl or vlm_finetune_layers=0")
            check(self.vlm_image, key, "needs encoders.vlm_image=true (the fine-tuned layers' inputs are "
                  "cached per frame; a text-only VLM condition cannot be fine-tuned yet)")
            if self.language_path and (Path(self.language_path) / "config.json").is_file():
                from lda_policy.model.vlm_tail import check_finetune_layers, vlm_text_spec

                try:
                    check_finetune_layers(self.vlm_finetune_layers, vlm_text_spec(self.language_path), True,
                                          self.language_path)
                except ValueError as err:
                    check(False, key, str(err))

    @property
    def per_frame_vlm(self) -> bool:
        """The condition depends on the frame (Qwen3-VL with the image), so it is cached per frame."""
        return self.language == "qwen3vl" and self.vlm_image


@dataclass
class CacheConfig:
    enabled: bool = True  # train from cached DINO latents (False: decode video + run DINO every step)
    dir: str | None = None  # cache root; default $XDG_CACHE_HOME/lda_train/latents
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    shard_frames: PositiveInt = 4096  # frames per safetensors shard
    # auto: a missing, stale (dataset or encoder changed) or corrupt cache is rebuilt;
    # never: such a cache is an error (use on training nodes that must not run the encoder)
    rebuild: Literal["auto", "never"] = "auto"


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr`` (paper Table V)."""

    lr: PositiveFloat = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-5
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: NonNegativeInt = 100
    grad_clip: NonNegativeFloat = 1.0  # max global gradient norm (0 disables)
    ema: bool = False  # keep an exponential moving average of the weights (exported as ema/)
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999  # reached after a warm-up: min(ema_decay, (1+t)/(10+t))
    # learning rate of fine-tuned VLM layers (encoders.vlm_finetune_layers) relative to lr and min_lr:
    # pretrained layers move less than the randomly initialised MM-DiT (our default, not the paper's)
    vlm_lr_scale: Annotated[float, Field(gt=0, le=1)] = 0.1

    def __post_init__(self) -> None:
        check(0 <= self.min_lr <= self.lr, "min_lr", "must lie in [0, optim.lr]")


@dataclass
class TrainConfig:
    steps: PositiveInt = 1000  # optimiser steps
    batch_size: PositiveInt = 32  # global batch (all processes, all accumulation micro-batches)
    micro_batch_size: PositiveInt | None = None  # samples per forward per process; default batch_size / world size
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # multi-process wrapper (fsdp shards lda-1b over GPUs)
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: NonNegativeInt = 3  # newest checkpoints kept (0 keeps all)
    eval_every: NonNegativeInt = 500  # 0: evaluate only at the end
    num_threads: int = 0  # torch CPU threads per process (0: torch default; 1 is fastest on a busy shared CPU)
    deterministic: bool = False  # torch deterministic kernels: bit-exact reruns, somewhat slower


@dataclass
class EvalConfig:
    enabled: bool = True
    max_samples: PositiveInt = 256  # held-out samples per evaluation (evenly spaced, deterministic)
    batch_size: PositiveInt = 32
    num_inference_steps: int | None = None  # Euler steps; default: the model's
    seed: int = 0  # noise seed of the samplers (evaluations are reproducible)


@dataclass
class UpstreamTrainConfig:
    """Fine-tuning an imported authors' checkpoint (``model.checkpoint`` written by ``lda-import-upstream``).

    Unused for our own checkpoints and presets. See docs/guides/upstream-checkpoints.md, section 7.
    """

    # directory with the Qwen3-VL processor files (tokenizer, chat template, image processor) of the VLM the
    # checkpoint embeds (Qwen3-VL-4B-Instruct for the published checkpoints); required
    processor: str | None = None
    vlm: Literal["frozen", "finetune"] = "frozen"  # finetune: the VLM trains at optim.vlm_lr_scale x lr
    # camera frames are padded to a square with the ImageNet-mean colour and resized to this (the authors': 224)
    image_size: PositiveInt = 224
    # observation.state -> the model's state tokens: sincos ([sin q, cos q], the authors' convention for joint
    # angles) or raw (the values as recorded); zero-padded to the checkpoint's state width
    state: Literal["sincos", "raw"] = "sincos"
    # embodiment name -> slot of the checkpoint's per-embodiment layers; an embodiment not listed gets the
    # authors' slot for it (gr1_humanoid: 24) or else the highest slot no other embodiment takes
    embodiment_slots: dict[str, NonNegativeInt] = field(default_factory=dict)
    # decode every training frame once at start-up and keep it (uint8, image_size) in memory (fast for
    # fine-tuning-sized data); false: decode the frames of every batch (DataLoader, data.num_workers)
    preload_frames: bool = True
    # the authors' trainer tiles every batch this many times before the head (trainer.repeated_diffusion_steps:
    # 4), each copy with its own noise and times: more flow-matching draws per VLM forward and decoded frame
    repeated_diffusion_steps: PositiveInt = 1


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
    upstream: UpstreamTrainConfig = field(default_factory=UpstreamTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingRunConfig:
    """Reads a YAML config (or starts from the defaults), applies dotted overrides, validates.

    Relative paths (dataset roots, output and cache dirs, encoder and checkpoint directories) are
    relative to the current directory, as on the command line.
    """
    data = {} if path is None else load_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(data).__name__}", source=path)
    keys = [_apply_override(data, item) for item in overrides]
    try:
        return parse(TrainingRunConfig, data, path)
    except ConfigError as err:
        if err.key and any(_under(err.key, k) or _under(k, err.key) for k in keys):  # the override's doing
            raise ConfigError(err.why, err.key, "override") from None
        raise


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def parse_override(item: str) -> tuple[list[str], str]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], "value")."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    return key.split("."), value


def _apply_override(data: dict[str, Any], item: str) -> str:
    """Sets one ``key.path=value`` in ``data``; returns the dotted key.

    The value is YAML (``[0.8, 0.99]``, ``null``, ``low``), except that a number or boolean stays text for
    the field's type to read (``name=123`` is the name "123", ``steps=12`` the integer 12).
    """
    parts, raw = parse_override(item)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float, bool)):
        value = raw.strip()
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(part, node, where)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"cannot descend into a {type(node).__name__}", where, "override")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, ".".join(parts))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"cannot set a key inside a {type(node).__name__}", ".".join(parts[:-1]), "override")
    return ".".join(parts)


def _list_index(part: str, node: list, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"expected a list index, got {part!r}", where, "override") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"index {idx} out of range (the list has {len(node)} item(s))", where, "override")
    return idx


def dump_config(cfg: TrainingRunConfig) -> str:
    """YAML text of a resolved config (written next to every run's checkpoints)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
