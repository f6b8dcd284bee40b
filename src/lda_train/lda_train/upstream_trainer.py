"""``lda-train`` on an imported authors' checkpoint: fine-tunes their LDA-1B (``UpstreamLDA``) with the
suite's role rules and writes the result in the upstream checkpoint format (``load_upstream`` and
``UpstreamPolicy`` read it).

- What trains: the action model as the authors train it (MM-DiT, encoders/decoders, tokens; DINOv3 frozen),
  with their four-task loss (``loss = policy + inverse + obs``, unweighted). The VLM is frozen by default
  (``upstream.vlm: frozen``): its features are computed for every batch under ``no_grad``, bit-for-bit what the
  deployed policy computes; ``upstream.vlm: finetune`` trains it too, at ``optim.vlm_lr_scale`` x the LR
  (the authors: 1e-5 against 1e-4). See docs/guides/upstream-checkpoints.md, section 7, for why.
- One process (CPU, or one GPU with bf16 autocast); gradient accumulation over ``train.micro_batch_size``.
- Every micro-batch seeds torch's RNG from (seed, step, micro index), and the global batch is a pure function
  of (seed, step), so a resumed run replays the batches and draws the interrupted one would have made.
- Checkpoints: ``<output_dir>/checkpoints/step_NNNNNN/`` with ``model/`` (an upstream checkpoint),
  ``optimizer.safetensors``, ``training_state.json``, ``config.yaml``; ``<output_dir>/model`` the last one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lda_policy.model import Task
from lda_policy.model.checkpoint import CheckpointError
from safetensors.torch import load_file, save_file

from .build import TrainError, lr_at, setup_distributed
from .checkpoints import _flatten_optim, _unflatten_optim, list_checkpoints
from .config import TrainingRunConfig, dump_config
from .data import TaskSampler, effective_samples, open_sources
from .upstream_data import (
    UpstreamBatch,
    UpstreamData,
    action_statistics,
    assign_slots,
    check_dimensions,
    upstream_layout,
)
from .upstream_eval import fixed_losses, policy_l1

log = logging.getLogger("lda_train")
STATE_FORMAT = "lda-train-upstream-state"
STATE_VERSION = 1
LOSS_KEYS = ("policy_loss", "inverse_dynamics_loss", "forward_dynamics_loss", "video_gen_loss")
#: config keys a resumed run must share with the run it continues
RESUME_CRITICAL = ("seed", "data.datasets", "data.heldout_fraction", "data.task_weights", "data.role_weights",
                   "model.checkpoint", "train.batch_size", "upstream.vlm", "upstream.image_size", "upstream.state",
                   "upstream.embodiment_slots")


def _value(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _micro_seed(seed: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, 0x0B57, step, micro]).generate_state(1, np.uint64)[0] % (2**63 - 1))


class UpstreamTrainer:
    """Builds data, model, VLM and optimiser from a config and fine-tunes (or resumes)."""

    def __init__(self, cfg: TrainingRunConfig, resume: bool = False, progress: bool | None = None) -> None:
        from lda_policy.model.upstream.checkpoint import VLM_FILE, read_normalization, read_upstream_config

        self.cfg, self.resume = cfg, resume
        self.env = setup_distributed(cfg.device)
        if self.env.distributed:
            raise TrainError("fine-tuning an imported upstream checkpoint runs in one process (one GPU or the CPU); "
                             "run lda-train without torchrun")
        self.device = self.env.device
        self.base = Path(cfg.model.checkpoint).expanduser().resolve()
        self.run_dir = Path(cfg.output_dir).expanduser().resolve()
        self.progress = sys.stderr.isatty() if progress is None else progress
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.config = read_upstream_config(self.base)
        if not (self.base / VLM_FILE).is_file():
            raise TrainError(f"model.checkpoint {self.base} has no {VLM_FILE} (imported with --head-only?): "
                             "fine-tuning computes the VLM features, import the checkpoint with its VLM")
        if cfg.upstream.processor is None:
            raise TrainError("upstream.processor is not set: name the directory with the Qwen3-VL processor files "
                             "(tokenizer, chat template, image processor) of the checkpoint's VLM")
        self.base_statistics = read_normalization(self.base)
        self._check_run_dir()
        self._build_data()
        self._build_model()

    # -------------------------------------------------------------- set-up

    def _check_run_dir(self) -> None:
        existing = list_checkpoints(self.run_dir)
        if existing and not self.resume:
            raise TrainError(f"{self.run_dir} already holds checkpoints (newest step {existing[-1][0]}); pass "
                             "--resume to continue that run, or choose another output_dir")
        if self.resume and not existing:
            raise TrainError(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}")
        if self.resume:
            import yaml

            saved = yaml.safe_load((existing[-1][1] / "config.yaml").read_text())
            now = self.cfg.to_dict()
            diff = [k for k in RESUME_CRITICAL if _value(saved, k) != _value(now, k)]
            if diff:
                raise TrainError(f"--resume: the config differs from the run being continued in {diff} (the data "
                                 "order and model would change); use the original config or a new output_dir")

    def _build_data(self) -> None:
        from transformers import AutoProcessor

        cfg = self.cfg
        self.sources = open_sources(cfg.data.datasets, upstream_layout(self.config), cfg.data.heldout_fraction,
                                    cfg.seed)
        check_dimensions(self.sources, self.config, cfg.upstream.state)
        self.slots = assign_slots(self.sources, self.config.max_embodiments, cfg.upstream.embodiment_slots)
        statistics = action_statistics(self.sources)
        if self.resume:  # statistics travel with the run, not the data
            saved = list_checkpoints(self.run_dir)[-1][1] / "model" / "normalization.json"
            statistics = {k: v for k, v in json.loads(saved.read_text())["statistics"].items()}
        try:
            processor = AutoProcessor.from_pretrained(str(Path(cfg.upstream.processor).expanduser()),
                                                      local_files_only=True)
        except (OSError, ValueError) as err:
            raise TrainError(f"upstream.processor: cannot load a processor from {cfg.upstream.processor}: "
                             f"{str(err).splitlines()[0]}") from None
        processor.tokenizer.padding_side = "left"  # as the authors' Qwen interface
        self.data = UpstreamData(self.sources, self.config, cfg.upstream, processor, statistics, self.slots)
        self.sampler = TaskSampler(self.sources, cfg.data.task_weights, cfg.seed, "train",
                                   role_weights=cfg.data.role_weights)
        self.drawn = np.zeros((3, len(Task)), dtype=np.int64)
        if cfg.upstream.preload_frames:
            t0 = time.monotonic()
            size = self.data.preload()
            self._log(f"decoded every frame once: {size / 2**20:.1f} MiB in {time.monotonic() - t0:.1f} s")

    def _build_model(self) -> None:
        from lda_policy.model.upstream.checkpoint import load_upstream
        from lda_policy.model.upstream.vlm import load_vlm

        source = self.base
        if self.resume:
            source = list_checkpoints(self.run_dir)[-1][1] / "model"
        self.model = load_upstream(source, self.device).train()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.model.trainable_parameters():
            p.requires_grad_(True)
        vlm_source = source if self.cfg.upstream.vlm == "finetune" else self.base
        self.vlm = load_vlm(vlm_source, self.config.vlm)
        if self.cfg.upstream.vlm == "frozen":
            self.vlm.requires_grad_(False)
            if self.device.type == "cuda" and self.cfg.train.bf16:
                self.vlm.to(torch.bfloat16)
        self.vlm.to(self.device)

    def _optimizer(self) -> torch.optim.AdamW:
        o = self.cfg.optim
        groups = []
        parts = [(list(self.model.named_parameters()), 1.0)]
        if self.cfg.upstream.vlm == "finetune":
            self.vlm.train()
            parts.append((list(self.vlm.named_parameters()), o.vlm_lr_scale))
        for named, scale in parts:
            seen: set[int] = set()
            decay, no_decay = [], []
            for name, p in named:
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                flat = p.ndim < 2 or any(k in name for k in ("registers", "standin", "task_vectors", "positions"))
                (no_decay if flat else decay).append(p)
            groups += [{"params": decay, "weight_decay": o.weight_decay, "lr_scale": scale},
                       {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    # -------------------------------------------------------------- one batch

    def _log(self, msg: str) -> None:
        print(f"[lda-train] {msg}", flush=True)

    def features(self, batch: UpstreamBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``vl_embs`` and the text mask: the VLM's last decoder layer before its final norm (grad only when
        the VLM is fine-tuned)."""
        from lda_policy.model.upstream.vlm import vlm_features

        inputs = {k: v.to(self.device) for k, v in batch.vlm.items()}
        dtype = self.model.registers.dtype
        if self.cfg.upstream.vlm == "frozen":
            return vlm_features(self.vlm, inputs).to(dtype), inputs["attention_mask"].to(dtype)
        captured: list[torch.Tensor] = []
        ids = inputs["input_ids"]
        inputs.setdefault("mm_token_type_ids", (ids == self.vlm.config.image_token_id).long()
                          + 2 * (ids == self.vlm.config.video_token_id).long())
        hook = self.vlm.model.language_model.layers[-1].register_forward_hook(
            lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out))
        try:
            self.vlm.model(**inputs)  # the language model's forward (no LM head)
        finally:
            hook.remove()
        return captured[0].to(dtype), inputs["attention_mask"].to(dtype)

    def losses(self, batch: UpstreamBatch) -> dict[str, torch.Tensor]:
        """The authors' four-task losses of one batch (their ``FlowmatchingActionHead.forward``)."""
        use_amp = self.device.type == "cuda" and self.cfg.train.bf16
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
            vl_embs, mask = self.features(batch)
            tensors = {k: v.to(self.device) for k, v in batch.tensors.items()}
            tasks, k = batch.tasks, self.cfg.upstream.repeated_diffusion_steps
            if k > 1:  # the authors' tiling: every tensor and task label k times, each copy its own draws
                vl_embs, mask, tasks = vl_embs.repeat(k, 1, 1), mask.repeat(k, 1), tasks * k
                tensors = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in tensors.items()}
            return self.model.training_losses({**tensors, "vl_embs": vl_embs, "text_mask": mask}, tasks)

    # -------------------------------------------------------------- loop

    def _frames_iter(self, start: int) -> Any:
        if self.cfg.upstream.preload_frames:
            return None
        from .latent_cache import FrameWindowDataset, plan_keys

        layout = upstream_layout(self.config)
        frames = FrameWindowDataset(self.sources, list(layout.obs_offsets_s) + list(layout.future_offsets_s))
        trainer = self

        class _Keys:
            def __iter__(self):
                for step in range(start, trainer.cfg.train.steps):
                    for plan in trainer._micro_plans(step):
                        yield plan_keys(plan)

        return iter(torch.utils.data.DataLoader(frames, batch_sampler=_Keys(), num_workers=self.cfg.data.num_workers,
                                                collate_fn=torch.stack))

    def _micro_plans(self, step: int, plan: Any = None) -> list[Any]:
        t = self.cfg.train
        plan = self.sampler.batch(step, t.batch_size) if plan is None else plan
        micro = t.micro_batch_size or t.batch_size
        if t.batch_size % micro:
            raise TrainError(f"train.batch_size={t.batch_size} must be a multiple of micro_batch_size ({micro})")
        return [plan.slice(i, i + micro) for i in range(0, t.batch_size, micro)]

    def _step(self, step: int, frames_iter: Any, optimizer: torch.optim.Optimizer,
              params: list[torch.Tensor]) -> dict[str, Any]:
        t = self.cfg.train
        plan = self.sampler.batch(step, t.batch_size)
        self.drawn += self.sampler.counts(plan)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for m, micro in enumerate(self._micro_plans(step, plan)):
            batch = self.data.batch(micro, next(frames_iter) if frames_iter is not None else None)
            torch.manual_seed(_micro_seed(self.cfg.seed, step, m))
            out = self.losses(batch)
            share = len(batch) / t.batch_size
            (out["loss"] * share).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(out["loss"].detach()) * share
            for key, task in zip(LOSS_KEYS, ("policy", "inverse_dynamics", "forward_dynamics", "video_gen"),
                                 strict=True):
                n = batch.tasks.count(task)
                counts[task] = counts.get(task, 0) + n
                if n:
                    sums[key] = sums.get(key, 0.0) + float(out[key].detach()) * n
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"loss": sums["loss"], "grad_norm": grad_norm}
        for key, task in zip(LOSS_KEYS, ("policy", "inverse_dynamics", "forward_dynamics", "video_gen"), strict=True):
            record[f"loss/{task}"] = sums[key] / counts[task] if counts[task] else None
            record[f"count/{task}"] = counts[task]
        return record

    def train(self) -> dict[str, Any]:
        """Runs to ``train.steps``; returns the final held-out evaluation."""
        cfg, t = self.cfg, self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        optimizer = self._optimizer()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        start = self._load(optimizer) if self.resume else 0
        if start >= t.steps:
            self._log(f"already at step {start} >= train.steps={t.steps}; nothing to do")
            return {}
        self._log(f"fine-tuning the upstream checkpoint {self.base} ({sum(p.numel() for p in params) / 1e6:.2f}M "
                  f"trainable parameters, VLM {cfg.upstream.vlm}) steps {start}->{t.steps}, batch {t.batch_size}, "
                  f"device {self.device}, embodiment slots {self.slots}")
        frames_iter = self._frames_iter(start)
        window_t0, window_samples, last_eval = time.monotonic(), 0, {}
        for step in range(start, t.steps):
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            record = self._step(step, frames_iter, optimizer, params)
            done = step + 1
            window_samples += t.batch_size
            if done % t.log_every == 0 or done == t.steps or done == start + 1:
                rate = window_samples / max(time.monotonic() - window_t0, 1e-9)
                record.update({"step": done, "lr": lr, "samples_per_s": rate})
                with (self.run_dir / "train_log.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                eta = (t.steps - done) * t.batch_size / max(rate, 1e-9)
                tasks = " ".join(f"{k[5:]} {v:.4f}" for k, v in record.items()
                                 if k.startswith("loss/") and v is not None)
                self._log(f"step {done}/{t.steps} loss {record['loss']:.4f} ({tasks}) lr {lr:.2e} grad_norm "
                          f"{record['grad_norm']:.3f} {rate:.1f} samples/s "
                          f"eta {datetime.timedelta(seconds=round(eta))}")
                window_t0, window_samples = time.monotonic(), 0
            if done % t.checkpoint_every == 0 or done == t.steps:
                self._log(f"saved checkpoint {self._save(done, optimizer)} (step {done})")
                window_t0, window_samples = time.monotonic(), 0
            if cfg.eval.enabled and ((t.eval_every and done % t.eval_every == 0) or done == t.steps):
                last_eval = self.evaluate(done)
                window_t0, window_samples = time.monotonic(), 0
        drawn = effective_samples(self.drawn)
        self._log("effective samples: " + ", ".join(f"{k} {v}" for k, v in drawn["objective"].items())
                  + "; by role: " + ", ".join(f"{k} {v}" for k, v in drawn["role"].items()))
        self._export_final()
        return last_eval

    # -------------------------------------------------------------- evaluation

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out losses per task (fixed draws: comparable across steps), written to eval/step_NNNNNN.json."""
        try:
            sampler = TaskSampler(self.sources, self.cfg.data.task_weights, self.cfg.seed, "heldout",
                                  role_weights=self.cfg.data.role_weights)
        except Exception:  # noqa: BLE001 - no held-out sample can train anything
            self._log("evaluation skipped: no held-out episodes (set data.heldout_fraction or heldout_episodes)")
            return {}
        n = min(self.cfg.eval.max_samples, sum(sampler.sample_counts))
        plan = sampler.batch(0, n)
        result = fixed_losses(self, plan, self.cfg.eval.batch_size, self.cfg.eval.seed)
        result["policy"] = policy_l1(self, plan, self.cfg.eval.batch_size, self.cfg.eval.seed,
                                     self.cfg.eval.num_inference_steps)
        result["step"] = step
        out = self.run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"step_{step:06d}.json").write_text(json.dumps(result, indent=2) + "\n")
        pol = result["policy"] or {}
        self._log(f"eval step {step}: held-out loss {result['loss']:.4f} " + " ".join(
            f"{k} {v:.4f}" for k, v in result["per_task"].items() if v is not None)
            + f"; policy action L1 {pol.get('action_l1', 'n/a')} vs predict-the-mean "
              f"{pol.get('baseline_mean_action_l1', 'n/a')}")
        return result

    # -------------------------------------------------------------- checkpoints

    def _source_record(self, step: int) -> dict[str, Any]:
        return {"fine_tuned_from": str(self.base), "by": "lda-train", "step": step,
                "datasets": [s.name for s in self.sources], "embodiment_slots": self.slots,
                "vlm": self.cfg.upstream.vlm, "state": self.cfg.upstream.state}

    def write_model(self, directory: Path, step: int) -> Path:
        """The current weights as an upstream checkpoint (fine-tuning statistics, slots recorded)."""
        from lda_policy.model.upstream.checkpoint import VLM_FILE, save_upstream

        statistics = {name: {**s, "embodiment_id": self.slots[name], "state": self.cfg.upstream.state}
                      for name, s in self.data.statistics.items()}
        vlm_state = {k: v.detach().cpu() for k, v in self.vlm.state_dict().items()} \
            if self.cfg.upstream.vlm == "finetune" else None
        model = self.model if self.device.type == "cpu" else _cpu_copy(self.model)
        return save_upstream(directory, model, self._source_record(step), statistics, vlm_state=vlm_state,
                             vlm_file=None if vlm_state is not None else self.base / VLM_FILE,
                             normalization_source=f"lda-train: the fine-tuning data of {self.run_dir}",
                             base_statistics=self.base_statistics)

    def _save(self, step: int, optimizer: torch.optim.Optimizer) -> Path:
        root = self.run_dir / "checkpoints"
        final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}-{os.getpid()}"
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.write_model(tmp / "model", step)
            tensors, groups = _flatten_optim(_named_optim_state(optimizer))
            save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"format": STATE_FORMAT})
            state = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "step": step, "param_groups": groups,
                     "effective_samples": self.drawn.tolist(), "base_checkpoint": str(self.base),
                     "saved_unix": time.time()}
            (tmp / "training_state.json").write_text(json.dumps(state, indent=2) + "\n")
            (tmp / "config.yaml").write_text(dump_config(self.cfg))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        keep = self.cfg.train.keep_checkpoints
        if keep:
            for _, old in list_checkpoints(self.run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _load(self, optimizer: torch.optim.Optimizer) -> int:
        step, path = list_checkpoints(self.run_dir)[-1]
        state = json.loads((path / "training_state.json").read_text())
        if state.get("format") != STATE_FORMAT or state.get("format_version") != STATE_VERSION:
            raise TrainError(f"{path}/training_state.json is not a version-{STATE_VERSION} {STATE_FORMAT} file "
                             "(a run of our own model? resume it with its own config)")
        tensors = load_file(str(path / "optimizer.safetensors"))
        optim_state = _unflatten_optim(tensors, state["param_groups"])
        _load_named_optim_state(optimizer, optim_state, self.device)
        self.drawn[...] = np.asarray(state["effective_samples"], dtype=np.int64)
        self._log(f"resumed from {path} (step {step})")
        return step

    def _export_final(self) -> None:
        newest = list_checkpoints(self.run_dir)[-1][1] / "model"
        final, tmp = self.run_dir / "model", self.run_dir / f".tmp-model-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(newest, tmp, copy_function=_link_or_copy)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        self._log(f"final model: {final} (an upstream checkpoint: load_upstream / UpstreamPolicy read it)")


# ---------------------------------------------------------------------------------------------- helpers


def _named_optim_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """AdamW state keyed by "group.index" (stable across runs: the same parameters in the same order)."""
    raw = optimizer.state_dict()
    ids = [(gi, i) for gi, g in enumerate(raw["param_groups"]) for i, _ in enumerate(g["params"])]
    flat = [pid for g in raw["param_groups"] for pid in g["params"]]
    state = {f"{gi}.{i}": raw["state"][pid] for (gi, i), pid in zip(ids, flat, strict=True) if pid in raw["state"]}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"size": len(g["params"])} for g in raw["param_groups"]]
    return {"state": state, "param_groups": groups}


def _load_named_optim_state(optimizer: torch.optim.Optimizer, named: dict[str, Any], device: torch.device) -> None:
    current = optimizer.state_dict()
    sizes = [len(g["params"]) for g in current["param_groups"]]
    saved = [int(g.get("size", -1)) for g in named["param_groups"]]
    if sizes != saved:
        raise TrainError(f"the checkpoint's optimiser holds parameter groups of sizes {saved}, this run {sizes}")
    state, pid = {}, 0
    for gi, g in enumerate(current["param_groups"]):
        for i, p in enumerate(g["params"]):
            entry = named["state"].get(f"{gi}.{i}")
            if entry is not None:
                state[p] = {k: (v.to(device) if k != "step" else v) for k, v in entry.items()}
            pid += 1
    groups = [{**{k: v for k, v in s.items() if k != "size"}, "params": g["params"]}
              for s, g in zip(named["param_groups"], current["param_groups"], strict=True)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _cpu_copy(model: torch.nn.Module) -> Any:
    from lda_policy.model.upstream import UpstreamLDA

    with torch.device("meta"):
        copy = UpstreamLDA(model.config)
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, assign=True)
    return copy


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def is_upstream_run(cfg: TrainingRunConfig) -> bool:
    """True when ``model.checkpoint`` is an imported authors' checkpoint; a directory that is neither that
    nor one of ours is refused here, naming both formats."""
    if cfg.model.checkpoint is None:
        return False
    from lda_policy.model.upstream.checkpoint import CONFIG_FILE, is_upstream_checkpoint

    path = Path(cfg.model.checkpoint).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"model.checkpoint {path} is not a directory (an LDA checkpoint, or an authors' "
                              "checkpoint imported with lda-import-upstream)")
    if is_upstream_checkpoint(path):
        return True
    try:
        fmt = json.loads((path / CONFIG_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != "lda-checkpoint" and not (path / "model.safetensors").is_file():
        raise CheckpointError(f"model.checkpoint {path} is neither an LDA checkpoint (config.json with format "
                              "'lda-checkpoint', model.safetensors) nor an authors' checkpoint imported with "
                              "lda-import-upstream (config.json with format 'lda-upstream-checkpoint'); for the "
                              "authors' pytorch_model.pt run lda-import-upstream first")
    return False
