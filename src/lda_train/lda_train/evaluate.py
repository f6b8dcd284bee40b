"""Held-out evaluation: the metrics of paper section V-C plus the dynamics heads, with baselines.

On held-out episodes (never trained on), for evenly spaced anchor frames:

- ``policy.action_l1``: mean |predicted - recorded| action over real dimensions and chunk steps, in
  physical units, on ``high`` episodes (the paper's scaling metric). ``baseline_mean_action_l1``
  predicts the training set's mean action (per embodiment) for every step: the number a policy must
  beat to have learned anything. ``pose_l1`` / ``finger_l1`` (each with its ``baseline_mean_*`` and
  ``*_ratio_to_baseline``) split it into the hand-centric pose deltas and the finger values: on the
  GR-1 the finger targets dominated the sum while the arm stayed at predict-the-mean.
- ``forward_dynamics.latent_mse`` / ``latent_cosine``: predicted vs. DINO latents of the future
  frames given the recorded actions (high and low episodes); baseline: "nothing moves" (copy the
  current frame's latents).
- ``inverse_dynamics.action_l1``: actions recovered from the real future latents, with the same
  predict-the-mean baseline.
- ``forecast.latent_mse`` / ``latent_cosine``: future latents without actions (every role).

Dynamics metrics use samples whose action chunk and future frames lie inside the episode. All
sampling noise is seeded, so two evaluations of the same weights agree exactly. Results go to JSON
(``eval/step_NNNNNN.json``, ``eval/latest.json``, ``eval/metrics.jsonl``), to TensorBoard and to a
PNG of the curves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lda_common.schema import Quality
from lda_policy.model import LDAModel, Observation

from .config import EvalConfig
from .data import ACTION_KEY, BatchPlan, SourceDataset
from .latent_cache import TrainingData
from .stats import EmbodimentStats


@dataclass
class EvalSet:
    """Held-out anchors per dataset, chosen once (evenly spaced over each dataset's held-out frames)."""

    plans: list[BatchPlan]  # one per dataset that has held-out samples (task ids unused: all zero)

    @classmethod
    def build(cls, sources: Sequence[SourceDataset], max_samples: int) -> EvalSet:
        counts = [len(s.rows("heldout")) for s in sources]
        total = sum(counts)
        plans = []
        for d, (s, n) in enumerate(zip(sources, counts, strict=True)):
            if n == 0:
                continue
            k = max(1, min(n, round(max_samples * n / total)))
            rows = s.rows("heldout")[np.linspace(0, n - 1, k).round().astype(np.int64)]
            rows = np.unique(rows)
            plans.append(BatchPlan(np.full(len(rows), d, dtype=np.int64), rows, np.zeros(len(rows), np.int64)))
        return cls(plans)

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.plans)


class _Acc:
    """Sums for mean metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, key: str, total: float, count: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(total)
        self.counts[key] = self.counts.get(key, 0.0) + float(count)

    def mean(self, key: str) -> float | None:
        c = self.counts.get(key, 0.0)
        return self.sums[key] / c if c > 0 else None


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token cosine similarity (..., C) -> (...)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


@torch.no_grad()
def evaluate(model: LDAModel, data: TrainingData, eval_set: EvalSet, stats: dict[str, EmbodimentStats],
             cfg: EvalConfig) -> dict[str, Any]:
    """Runs the four heads on the held-out samples; returns the metrics dict (JSON-ready)."""
    was_training = model.training
    model.eval()
    acc = _Acc()
    per_dataset: dict[str, _Acc] = {}
    steps = cfg.num_inference_steps
    seed = cfg.seed
    for plan in eval_set.plans:
        src = data.sources[int(plan.dataset[0])]
        spec = model.embodiment(src.embodiment)
        a_dim, s_dim = spec.action_dim, spec.state_dim
        dacc = per_dataset.setdefault(src.name, _Acc())
        mean = stats.get(src.embodiment)
        mean_action = (torch.tensor(mean.action_mean, dtype=torch.float32)
                       if mean is not None and mean.action_mean is not None else None)
        column_groups = action_groups(src.features.get(ACTION_KEY, {}).get("names"), a_dim)
        for start in range(0, len(plan), cfg.batch_size):
            sub = plan.slice(start, start + cfg.batch_size)
            batch = data.batch(sub)
            if model.vlm_tail is not None:  # the cached VLM inputs through the model's fine-tuned layers
                with torch.no_grad():
                    batch["language"] = model.apply_vlm_tail(batch["language"], batch["language_positions"],
                                                             batch["language_mask"]).cpu()
            role = batch["role"]
            av, sv = batch["action_valid"], batch["state_valid"]
            full_future = ~batch["future_latents_is_pad"].any(dim=1)
            full_chunk = ~batch["action_is_pad"].any(dim=1)
            groups = {}
            # the public API takes one embodiment and all-or-nothing state / history per call
            for key in {(bool(a), bool(s)) for a, s in zip(av.tolist(), sv.tolist(), strict=True)}:
                groups[key] = ((av == key[0]) & (sv == key[1])).nonzero().flatten()
            for (has_actions, has_state), idx in groups.items():
                if len(idx) == 0:
                    continue
                obs = Observation(
                    embodiment=src.embodiment,
                    history_latents=batch["obs_latents"][idx],
                    language=batch["language"][idx], language_mask=batch["language_mask"][idx],
                    state=batch["state"][idx, :s_dim] if has_state else None,
                    history_actions=batch["history_actions"][idx, :, :a_dim] if has_actions else None,
                )
                truth = batch["actions"][idx, :, :a_dim]
                step_mask = (~batch["action_is_pad"][idx]).float()[:, :, None].expand_as(truth)
                fut_true = batch["future_latents"][idx]
                current = batch["obs_latents"][idx, -1:].expand_as(fut_true)
                r = role[idx]
                seed += 1
                if has_actions:
                    sel = (r == Quality.HIGH).nonzero().flatten()
                    if len(sel):
                        pred = model.policy(_take(obs, sel), num_steps=steps, seed=seed).cpu()
                        err = ((pred - truth[sel]).abs() * step_mask[sel]).sum()
                        n = step_mask[sel].sum()
                        for a in (acc, dacc):
                            a.add("policy/action_l1", err, n)
                            if mean_action is not None:
                                a.add("policy/baseline_mean_action_l1",
                                      ((mean_action - truth[sel]).abs() * step_mask[sel]).sum(), n)
                            a.add("policy/samples", len(sel), 1)
                        # The arm and the hand apart: a hand's targets can dominate the L1 of an arm not learnt.
                        for group, cols in column_groups.items():
                            m = step_mask[sel][..., cols]
                            for a in (acc, dacc):
                                a.add(f"policy/{group}_l1", ((pred[..., cols] - truth[sel][..., cols]).abs() * m).sum(),
                                      m.sum())
                                if mean_action is not None:
                                    a.add(f"policy/baseline_mean_{group}_l1",
                                          ((mean_action[cols] - truth[sel][..., cols]).abs() * m).sum(), m.sum())
                    dyn = (full_future & full_chunk)[idx].nonzero().flatten()
                    if len(dyn):
                        o = _take(obs, dyn)
                        pred_f = model.forward_dynamics(o, truth[dyn], num_steps=steps, seed=seed).cpu()
                        pred_a = model.inverse_dynamics(o, fut_true[dyn], num_steps=steps, seed=seed).cpu()
                        tokens = fut_true[dyn][..., 0].numel()
                        for a in (acc, dacc):
                            a.add("forward_dynamics/latent_mse", ((pred_f - fut_true[dyn]) ** 2).mean(-1).sum(), tokens)
                            a.add("forward_dynamics/latent_cosine", _cosine(pred_f, fut_true[dyn]).sum(), tokens)
                            a.add("forward_dynamics/baseline_copy_mse",
                                  ((current[dyn] - fut_true[dyn]) ** 2).mean(-1).sum(), tokens)
                            a.add("forward_dynamics/baseline_copy_cosine", _cosine(current[dyn], fut_true[dyn]).sum(),
                                  tokens)
                            a.add("forward_dynamics/samples", len(dyn), 1)
                            a.add("inverse_dynamics/action_l1", (pred_a - truth[dyn]).abs().sum(), truth[dyn].numel())
                            if mean_action is not None:
                                a.add("inverse_dynamics/baseline_mean_action_l1",
                                      (mean_action - truth[dyn]).abs().sum(), truth[dyn].numel())
                            a.add("inverse_dynamics/samples", len(dyn), 1)
                fc = full_future[idx].nonzero().flatten()
                if len(fc):
                    pred_v = model.forecast(_take(obs, fc), num_steps=steps, seed=seed).cpu()
                    tokens = fut_true[fc][..., 0].numel()
                    for a in (acc, dacc):
                        a.add("forecast/latent_mse", ((pred_v - fut_true[fc]) ** 2).mean(-1).sum(), tokens)
                        a.add("forecast/latent_cosine", _cosine(pred_v, fut_true[fc]).sum(), tokens)
                        a.add("forecast/samples", len(fc), 1)
    model.train(was_training)
    result = _summarise(acc)
    result["per_dataset"] = {name: _summarise(a) for name, a in per_dataset.items()}
    result["num_heldout_samples"] = eval_set.size
    return result


#: The hand-centric pose-delta columns of an action (lda_common.action_space): ``<hand>/dx`` ... ``<hand>/drz``.
POSE_SUFFIXES = ("/dx", "/dy", "/dz", "/drx", "/dry", "/drz")


def action_groups(names: list[str] | None, action_dim: int) -> dict[str, list[int]]:
    """{"pose": the pose-delta columns, "finger": the rest}, by the dataset's action names ({} without them)."""
    if not names or len(names) != action_dim:
        return {}
    pose = [i for i, n in enumerate(names) if str(n).endswith(POSE_SUFFIXES)]
    finger = [i for i in range(action_dim) if i not in pose]
    return {g: cols for g, cols in (("pose", pose), ("finger", finger)) if cols}


def _take(obs: Observation, idx: torch.Tensor) -> Observation:
    def t(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[idx]

    return Observation(embodiment=obs.embodiment, history_latents=obs.history_latents[idx], language=obs.language[idx],
                       language_mask=t(obs.language_mask), state=t(obs.state), history_actions=t(obs.history_actions))


def _summarise(acc: _Acc) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(acc.sums):
        head, name = key.split("/", 1)
        out.setdefault(head, {})[name] = int(acc.sums[key]) if name == "samples" else acc.mean(key)
    pol = out.get("policy", {})
    if pol.get("action_l1") is not None and pol.get("baseline_mean_action_l1"):
        pol["ratio_to_baseline"] = pol["action_l1"] / pol["baseline_mean_action_l1"]
    for group in ("pose", "finger"):
        if pol.get(f"{group}_l1") is not None and pol.get(f"baseline_mean_{group}_l1"):
            pol[f"{group}_ratio_to_baseline"] = pol[f"{group}_l1"] / pol[f"baseline_mean_{group}_l1"]
    inv = out.get("inverse_dynamics", {})
    if inv.get("action_l1") is not None and inv.get("baseline_mean_action_l1"):
        inv["ratio_to_baseline"] = inv["action_l1"] / inv["baseline_mean_action_l1"]
    return out


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``{"policy/action_l1": ..., ...}`` of the overall metrics (for TensorBoard and curves)."""
    out = {}
    for head, values in result.items():
        if head in ("per_dataset", "step", "num_heldout_samples", "effective_samples") or not isinstance(values, dict):
            continue
        for k, v in values.items():
            if isinstance(v, (int, float)) and v is not None and math.isfinite(v) and k != "samples":
                out[f"{head}/{k}"] = float(v)
    return out


def write_eval(result: dict[str, Any], out_dir: Path, step: int) -> Path:
    """Writes eval/step_NNNNNN.json, eval/latest.json and appends eval/metrics.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"step": step, **result}
    text = json.dumps(result, indent=2) + "\n"
    path = out_dir / f"step_{step:06d}.json"
    for p in (path, out_dir / "latest.json"):
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(p)
    with (out_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, **flat_metrics(result)}) + "\n")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return rows


def plot_curves(run_dir: Path) -> Path:
    """eval/curves.png: training losses and the held-out metrics against their baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = _read_jsonl(run_dir / "train_log.jsonl")
    evals = _read_jsonl(run_dir / "eval" / "metrics.jsonl")
    # a resumed run re-logs steps after its checkpoint: keep the last entry per step
    train = list({r["step"]: r for r in train}.values())
    evals = list({r["step"]: r for r in evals}.values())
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))

    def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax = axes[0, 0]
    for key in ("loss", "loss/policy", "loss/forward_dynamics", "loss/inverse_dynamics", "loss/forecast"):
        x, y = series(train, key)
        if x:
            ax.plot(x, y, label=key, lw=1.5 if key == "loss" else 0.8)
    ax.set(title="training loss (flow matching)", xlabel="step", yscale="log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    panels = [
        (axes[0, 1], "held-out policy action L1 (physical units)",
         ["policy/action_l1", "policy/baseline_mean_action_l1"]),
        (axes[1, 0], "held-out forward dynamics: latent MSE",
         ["forward_dynamics/latent_mse", "forward_dynamics/baseline_copy_mse", "forecast/latent_mse"]),
        (axes[1, 1], "held-out inverse dynamics action L1",
         ["inverse_dynamics/action_l1", "inverse_dynamics/baseline_mean_action_l1"]),
    ]
    for ax, title, keys in panels:
        for key in keys:
            x, y = series(evals, key)
            if x:
                ax.plot(x, y, marker="o", ms=3, ls="--" if "baseline" in key else "-", label=key)
        ax.set(title=title, xlabel="step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "eval" / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
