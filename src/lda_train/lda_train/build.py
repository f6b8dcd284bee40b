"""What a training run is built from, besides its data: the processes (DDP/FSDP under torchrun), the model
(a preset or a checkpoint, with the datasets' embodiments added), the optimiser and its LR and EMA schedules."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from lda_policy.model import PRESETS, EmbodimentSpec, LDAModel
from lda_policy.model.config import LanguageCondition, prompt_hash

from .config import TrainingRunConfig
from .data import DataError


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- processes


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_distributed(device: str = "auto") -> DistEnv:
    """Reads torchrun's environment; initialises the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} requested but CUDA is not available")
    if use_cuda:
        dev = torch.device(device if device.startswith("cuda:") and world == 1 else f"cuda:{local}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return DistEnv(rank, world, local, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainingRunConfig, sources: list, language_dim: int) -> tuple[LDAModel, bool]:
    """The model to train and whether it came from a checkpoint. Embodiments the datasets use and
    the starting config lacks are appended to the free embodiment slots."""
    from_ckpt = cfg.model.checkpoint is not None
    if from_ckpt:
        base = LDAModel.from_pretrained(cfg.model.checkpoint)
        config = base.config
    else:
        base = None
        config = PRESETS[cfg.model.preset]
    specs = list(config.embodiments)
    names = [s.name for s in specs]
    for src in sources:
        if src.embodiment in names:
            spec = specs[names.index(src.embodiment)]
            if (src.has_action and src.action_dim != spec.action_dim) or \
                    (src.has_state and src.state_dim != spec.state_dim):
                raise DataError(f"{src.where}: embodiment {src.embodiment!r} has {spec.action_dim}-d actions and "
                                f"{spec.state_dim}-d states in the model, the dataset has {src.action_dim} / "
                                f"{src.state_dim}")
            continue
        a = src.action_dim or _record_dim(src.embodiment_record, "action")
        s = src.state_dim or _record_dim(src.embodiment_record, "state")
        if not (a and s):
            raise DataError(f"{src.where}: embodiment {src.embodiment!r} is new to the model, and neither the "
                            "dataset's features nor its meta/lda_embodiment.json size its actions and states; "
                            f"use a known embodiment ({names}) for actionless data")
        specs.append(EmbodimentSpec(src.embodiment, a, s, "added by lda-train from the dataset"))
        names.append(src.embodiment)
    if len(specs) > config.max_embodiments:
        raise DataError(f"{len(specs)} embodiments ({names}) exceed the model's {config.max_embodiments} slots")
    if language_dim != config.lang_dim:
        raise TrainError(f"the language encoder gives {language_dim}-d tokens, the model "
                         f"({config.name}) expects lang_dim={config.lang_dim}; for lda-1b / lda-0.5b use "
                         "encoders.language=qwen3vl with the Qwen3-VL-4B checkpoint, or a CPU preset with minilm")
    condition = language_condition(cfg.encoders)
    config = dataclasses.replace(config, embodiments=tuple(specs), condition=condition)
    model = LDAModel(config)
    if model.vlm_tail is not None:  # fine-tuning starts from the VLM's own last layers
        try:
            model.vlm_tail.load_from_vlm(cfg.encoders.language_path)
        except (OSError, ValueError) as err:
            raise TrainError(f"encoders.vlm_finetune_layers={condition.finetune_layers}: {err}") from None
    if base is not None:
        state = base.state_dict()
        has_tail = any(k.startswith("vlm_tail.") for k in state)
        if has_tail and base.config.condition.finetune_layers != condition.finetune_layers:
            raise TrainError(f"model.checkpoint {cfg.model.checkpoint} fine-tuned the last "
                             f"{base.config.condition.finetune_layers} VLM layer(s), this config asks for "
                             f"encoders.vlm_finetune_layers={condition.finetune_layers}; use the same number")
        if has_tail and base.config.condition.vlm_text != condition.vlm_text:
            raise TrainError(f"model.checkpoint {cfg.model.checkpoint} fine-tuned layers of a VLM shaped "
                             f"{base.config.condition.vlm_text}, encoders.language_path is shaped {condition.vlm_text}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        # a checkpoint trained with a frozen VLM keeps the tail just taken from the VLM
        left = [k for k in missing if not k.startswith("vlm_tail.")] + list(unexpected)
        if left:
            raise TrainError(f"model.checkpoint {cfg.model.checkpoint} does not fit the model: keys {left[:5]}")
        model.normalizer.load_dict(base.normalizer.to_dict())
    if cfg.model.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    if cfg.model.compile:
        model.compile_denoiser()
    return model, from_ckpt


def language_condition(e: Any) -> LanguageCondition:
    """The checkpoint's record of how the language tokens are made (``encoders`` section of the config);
    equal to the encoder's own ``condition()``."""
    if e.language == "minilm":
        return LanguageCondition(encoder="minilm")
    spec = None
    if e.vlm_finetune_layers:
        from lda_policy.model.vlm_tail import check_finetune_layers, vlm_text_spec

        try:
            spec = vlm_text_spec(e.language_path)
            check_finetune_layers(e.vlm_finetune_layers, spec, e.vlm_image, str(e.language_path))
        except ValueError as err:
            raise TrainError(f"encoders.vlm_finetune_layers: {err}") from None
    return LanguageCondition(encoder="qwen3vl", image=e.vlm_image, image_size=e.vlm_image_size if e.vlm_image else 0,
                             prompt=e.vlm_prompt, prompt_hash=prompt_hash(e.vlm_prompt),
                             finetune_layers=e.vlm_finetune_layers, vlm_text=spec)


def _record_dim(record: dict[str, Any], key: str) -> int:
    """Width of ``key`` (action/state) in a recorder embodiment record: ``{key: {"names": [...]}}``."""
    entry = record.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("names"), list):
        return len(entry["names"])
    return int(record.get(f"{key}_dim") or 0)


def lr_at(step: int, cfg: TrainingRunConfig) -> float:
    """Linear warm-up to ``optim.lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at the last step."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, total - 1 - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with a warm-up, ``min(decay, (1 + step) / (10 + step))``: early averages do not drag
    the random initial weights along (at decay 0.999 they would still weigh 37 % after 1000 steps)."""
    return min(decay, (1.0 + step) / (10.0 + step))


_NO_DECAY = ("action_pos", "frame_embed", "registers", "standin", "null_language", "task_embed")


def make_optimizer(model: torch.nn.Module, cfg: TrainingRunConfig) -> torch.optim.AdamW:
    """AdamW (Table V: betas 0.9/0.95); no weight decay on biases, norms, embeddings and learned tokens.
    Fine-tuned VLM layers (``vlm_tail.*``) get their own groups at ``optim.vlm_lr_scale`` times the LR
    (each group's ``lr_scale``; the training loop sets ``lr = lr_at(step) * lr_scale``)."""
    o = cfg.optim
    groups = []
    for prefix, scale in (("", 1.0), ("vlm_tail.", o.vlm_lr_scale)):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad or name.startswith("vlm_tail.") != bool(prefix):
                continue
            (no_decay if p.ndim < 2 or any(k in name for k in _NO_DECAY) else decay).append(p)
        if prefix and not (decay or no_decay):
            continue  # no fine-tuned VLM layers: the groups are as they always were
        groups += [{"params": decay, "weight_decay": o.weight_decay, "lr_scale": scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
    # foreach kernels on one device (also on CPU, where torch would pick the per-tensor loop)
    foreach = None if cfg.train.strategy == "fsdp" else True
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=foreach)
