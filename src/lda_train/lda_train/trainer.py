"""The training loop: role-aware batches, AdamW + warm-up/cosine, DDP/FSDP, atomic checkpoints, resume.

One global batch per optimiser step is drawn by :class:`~lda_train.data.TaskSampler` as a pure
function of (seed, step). It is cut into micro-batches of ``train.micro_batch_size``; process
``rank`` of ``world`` takes micro-batches ``rank * accum ... rank * accum + accum - 1`` and
accumulates their gradients. Every micro-batch seeds torch's RNG (flow times and noise inside
``compute_loss``) from (seed, step, global micro-batch index), and its loss is weighted by its share
of the global batch. Hence one process with 2 accumulation steps and two processes with one
micro-batch each compute the same update, and a resumed run replays exactly the batches and noise
the interrupted one would have seen.

Checkpoints (``<output_dir>/checkpoints/step_NNNNNN/``) are written into a temporary directory and
renamed into place: ``model/`` (``LDAModel.save_pretrained``: config, safetensors weights,
normalisation statistics; loadable by the policy node), ``ema/`` (the EMA weights when enabled),
``optimizer.safetensors`` + ``training_state.json`` (AdamW moments, step, param groups), and
``rng.safetensors``. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lda_policy.model import PRESETS, EmbodimentSpec, LDAModel, Task
from safetensors.torch import load_file, save_file

from .config import TrainingRunConfig, dump_config
from .data import DataError, TaskSampler, open_sources
from .evaluate import EvalSet, evaluate, flat_metrics, plot_curves, write_eval
from .latent_cache import (
    CachedLatents,
    CacheSpec,
    FrameWindowDataset,
    OnlineLatents,
    TrainingData,
    default_cache_root,
    ensure_cache,
    plan_keys,
)
from .stats import embodiment_stats, install_stats, latent_stats

log = logging.getLogger("lda_train")

STATE_FORMAT = "lda-train-state"
STATE_VERSION = 1
#: Config sections a resumed run must share with the run it continues (else data order / shapes differ).
RESUME_CRITICAL = ("seed", "data.datasets", "data.heldout_fraction", "data.task_weights", "model.preset",
                   "model.checkpoint", "train.batch_size", "encoders.dino_path", "encoders.language",
                   "encoders.language_path", "cache.dtype")


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
    config = dataclasses.replace(config, embodiments=tuple(specs))
    model = LDAModel(config)
    if base is not None:
        model.load_state_dict(base.state_dict(), strict=True)
        model.normalizer.load_dict(base.normalizer.to_dict())
    if cfg.model.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    if cfg.model.compile:
        model.compile_denoiser()
    return model, from_ckpt


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
    """AdamW (Table V: betas 0.9/0.95); no weight decay on biases, norms, embeddings and learned tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(k in name for k in _NO_DECAY) else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach kernels on one device (also on CPU, where torch would pick the per-tensor loop)
    foreach = None if cfg.train.strategy == "fsdp" else True
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, foreach=foreach)


# ---------------------------------------------------------------------------------------------- checkpoints


def _flatten_optim(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for fqn, entry in state["state"].items():
        for k, v in entry.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"{fqn}::{k}"] = t.detach().contiguous().cpu()
    groups = []
    for g in state["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def _unflatten_optim(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        fqn, k = key.rsplit("::", 1)
        state.setdefault(fqn, {})[k] = t
    pg = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": pg}


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (temporary directories of a killed save are ignored), oldest first."""
    ckpt_dir = run_dir / "checkpoints"
    out = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and (p / "training_state.json").is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _config_value(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Builds data, model and optimiser from a config and runs (or resumes) training."""

    def __init__(self, cfg: TrainingRunConfig, resume: bool = False, env: DistEnv | None = None,
                 progress: bool | None = None) -> None:
        self.cfg = cfg
        self.env = env or setup_distributed(cfg.device)
        self.resume = resume
        self.run_dir = Path(cfg.output_dir).expanduser().resolve()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.env.main
        self.ema: list[torch.Tensor] | None = None
        self.elapsed = 0.0
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self._check_run_dir()
        self._build()

    # -------------------------------------------------------------- set-up

    def _check_run_dir(self) -> None:
        existing = list_checkpoints(self.run_dir)
        if existing and not self.resume:
            raise TrainError(f"{self.run_dir} already holds checkpoints (newest step {existing[-1][0]}); pass "
                             "--resume to continue that run, or choose another output_dir")
        if self.resume and not existing:
            raise TrainError(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}")
        if self.resume:
            self._check_resume_config(existing[-1][1])

    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        layout = PRESETS[cfg.model.preset].time if cfg.model.checkpoint is None else None
        if layout is None:
            from lda_policy.model import read_config

            layout = read_config(cfg.model.checkpoint).time
        self.sources = open_sources(cfg.data.datasets, layout, cfg.data.heldout_fraction, cfg.seed)
        if cfg.encoders.dino_path is None:
            raise TrainError("encoders.dino_path is not set: name the local DINOv3 checkpoint directory")
        enc_device = self._encoder_device()
        # the model config decides the latent grid; build it first to know it. Seeded: every process
        # (and a rerun) starts from the same weights (FSDP shards them without a broadcast).
        language_dim = self._language_dim()
        torch.manual_seed(cfg.seed)
        self.model, self.from_checkpoint = build_model(cfg, self.sources, language_dim)
        spec_grid = tuple(self.model.config.latent_grid)
        self.cache_spec = CacheSpec(
            cache_root=Path(cfg.cache.dir).expanduser() if cfg.cache.dir else default_cache_root(),
            dino_path=str(cfg.encoders.dino_path), language=cfg.encoders.language,
            language_path=cfg.encoders.language_path, grid=spec_grid, dtype=cfg.cache.dtype,
            shard_frames=cfg.cache.shard_frames, encoder_batch=cfg.encoders.batch_size)
        self._dino = None
        if cfg.cache.enabled:
            caches = self._caches(enc_device)
            language = caches[0].language
            for c in caches[1:]:
                language.entries.update(c.language.entries)
            latents: Any = CachedLatents(self.sources, caches)
            frames = None
            latent_sample = [c.latents for c in caches]
        else:
            self._dino = self._make_dino(enc_device)
            from .data import LanguageTable

            texts = [t for s in self.sources for t in s.tasks]
            language = LanguageTable.encode(texts, self._make_language(enc_device))
            latents = OnlineLatents(self.sources, self._dino, spec_grid, cfg.encoders.batch_size)
            frames = FrameWindowDataset(self.sources, list(layout.obs_offsets_s) + list(layout.future_offsets_s))
            latent_sample = self._online_latent_sample(latents, frames)
        self.data = TrainingData(self.sources, self.model.config, language, latents, frames)
        self.sampler = TaskSampler(self.sources, cfg.data.task_weights, cfg.seed, "train")
        self.stats = embodiment_stats(self.sources, "train", seed=cfg.seed)
        self.stats_notes = install_stats(self.model, self.stats, latent_stats(latent_sample, seed=cfg.seed),
                                         keep_existing=self.from_checkpoint)
        self.eval_set = EvalSet.build(self.sources, cfg.eval.max_samples)
        self.model.to(env.device)
        self.model.train()
        self.world_batch()

    def _encoder_device(self) -> torch.device:
        d = self.cfg.encoders.device
        if d == "auto":
            return self.env.device
        return torch.device(d)

    def _make_dino(self, device: torch.device) -> Any:
        from lda_policy.model import DinoV3Encoder

        return DinoV3Encoder(self.cfg.encoders.dino_path, device=device)

    def _make_language(self, device: torch.device) -> Any:
        from lda_policy.model import load_language_encoder

        return load_language_encoder(self.cfg.encoders.language, self.cfg.encoders.language_path, device=device)

    def _language_dim(self) -> int:
        e = self.cfg.encoders
        if e.language == "minilm" and e.language_path is None:
            return 384  # all-MiniLM-L6-v2
        if e.language_path is None:
            raise TrainError(f"encoders.language={e.language!r} needs encoders.language_path (a local checkpoint)")
        try:
            conf = json.loads((Path(e.language_path) / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TrainError(f"encoders.language_path: cannot read config.json: {err}") from None
        return int(conf["text_config"]["hidden_size"] if "text_config" in conf else conf["hidden_size"])

    def _caches(self, enc_device: torch.device) -> list:
        """The first process of every node verifies or (re)builds each dataset's cache (a node-local or a
        shared cache dir both work: concurrent builders rename into place atomically); then every
        process loads the verified caches."""
        cfg, env = self.cfg, self.env
        if env.local_rank == 0:
            for s in self.sources:
                ensure_cache(s, self.cache_spec, lambda: self._make_dino(enc_device),
                             lambda: self._make_language(enc_device), rebuild=cfg.cache.rebuild, progress=self.progress)
        env.barrier()
        return [ensure_cache(s, self.cache_spec, lambda: None, lambda: None, rebuild="never", progress=False)
                for s in self.sources]

    def _online_latent_sample(self, latents: OnlineLatents, frames: FrameWindowDataset) -> list[torch.Tensor]:
        """Latent statistics without a cache: DINO over 64 evenly spaced training frames (all datasets)."""
        from .latent_cache import decode_frames

        out = []
        per = max(1, 64 // len(self.sources))
        for s in self.sources:
            rows = s.rows("train")
            rows = np.unique(rows[np.linspace(0, len(rows) - 1, min(per, len(rows))).astype(np.int64)])
            images = decode_frames(s, rows)
            out.append(latents.dino.encode_frames(images, latents.grid))
        return out

    def world_batch(self) -> None:
        t, env = self.cfg.train, self.env
        micro = t.micro_batch_size or max(1, t.batch_size // env.world)
        if t.batch_size % (micro * env.world):
            raise TrainError(f"train.batch_size={t.batch_size} must be a multiple of micro_batch_size ({micro}) x "
                             f"processes ({env.world})")
        self.micro = micro
        self.accum = t.batch_size // (micro * env.world)

    # -------------------------------------------------------------- state

    @property
    def fsdp(self) -> bool:
        return self.cfg.train.strategy == "fsdp" and self.env.distributed

    def _wrap(self) -> torch.nn.Module:
        """The loss module every rank calls: plain, DDP-wrapped, or over an FSDP-sharded model."""
        env = self.env
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.mmdit.blocks:
                fully_shard(block)
            fully_shard(self.model)
        loss_module = LossModule(self.model)
        if env.distributed and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(loss_module, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        return loss_module

    def _state_options(self, **kw: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    def export_model(self, weights: dict[str, torch.Tensor]) -> LDAModel:
        """A plain CPU LDAModel holding ``weights`` and this run's normalisation statistics."""
        model = LDAModel(self.model.config)
        model.load_state_dict(weights, strict=True)
        model.normalizer.load_dict(self.model.normalizer.to_dict())
        return model

    def _ema_state(self) -> dict[str, torch.Tensor] | None:
        """Full EMA weights on CPU by parameter name (a collective under FSDP)."""
        if self.ema is None:
            return None
        out = {}
        for (n, _), e in zip(self.model.named_parameters(), self.ema, strict=True):
            full = e.full_tensor() if hasattr(e, "full_tensor") else e
            out[n] = full.detach().cpu().clone()
        return out

    @contextlib.contextmanager
    def plain_model(self, ema: bool = False) -> Iterator[LDAModel | None]:
        """A plain LDAModel with the raw (or EMA) weights on rank 0 (None elsewhere); call on every rank.

        DDP / one process: the training model itself, EMA weights swapped in for the duration.
        FSDP: the full weights gathered into a new model on rank 0.
        """
        use_ema = ema and self.ema is not None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            weights = get_model_state_dict(self.model, options=self._state_options())
            ema_state = self._ema_state() if use_ema else None
            if not self.env.main:
                yield None
                return
            if ema_state is not None:
                weights.update({k: v.to(weights[k].dtype) for k, v in ema_state.items()})
            yield self.export_model(weights).to(self.env.device)
            return
        if not self.env.main:
            yield None
            return
        if not use_ema:
            yield self.model
            return
        params = list(self.model.parameters())
        backup = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, e in zip(params, self.ema, strict=True):
                    p.copy_(e.to(p.dtype))
            yield self.model
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)

    def save(self, step: int, optimizer: torch.optim.Optimizer) -> Path | None:
        """Atomic checkpoint of everything needed to continue; returns its directory (rank 0)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        env = self.env
        optim_state = (get_optimizer_state_dict(self.model, optimizer, options=self._state_options()) if self.fsdp
                       else get_optimizer_state_dict(self.model, optimizer) if env.main else None)
        ema_state = self._ema_state()
        ckpt_root = self.run_dir / "checkpoints"
        final = ckpt_root / f"step_{step:06d}"
        tmp = ckpt_root / f".tmp-step_{step:06d}-{os.getpid()}"
        if env.main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        try:
            with self.plain_model(ema=False) as model:
                if model is not None:
                    model.save_pretrained(tmp / "model")
            if ema_state is not None:
                with self.plain_model(ema=True) as model:
                    if model is not None:
                        model.save_pretrained(tmp / "ema")
            if env.main:
                if ema_state is not None:
                    save_file({k: v.contiguous() for k, v in ema_state.items()}, str(tmp / "ema_state.safetensors"))
                tensors, groups = _flatten_optim(optim_state)
                save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"format": STATE_FORMAT})
                rng = {"torch_cpu": torch.get_rng_state()}
                if torch.cuda.is_available():
                    for i, s in enumerate(torch.cuda.get_rng_state_all()):
                        rng[f"torch_cuda_{i}"] = s
                save_file(rng, str(tmp / "rng.safetensors"))
                state = {
                    "format": STATE_FORMAT, "format_version": STATE_VERSION, "step": step,
                    "world_size": env.world, "micro_batch_size": self.micro, "accumulation": self.accum,
                    "param_groups": groups, "lr_last_step": lr_at(step - 1, self.cfg) if step else 0.0,
                    "samples_seen": step * self.cfg.train.batch_size, "elapsed_s": self.elapsed + self._since(),
                    "cache_fingerprints": self._fingerprints(), "saved_unix": time.time(),
                }
                (tmp / "training_state.json").write_text(json.dumps(state, indent=2) + "\n")
                (tmp / "config.yaml").write_text(dump_config(self.cfg))
                for p in tmp.rglob("*"):
                    if p.is_file():
                        with p.open("rb") as f:
                            os.fsync(f.fileno())
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
        except BaseException:
            if env.main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if env.main:
            _atomic_write_text(ckpt_root / "latest.json", json.dumps({"step": step, "path": final.name}) + "\n")
            keep = self.cfg.train.keep_checkpoints
            if keep:
                for _, old in list_checkpoints(self.run_dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        env.barrier()
        return final if env.main else None

    def _fingerprints(self) -> dict[str, str]:
        if not self.data.cached:
            return {}
        return {s.name: c.fingerprint for s, c in zip(self.sources, self.data.latents.caches, strict=True)}

    def _since(self) -> float:
        return time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0

    def load(self, optimizer: torch.optim.Optimizer) -> int:
        """Restores the newest checkpoint into model, optimiser and EMA; returns its step."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        step, path = list_checkpoints(self.run_dir)[-1]
        state = json.loads((path / "training_state.json").read_text())
        if state.get("format") != STATE_FORMAT or state.get("format_version") != STATE_VERSION:
            raise TrainError(f"{path}/training_state.json is not a version-{STATE_VERSION} {STATE_FORMAT} file")
        if state.get("micro_batch_size") != self.micro:
            self._log(f"note: micro-batch size {self.micro} differs from the checkpoint's "
                      f"{state.get('micro_batch_size')}: same batches, different noise draws from here on")
        weights = load_file(str(path / "model" / "model.safetensors"))
        fsdp = self.cfg.train.strategy == "fsdp" and self.env.distributed
        tensors = load_file(str(path / "optimizer.safetensors"))
        optim_state = _unflatten_optim(tensors, state["param_groups"])
        if fsdp:
            set_model_state_dict(self.model, weights, options=self._state_options())
            set_optimizer_state_dict(self.model, optimizer, optim_state, options=self._state_options())
        else:
            self.model.load_state_dict({k: v.to(self.env.device) for k, v in weights.items()}, strict=True)
            set_optimizer_state_dict(self.model, optimizer, optim_state)
        saved_norm = json.loads((path / "model" / "normalization.json").read_text())
        self.model.normalizer.load_dict(saved_norm)  # statistics travel with the run, not the data
        if self.ema is not None:
            ema_file = path / "ema_state.safetensors"
            if not ema_file.is_file():
                raise TrainError(f"{path}: optim.ema is on but the checkpoint has no EMA state")
            ema = load_file(str(ema_file))
            for (n, p), e in zip(self.model.named_parameters(), self.ema, strict=True):
                src = ema[n].to(e.device if not hasattr(e, "full_tensor") else "cpu")
                if hasattr(e, "full_tensor"):
                    from torch.distributed.tensor import distribute_tensor

                    e.copy_(distribute_tensor(src.to(p.full_tensor().device), e.device_mesh, e.placements))
                else:
                    e.copy_(src)
        rng = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng["torch_cpu"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self._log(f"resumed from {path} (step {step})")
        return step

    def _check_resume_config(self, path: Path) -> None:
        import yaml

        try:
            saved = yaml.safe_load((path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as err:
            raise TrainError(f"--resume: cannot read {path / 'config.yaml'}: {err}") from None
        now = self.cfg.to_dict()
        diff = [k for k in RESUME_CRITICAL if _config_value(saved, k) != _config_value(now, k)]
        if diff:
            raise TrainError(f"--resume: the config differs from the run being continued in {diff} (the data "
                             "order and model would change); use the original config or a new output_dir")

    # -------------------------------------------------------------- loop

    def _log(self, msg: str) -> None:
        if self.env.main:
            print(f"[lda-train] {msg}", flush=True)

    def _micro_plans(self, step: int) -> Iterator[tuple[int, Any]]:
        """(global micro index, plan) of this process's micro-batches of ``step``."""
        plan = self.sampler.batch(step, self.cfg.train.batch_size)
        for j in range(self.accum):
            m = self.env.rank * self.accum + j
            yield m, plan.slice(m * self.micro, (m + 1) * self.micro)

    def _frame_iterator(self, start: int) -> Iterator[torch.Tensor] | None:
        """Online path: decoded frames of this process's micro-batches, in order, prefetched by workers."""
        if self.data.cached:
            return None
        trainer = self

        class _Keys:
            def __iter__(self) -> Iterator[list[int]]:
                for step in range(start, trainer.cfg.train.steps):
                    for _, plan in trainer._micro_plans(step):
                        yield plan_keys(plan)

        loader = torch.utils.data.DataLoader(self.data.frames, batch_sampler=_Keys(),
                                             num_workers=self.cfg.data.num_workers, collate_fn=torch.stack,
                                             persistent_workers=False)
        return iter(loader)

    def train(self) -> dict[str, Any]:
        """Runs to ``train.steps``; returns the final evaluation (rank 0) or {}."""
        cfg, env = self.cfg, self.env
        t = cfg.train
        self.elapsed = 0.0
        self._write_run_files()
        wrapped = self._wrap()
        optimizer = make_optimizer(self.model, cfg)
        self.ema = ([p.detach().clone().float() for p in self.model.parameters()] if cfg.optim.ema else None)
        start = self.load(optimizer) if self.resume else 0
        if start >= t.steps:
            self._log(f"already at step {start} >= train.steps={t.steps}; nothing to do")
            return {}
        writer = self._tensorboard()
        frames_iter = self._frame_iterator(start)
        use_amp = t.bf16 and env.device.type == "cuda"
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._log(f"training {self.model.config.name} ({sum(p.numel() for p in params) / 1e6:.2f}M parameters) "
                  f"steps {start}->{t.steps}, global batch {t.batch_size} = {env.world} process(es) x {self.accum} "
                  f"micro-batch(es) x {self.micro}, device {env.device}, latents "
                  f"{'cached' if self.data.cached else 'DINO every step'}")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=start, unit="step", desc="train", dynamic_ncols=True, mininterval=1.0)
        self._t0 = time.monotonic()
        window_t0, window_samples = time.monotonic(), 0
        last_eval: dict[str, Any] = {}
        for step in range(start, t.steps):
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            sums = torch.zeros(2 + 2 * len(Task), dtype=torch.float64)  # loss sum, n, per task (sum, n)
            for j, (m, plan) in enumerate(self._micro_plans(step)):
                frames = next(frames_iter) if frames_iter is not None else None
                batch = self.data.batch(plan, frames)
                torch.manual_seed(_micro_seed(cfg.seed, step, m))
                last = j == self.accum - 1
                sync = contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
                amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
                with sync:
                    with amp:
                        loss, info = wrapped(batch)
                    n_active = sum(info[f"count/{tk.name.lower()}"] for tk in Task)
                    scale = n_active * env.world / t.batch_size
                    (loss * scale).backward()
                sums[0] += info["loss"] * n_active
                sums[1] += n_active
                for i, tk in enumerate(Task):
                    c = info[f"count/{tk.name.lower()}"]
                    sums[2 + 2 * i] += info[f"loss/{tk.name.lower()}"] * c
                    sums[3 + 2 * i] += c
            if cfg.optim.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                with torch.no_grad():
                    d = ema_decay_at(step, cfg.optim.ema_decay)
                    torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.model.parameters()], 1 - d)
            if env.distributed:
                dist.all_reduce(sums)
            done = step + 1
            window_samples += t.batch_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(sums[0] / max(sums[1], 1)):.4f}", lr=f"{lr:.2e}")
            if done % t.log_every == 0 or done == t.steps or done == start + 1:
                rate = window_samples / max(time.monotonic() - window_t0, 1e-9)
                record = {"step": done, "loss": float(sums[0] / max(sums[1], 1)), "lr": lr, "grad_norm": grad_norm,
                          "samples_per_s": rate}
                for i, tk in enumerate(Task):
                    n = float(sums[3 + 2 * i])
                    record[f"loss/{tk.name.lower()}"] = float(sums[2 + 2 * i] / n) if n else None
                    record[f"count/{tk.name.lower()}"] = int(n)
                self._write_log(record, writer)
                eta = (t.steps - done) * t.batch_size / max(rate, 1e-9)
                self._log(f"step {done}/{t.steps} loss {record['loss']:.4f} lr {lr:.2e} grad_norm {grad_norm:.3f} "
                          f"{rate:.1f} samples/s eta {datetime.timedelta(seconds=round(eta))}")
                window_t0, window_samples = time.monotonic(), 0
            if done % t.checkpoint_every == 0 or done == t.steps:
                path = self.save(done, optimizer)
                if path is not None:
                    self._log(f"saved checkpoint {path} (step {done})")
                window_t0, window_samples = time.monotonic(), 0  # rates count training time only
            if cfg.eval.enabled and ((t.eval_every and done % t.eval_every == 0) or done == t.steps):
                last_eval = self.run_eval(done, writer)
                window_t0, window_samples = time.monotonic(), 0
        if bar is not None:
            bar.close()
        if env.main:
            self._export_final()
        if writer is not None:
            writer.close()
        env.barrier()
        return last_eval

    def run_eval(self, step: int, writer: Any = None) -> dict[str, Any]:
        """Evaluates the current (EMA, when enabled) weights on held-out episodes; rank 0 writes results."""
        result: dict[str, Any] = {}
        with self.plain_model(ema=True) as model:
            if model is None:
                pass
            elif self.eval_set.size == 0:
                self._log("evaluation skipped: no held-out episodes (set data.heldout_fraction or heldout_episodes)")
            else:
                t0 = time.monotonic()
                result = evaluate(model, self.data, self.eval_set, self.stats, self.cfg.eval)
                result["eval_seconds"] = round(time.monotonic() - t0, 3)
                result["weights"] = "ema" if self.ema is not None else "raw"
        if result:
            write_eval(result, self.run_dir / "eval", step)
            if writer is not None:
                for k, v in flat_metrics(result).items():
                    writer.add_scalar(f"eval/{k}", v, step)
                writer.flush()
            plot_curves(self.run_dir)
            pol = result.get("policy", {})
            fd = result.get("forward_dynamics", {})
            self._log(f"eval step {step}: policy action L1 {_fmt(pol.get('action_l1'))} vs predict-the-mean "
                      f"{_fmt(pol.get('baseline_mean_action_l1'))}; forward dynamics latent MSE "
                      f"{_fmt(fd.get('latent_mse'))} (copy-current {_fmt(fd.get('baseline_copy_mse'))}); "
                      f"inverse dynamics L1 {_fmt(result.get('inverse_dynamics', {}).get('action_l1'))}")
        self.env.barrier()
        return result

    def _export_final(self) -> None:
        """<output_dir>/model: the deployable weights of the last step (EMA when enabled)."""
        newest = list_checkpoints(self.run_dir)[-1][1]
        src = newest / ("ema" if (newest / "ema").is_dir() else "model")
        final = self.run_dir / "model"
        tmp = self.run_dir / f".tmp-model-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        old = self.run_dir / f".old-model-{os.getpid()}"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        self._log(f"final model: {final}")

    def _tensorboard(self) -> Any:
        if not self.env.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _write_log(self, record: dict[str, Any], writer: Any) -> None:
        if not self.env.main:
            return
        with (self.run_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(f"train/{k}", v, record["step"])

    def _write_run_files(self) -> None:
        if not self.env.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        summary = {"datasets": [s.summary() for s in self.sources],
                   "embodiments": [dataclasses.asdict(e) for e in self.model.config.embodiments],
                   "train_samples": dict(zip([s.name for s in self.sources], self.sampler.sample_counts, strict=True)),
                   "heldout_eval_samples": self.eval_set.size,
                   "normalization": self.stats_notes}
        (self.run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.run_dir / "stats.json").write_text(json.dumps(
            {"embodiments": {k: v.to_dict() for k, v in self.stats.items()},
             "model_normalization": self.model.normalizer.to_dict()}, indent=1) + "\n")


class LossModule(torch.nn.Module):
    """``forward(batch) -> (loss, info)`` through ``LDAModel.__call__`` (whose forward is
    ``compute_loss``), so DDP's reducer and FSDP's unshard/reshard hooks see the training pass."""

    def __init__(self, model: LDAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model(batch)


def _micro_seed(seed: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, 0x10CA1, step, micro]).generate_state(1, np.uint64)[0] % (2**63 - 1))


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"


def run_training(cfg: TrainingRunConfig, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Sets up processes, trains, tears down; the entry point of ``lda-train``."""
    env = setup_distributed(cfg.device)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(cfg, resume=resume, env=env, progress=progress)
        return trainer.train()
    finally:
        teardown_distributed()
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) get their settings back
        torch.use_deterministic_algorithms(deterministic)
