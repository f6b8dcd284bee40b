"""The training loop: role-aware batches, AdamW + warm-up/cosine, DDP/FSDP, atomic checkpoints, resume.

One global batch per optimiser step is drawn by :class:`~lda_train.data.TaskSampler` as a pure
function of (seed, step). It is cut into micro-batches of ``train.micro_batch_size``; process
``rank`` of ``world`` takes micro-batches ``rank * accum ... rank * accum + accum - 1`` and
accumulates their gradients. Every micro-batch seeds torch's RNG (flow times and noise inside
``compute_loss``) from (seed, step, global micro-batch index), and its loss is weighted by its share
of the global batch. Hence one process with 2 accumulation steps and two processes with one
micro-batch each compute the same update, and a resumed run replays exactly the batches and noise
the interrupted one would have seen.

Checkpoints and resume: :mod:`.checkpoints`; processes, model and optimiser: :mod:`.build`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lda_common.schema import Quality
from lda_policy.model import PRESETS, LDAModel, Task

from .build import (
    DistEnv,
    TrainError,
    build_model,
    ema_decay_at,
    lr_at,
    make_optimizer,
    setup_distributed,
    teardown_distributed,
)
from .checkpoints import TrainingCheckpoints, list_checkpoints
from .config import TrainingRunConfig, dump_config
from .data import TaskSampler, effective_samples, open_sources, shares_dict
from .evaluate import EvalSet, evaluate, flat_metrics, plot_curves, write_eval
from .latent_cache import (
    CachedLatents,
    FrameWindowDataset,
    OnlineLatents,
    TrainingData,
    cache_spec,
    ensure_cache,
    language_encoder,
    plan_keys,
)
from .stats import embodiment_stats, install_stats, latent_stats

log = logging.getLogger("lda_train")




# ---------------------------------------------------------------------------------------------- trainer


class Trainer(TrainingCheckpoints):
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

    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        layout = time_layout(cfg)
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
        self.cache_spec = cache_spec(cfg, spec_grid)
        if cfg.encoders.per_frame_vlm and not cfg.cache.enabled:
            raise TrainError("encoders.language=qwen3vl with encoders.vlm_image=true reads the VLM condition of "
                             "every frame from the latent cache: set cache.enabled=true (or vlm_image=false)")
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
        self.sampler = TaskSampler(self.sources, cfg.data.task_weights, cfg.seed, "train",
                                   role_weights=cfg.data.role_weights)
        #: (roles, objectives): samples drawn so far in this run (all steps up to the current one)
        self.drawn = np.zeros((len(Quality), len(Task)), dtype=np.int64)
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
        return language_encoder(self.cfg, device)

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

    # -------------------------------------------------------------- loop

    def _log(self, msg: str) -> None:
        if self.env.main:
            print(f"[lda-train] {msg}", flush=True)

    def _micro_plans(self, step: int, plan: Any = None) -> Iterator[tuple[int, Any]]:
        """(global micro index, plan) of this process's micro-batches of ``step`` (of ``plan``, its global batch)."""
        plan = self.sampler.batch(step, self.cfg.train.batch_size) if plan is None else plan
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
                g["lr"] = lr * g.get("lr_scale", 1.0)
            sums = torch.zeros(2 + 2 * len(Task), dtype=torch.float64)  # loss sum, n, per task (sum, n)
            global_plan = self.sampler.batch(step, t.batch_size)
            self.drawn += self.sampler.counts(global_plan)  # the same global batch on every process
            for j, (m, plan) in enumerate(self._micro_plans(step, global_plan)):
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
                drawn = effective_samples(self.drawn)  # cumulative over the run
                record.update({f"samples/{k}": v for k, v in drawn["objective"].items()})
                record.update({f"samples/{k}": v for k, v in drawn["role"].items()})
                self._write_log(record, writer)
                eta = (t.steps - done) * t.batch_size / max(rate, 1e-9)
                self._log(f"step {done}/{t.steps} loss {record['loss']:.4f} lr {lr:.2e} grad_norm {grad_norm:.3f} "
                          f"{rate:.1f} samples/s eta {datetime.timedelta(seconds=round(eta))}")
                window_t0, window_samples = time.monotonic(), 0
            if done % t.checkpoint_every == 0 or done == t.steps:
                self._write_effective_samples(done)
                path = self.save(done, optimizer)
                if path is not None:
                    self._log(f"saved checkpoint {path} (step {done})")
                window_t0, window_samples = time.monotonic(), 0  # rates count training time only
            if cfg.eval.enabled and ((t.eval_every and done % t.eval_every == 0) or done == t.steps):
                last_eval = self.run_eval(done, writer)
                window_t0, window_samples = time.monotonic(), 0
        if bar is not None:
            bar.close()
        drawn = effective_samples(self.drawn)
        self._log(f"effective samples over steps 0-{t.steps}: " + ", ".join(
            f"{k} {v}" for k, v in drawn["objective"].items()) + "; by role: " + ", ".join(
            f"{k} {v}" for k, v in drawn["role"].items()))
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
                result["effective_samples"] = effective_samples(self.drawn)  # drawn in steps 0..step-1
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

    def _write_effective_samples(self, step: int) -> None:
        """<output_dir>/effective_samples.json: the samples drawn per objective and role in steps 0..step-1."""
        if not self.env.main:
            return
        cfg = self.cfg
        record = {"step": step, "batch_size": cfg.train.batch_size,
                  "task_weights": dataclasses.asdict(cfg.data.task_weights),
                  "role_weights": cfg.data.role_weights.as_dict(),
                  "expected_share": shares_dict(self.sampler.expected_shares()),
                  **effective_samples(self.drawn)}
        path = self.run_dir / "effective_samples.json"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)

    def _write_run_files(self) -> None:
        if not self.env.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        summary = {"datasets": [s.summary() for s in self.sources],
                   "embodiments": [dataclasses.asdict(e) for e in self.model.config.embodiments],
                   "train_samples": dict(zip([s.name for s in self.sources], self.sampler.sample_counts, strict=True)),
                   "heldout_eval_samples": self.eval_set.size,
                   "role_weights": self.cfg.data.role_weights.as_dict(),
                   "expected_share": shares_dict(self.sampler.expected_shares()),
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


def time_layout(cfg: TrainingRunConfig) -> Any:
    """The model's TimeLayout: the preset's, or the checkpoint's when fine-tuning."""
    if cfg.model.checkpoint is None:
        return PRESETS[cfg.model.preset].time
    from lda_policy.model import read_config

    return read_config(cfg.model.checkpoint).time


def expected_sample_shares(cfg: TrainingRunConfig) -> dict[str, Any]:
    """What share of a batch each objective and role is expected to get under ``cfg`` (its datasets, split,
    ``task_weights`` and ``role_weights``), without building a model or touching the latent cache: the
    sampler's exact expectation over its draws (``data_summary.json`` of a run holds the same figures)."""
    sources = open_sources(cfg.data.datasets, time_layout(cfg), cfg.data.heldout_fraction, cfg.seed)
    sampler = TaskSampler(sources, cfg.data.task_weights, cfg.seed, "train", role_weights=cfg.data.role_weights)
    return shares_dict(sampler.expected_shares())


def run_training(cfg: TrainingRunConfig, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Sets up processes, trains, tears down; the entry point of ``lda-train``. An imported authors'
    checkpoint in ``model.checkpoint`` is fine-tuned by :class:`~.upstream_trainer.UpstreamTrainer`."""
    from .upstream_trainer import is_upstream_run

    if is_upstream_run(cfg):
        return _run_upstream(cfg, resume, progress)
    env = setup_distributed(cfg.device)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(cfg, resume=resume, env=env, progress=progress)
        return trainer.train()
    finally:
        teardown_distributed()
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) get their settings back
        torch.use_deterministic_algorithms(deterministic)


def _run_upstream(cfg: TrainingRunConfig, resume: bool, progress: bool | None) -> dict[str, Any]:
    from .upstream_trainer import UpstreamTrainer

    threads = torch.get_num_threads()
    try:
        return UpstreamTrainer(cfg, resume=resume, progress=progress).train()
    finally:
        teardown_distributed()
        torch.set_num_threads(threads)
