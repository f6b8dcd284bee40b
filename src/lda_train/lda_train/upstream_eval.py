"""Held-out evaluation of an upstream fine-tune: the four task losses with fixed draws, and the policy's
action error in physical units against predicting the training mean (as our own trainer reports it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lda_policy.model import Task

from .data import BatchPlan
from .upstream_data import normalize

TASKS = (("policy_loss", "policy"), ("inverse_dynamics_loss", "inverse_dynamics"),
         ("forward_dynamics_loss", "forward_dynamics"), ("video_gen_loss", "video_gen"))


def _micro_seed(seed: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, 0xE7A1, micro]).generate_state(1, np.uint64)[0] % (2**63 - 1))


def fixed_losses(trainer: Any, plan: Any, batch_size: int, seed: int) -> dict[str, Any]:
    """Mean losses of ``plan`` with fixed noise and times (no gradients, dropout off): a number that
    moves only when the weights do."""
    was_training = trainer.model.training
    trainer.model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        with torch.no_grad():
            for i, start in enumerate(range(0, len(plan), batch_size)):
                batch = trainer.data.batch(plan.slice(start, start + batch_size))
                torch.manual_seed(_micro_seed(seed, i))
                out = trainer.losses(batch)
                for key, task in TASKS:
                    n = batch.tasks.count(task)
                    counts[task] = counts.get(task, 0) + n
                    sums[task] = sums.get(task, 0.0) + (float(out[key]) * n if n else 0.0)
    finally:
        trainer.model.train(was_training)
    per_task = {k: (sums[k] / counts[k] if counts[k] else None) for k in counts}
    total = sum(v * counts[k] for k, v in per_task.items() if v is not None) / max(1, sum(counts.values()))
    return {"loss": total, "per_task": per_task, "samples": counts}


def training_means(trainer: Any) -> dict[str, np.ndarray]:
    """Per embodiment, the mean normalised action of the training episodes (the predict-the-mean baseline)."""
    parts: dict[str, list[np.ndarray]] = {}
    for s in trainer.sources:
        stats = trainer.data.statistics.get(s.embodiment)
        if s.has_action and stats is not None:
            rows = s.rows("train")
            parts.setdefault(s.embodiment, []).append(normalize(s.action[rows[s.frame_action_valid[rows]]], stats,
                                                                trainer.config.action_dim))
    return {k: np.concatenate(v).mean(axis=0) for k, v in parts.items() if sum(len(x) for x in v)}


def policy_l1(trainer: Any, plan: BatchPlan, batch_size: int, seed: int,
              num_steps: int | None = None) -> dict[str, Any] | None:
    """Mean absolute error of the predicted chunk (clipped to [-1, 1] as deployed, un-normalised) on the
    held-out policy samples of ``plan``, over real dimensions and steps, with the predict-the-mean baseline."""
    sel = np.flatnonzero(plan.task == Task.POLICY)
    if not len(sel):
        return None
    means = training_means(trainer)
    slot_means = {trainer.slots[k]: torch.from_numpy(v).float() for k, v in means.items()}
    span = {trainer.slots[k]: np.asarray(v["action"]["max"]) - np.asarray(v["action"]["min"])
            for k, v in trainer.data.statistics.items()}
    err = base = weight = 0.0
    model, was_training = trainer.model, trainer.model.training
    model.eval()  # no dropout, as deployed
    try:
        for i, start in enumerate(range(0, len(sel), batch_size)):
            e, b, w = _policy_batch(trainer, plan, sel[start:start + batch_size], i, seed, num_steps, slot_means, span)
            err, base, weight = err + e, base + b, weight + w
    finally:
        model.train(was_training)
    if weight == 0:
        return None
    return {"samples": int(len(sel)), "action_l1": round(err / weight, 6),
            "baseline_mean_action_l1": round(base / weight, 6)}


def _policy_batch(trainer: Any, plan: BatchPlan, idx: np.ndarray, i: int, seed: int, num_steps: int | None,
                  slot_means: dict[int, torch.Tensor], span: dict[int, np.ndarray]) -> tuple[float, float, float]:
    """(summed physical |error| of the model, of the mean, mask weight) of one held-out policy batch."""
    model = trainer.model
    batch = trainer.data.batch(BatchPlan(plan.dataset[idx], plan.row[idx], plan.task[idx]))
    t = {k: v.to(trainer.device) for k, v in batch.tensors.items()}
    with torch.no_grad():
        vl_embs, mask = trainer.features(batch)
        noise = torch.randn(t["actions"].shape, generator=torch.Generator().manual_seed(_micro_seed(seed, i)))
        pred = model.predict_action(vl_embs, mask, t["curr_images"], t["state"], t["embodiment"],
                                    t.get("history_actions"), noise=noise.to(trainer.device), num_steps=num_steps)
    pred = pred.float().clamp(-1, 1).cpu()
    target, m = batch.tensors["actions"], batch.tensors["action_mask"]
    mean = torch.stack([slot_means.get(int(e), torch.zeros(target.shape[-1])) for e in batch.tensors["embodiment"]])
    scale = torch.zeros_like(target[:, 0])
    for row, e in enumerate(batch.tensors["embodiment"].tolist()):
        width = len(span.get(e, []))
        scale[row, :width] = torch.from_numpy(span[e] / 2.0).float() if width else 0.0
    return (float(((pred - target).abs() * scale[:, None] * m).sum()),
            float(((mean[:, None] - target).abs() * scale[:, None] * m).sum()), float(m.sum()))
