"""The training state on disk: atomic checkpoints and resuming from them (mixed into :class:`~.trainer.Trainer`).

A checkpoint (``<output_dir>/checkpoints/step_NNNNNN/``) is written into a temporary directory and renamed
into place: ``model/`` (``LDAModel.save_pretrained``: config, safetensors weights, normalisation statistics;
loadable by the policy node), ``ema/`` and ``ema_state.safetensors`` (the EMA weights when enabled),
``optimizer.safetensors`` + ``training_state.json`` (AdamW moments, step, param groups), ``rng.safetensors``
and ``config.yaml``. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .build import TrainError, lr_at
from .config import dump_config

STATE_FORMAT = "lda-train-state"
STATE_VERSION = 1
#: Config sections a resumed run must share with the run it continues (else data order / shapes differ).
RESUME_CRITICAL = ("seed", "data.datasets", "data.heldout_fraction", "data.task_weights", "data.role_weights",
                   "model.preset",
                   "model.checkpoint", "train.batch_size", "encoders.dino_path", "encoders.language",
                   "encoders.language_path", "encoders.vlm_finetune_layers", "cache.dtype")
#: resume-critical keys added after runs were saved without them: a missing key reads as its default
LATER_DEFAULTS = {"data.role_weights": {"high": 1.0, "low": 1.0, "actionless": 1.0}}


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


def _saved_value(d: dict[str, Any], dotted: str) -> Any:
    value = _config_value(d, dotted)
    return LATER_DEFAULTS.get(dotted) if value is None else value


class TrainingCheckpoints:
    """Saving and resuming of :class:`~.trainer.Trainer` (which provides the model, optimiser and run state)."""

    def _check_run_dir(self) -> None:
        existing = list_checkpoints(self.run_dir)
        if existing and not self.resume:
            raise TrainError(f"{self.run_dir} already holds checkpoints (newest step {existing[-1][0]}); pass "
                             "--resume to continue that run, or choose another output_dir")
        if self.resume and not existing:
            raise TrainError(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}")
        if self.resume:
            self._check_resume_config(existing[-1][1])

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
                    "effective_samples": self.drawn.tolist(),  # (roles, objectives) drawn in steps 0..step-1
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
        if "effective_samples" in state:
            self.drawn[...] = np.asarray(state["effective_samples"], dtype=np.int64)
        else:  # a checkpoint from before the counts were saved: the draws are a pure function of (seed, step)
            self.drawn[...] = 0
            for s in range(step):
                self.drawn += self.sampler.counts(self.sampler.batch(s, self.cfg.train.batch_size))
        self._log(f"resumed from {path} (step {step})")
        return step

    def _check_resume_config(self, path: Path) -> None:
        import yaml

        try:
            saved = yaml.safe_load((path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as err:
            raise TrainError(f"--resume: cannot read {path / 'config.yaml'}: {err}") from None
        now = self.cfg.to_dict()
        diff = [k for k in RESUME_CRITICAL if _saved_value(saved, k) != _config_value(now, k)]
        if diff:
            raise TrainError(f"--resume: the config differs from the run being continued in {diff} (the data "
                             "order and model would change); use the original config or a new output_dir")
