"""LeRobot datasets -> role-aware training samples ("universal data ingestion", paper section III-B).

A :class:`SourceDataset` opens one local LeRobot v3.0 dataset through lerobot's ``LeRobotDataset``,
checks that it has the features its role needs, decides each episode's data role and its held-out
split, and keeps the per-frame columns (state, action, action validity, task) in memory.

A training sample is an *anchor* frame plus the frames the model's :class:`TimeLayout` puts around
it: history actions and the action chunk at the control rate, history and future camera frames
0.5 s apart. The frame offsets come from ``TimeLayout.delta_timestamps`` through lerobot's own
``get_delta_indices``, and windows are clamped to the episode with ``*_is_pad`` flags exactly as
``LeRobotDataset.__getitem__`` does (a test checks the two agree).

Role rules (enforced here and again inside ``LDAModel.compute_loss``):

- ``high`` episodes may train all four objectives;
- ``low`` episodes train forward dynamics, inverse dynamics and forecasting, never the policy;
- ``actionless`` episodes train forecasting only; their actions are never read (zeros, invalid).

:class:`TaskSampler` draws, for every step, a global batch of (dataset, anchor, task) triples,
objective first: each objective gets its ``task_weights`` share of the batch, then draws its anchors
among the frames eligible for it (its role allows it and the sample can serve it: forward/inverse
dynamics and forecasting need at least one real future frame; policy and dynamics need valid actions),
a dataset in proportion to ``weight x`` its eligible frames' ``role_weights``, the anchor in proportion
to its role weight. Adding low-quality or actionless data never takes samples from the policy. The draw
is a pure function of (seed, step), so a resumed run and every DDP rank see the same global batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lda_common.schema import EMBODIMENT_FILE, EPISODES_FILE, Quality, read_episode_labels
from lda_policy.model import LDAConfig, Task, TimeLayout, allowed_tasks

from .config import DatasetConfig, RoleWeights, TaskWeights

STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTION_VALID_KEY = "action_valid"
QUALITY_KEY = "quality"

ROLE_NAMES = {r: r.name.lower() for r in Quality}
TASK_NAMES = {t: t.name.lower() for t in Task}
#: role x task -> allowed (the model core's rule, as a NumPy table)
ROLE_TASK_ALLOWED = np.array([[t in allowed_tasks(r) for t in Task] for r in Quality], dtype=bool)


class DataError(ValueError):
    """A dataset is missing, malformed, or lacks what the configuration needs; the message says which."""


@dataclass(frozen=True)
class FrameOffsets:
    """Frame offsets (in dataset frames) of one sample, derived from the model's TimeLayout."""

    history: np.ndarray  # (history_action_steps,)
    chunk: np.ndarray  # (chunk_size,)
    obs: np.ndarray  # (num_obs_frames,) ends at 0
    future: np.ndarray  # (num_future_frames,)

    @classmethod
    def from_layout(cls, layout: TimeLayout, fps: float, where: str) -> FrameOffsets:
        from lerobot.datasets.feature_utils import check_delta_timestamps, get_delta_indices

        delta = layout.delta_timestamps(["image"])
        if not check_delta_timestamps(delta, fps, tolerance_s=1e-4, raise_value_error=False):
            raise DataError(
                f"{where}: recorded at {fps} fps, but the model's time layout needs offsets {delta} s, "
                f"which are not whole frames at {fps} fps (record at a multiple of {layout.control_hz} Hz "
                "that also puts frames 0.5 s apart, e.g. 10, 20 or 30 fps)")
        idx = get_delta_indices(delta, fps)
        n_hist, n_obs = layout.history_action_steps, len(layout.obs_offsets_s)
        action = np.asarray(idx["action"], dtype=np.int64)
        image = np.asarray(idx["image"], dtype=np.int64)
        return cls(history=action[:n_hist], chunk=action[n_hist:], obs=image[:n_obs], future=image[n_obs:])


@dataclass
class Episode:
    index: int  # LeRobot episode_index
    start: int  # first row (global frame index)
    end: int  # one past the last row
    role: Quality
    heldout: bool = False
    trained: bool = True  # drawn for training (not held out, and in train_episodes when that is set)


def _column(table: Any, name: str) -> np.ndarray:
    """A column of a pyarrow table as NumPy: (N,) for scalars, (N, D) for fixed-length vectors."""
    arr = table.column(name).combine_chunks()
    n = len(arr)
    import pyarrow as pa

    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, -1) if n else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False)


def _role_from_label(value: Any, where: str) -> Quality:
    if isinstance(value, (list, tuple, np.ndarray)):
        value = np.asarray(value).reshape(-1)[0]
    if isinstance(value, str):
        key = value.strip().lower()
        if key.isdigit():
            value = int(key)
        else:
            for role, name in ROLE_NAMES.items():
                if key == name:
                    return role
            raise DataError(f"{where}: unknown quality label {value!r}; expected high, low or actionless (or 0, 1, 2)")
    try:
        return Quality(int(value))
    except (TypeError, ValueError):
        raise DataError(f"{where}: unknown quality label {value!r}; expected 0 (high), 1 (low) or 2 (actionless)")\
            from None


class SourceDataset:
    """One LeRobot dataset prepared for training (columns in memory, roles, split, feasibility)."""

    def __init__(self, cfg: DatasetConfig, position: int, layout: TimeLayout, default_heldout: float,
                 seed: int) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self.cfg = cfg
        self.position = position
        self.root = Path(cfg.root).expanduser().resolve()
        self.name = cfg.name or self.root.name
        self.where = f"data.datasets.{position} ({self.name!r} at {self.root})"
        if not (self.root / "meta" / "info.json").is_file():
            raise DataError(f"{self.where}: not a LeRobot dataset (no meta/info.json)")
        self.repo_id = cfg.repo_id or f"local/{self.root.name}"
        try:
            self.lerobot = LeRobotDataset(self.repo_id, root=self.root)
        except Exception as err:  # lerobot raises many types for unreadable datasets
            raise DataError(f"{self.where}: lerobot could not open it: {type(err).__name__}: {err}") from err
        meta = self.lerobot.meta
        self.fps = float(meta.fps)
        self.features: dict[str, dict] = dict(meta.features)

        # -- camera
        cameras = [k for k in meta.camera_keys if k not in meta.depth_keys]
        if cfg.image_key is not None:
            if cfg.image_key not in self.features:
                raise DataError(f"{self.where}: the configured image_key {cfg.image_key!r} is not a feature of "
                                f"this dataset; its cameras are {cameras}")
            if cfg.image_key not in cameras:
                raise DataError(f"{self.where}: image_key {cfg.image_key!r} is not an RGB camera; cameras: {cameras}")
            self.image_key = cfg.image_key
        elif cameras:
            self.image_key = cameras[0]
        else:
            raise DataError(f"{self.where}: the dataset has no camera feature (observation.images.*); the model "
                            "needs one for its DINO latents")
        self.is_video = self.image_key in meta.video_keys

        # -- embodiment record
        self.embodiment_record = self._read_embodiment_record()
        self.embodiment = cfg.embodiment or self.embodiment_record.get("embodiment") \
            or self.embodiment_record.get("name")
        if not self.embodiment:
            raise DataError(f"{self.where}: no embodiment: the dataset has no {EMBODIMENT_FILE}; set "
                            f"data.datasets.{position}.embodiment")

        # -- frame columns
        table = self.lerobot.hf_dataset.data
        index = _column(table, "index").reshape(-1).astype(np.int64)
        order = np.argsort(index, kind="stable")
        self.num_frames = len(index)
        if not np.array_equal(index[order], np.arange(self.num_frames)):
            raise DataError(f"{self.where}: frame 'index' column is not 0..N-1")
        self.episode_index = _column(table, "episode_index").reshape(-1).astype(np.int64)[order]
        self.timestamp = _column(table, "timestamp").reshape(-1).astype(np.float64)[order]
        self.task_index = _column(table, "task_index").reshape(-1).astype(np.int64)[order]
        #: task_index -> instruction text (meta/tasks.parquet), and the distinct texts
        self.task_text = {int(i): str(t) for t, i in zip(meta.tasks.index, meta.tasks["task_index"], strict=True)}
        unknown = sorted(set(np.unique(self.task_index).tolist()) - set(self.task_text))
        if unknown:
            raise DataError(f"{self.where}: frames use task_index {unknown[:5]} missing from meta/tasks.parquet")
        self.tasks = sorted(set(self.task_text.values()))

        # -- episodes and roles
        self.episodes = self._episodes(meta)
        self.offsets = FrameOffsets.from_layout(layout, self.fps, self.where)
        roles_present = {ep.role for ep in self.episodes}
        needs_actions = bool(roles_present & {Quality.HIGH, Quality.LOW})
        self.has_action = ACTION_KEY in self.features
        self.has_state = STATE_KEY in self.features
        for key, present in ((ACTION_KEY, self.has_action), (STATE_KEY, self.has_state)):
            if needs_actions and not present:
                used = sorted(ROLE_NAMES[r] for r in roles_present if r != Quality.ACTIONLESS)
                raise DataError(f"{self.where}: missing feature {key!r}, needed for its {'/'.join(used)} episodes "
                                f"(features: {sorted(self.features)}); give an actionless dataset role: actionless")
        self.action_dim = int(self.features[ACTION_KEY]["shape"][0]) if self.has_action else 0
        self.state_dim = int(self.features[STATE_KEY]["shape"][0]) if self.has_state else 0
        self.action = (_column(table, ACTION_KEY).astype(np.float32)[order] if self.has_action
                       else np.zeros((self.num_frames, 0), np.float32))
        self.state = (_column(table, STATE_KEY).astype(np.float32)[order] if self.has_state
                      else np.zeros((self.num_frames, 0), np.float32))
        if self.has_action and self.action.shape != (self.num_frames, self.action_dim):
            raise DataError(f"{self.where}: 'action' column has shape {self.action.shape}")
        if ACTION_VALID_KEY in self.features:
            valid = _column(table, ACTION_VALID_KEY).reshape(-1)[order].astype(bool)
        else:
            valid = np.ones(self.num_frames, dtype=bool)
        if QUALITY_KEY in self.features:
            frame_quality = _column(table, QUALITY_KEY).reshape(-1)[order].astype(np.int64)
            valid &= frame_quality != int(Quality.ACTIONLESS)  # a frame labelled actionless has no action
        self.role = np.empty(self.num_frames, dtype=np.int64)
        self.ep_lo = np.empty(self.num_frames, dtype=np.int64)
        self.ep_hi = np.empty(self.num_frames, dtype=np.int64)
        self.heldout = np.zeros(self.num_frames, dtype=bool)
        self.trained = np.zeros(self.num_frames, dtype=bool)
        self._split(default_heldout, seed)
        for ep in self.episodes:
            self.role[ep.start:ep.end] = int(ep.role)
            self.ep_lo[ep.start:ep.end] = ep.start
            self.ep_hi[ep.start:ep.end] = ep.end
            self.heldout[ep.start:ep.end] = ep.heldout
            self.trained[ep.start:ep.end] = ep.trained
        finite = np.isfinite(self.action).all(axis=1) if self.has_action else np.zeros(self.num_frames, bool)
        #: per-frame action usable as a training target or condition
        self.frame_action_valid = valid & finite & (self.role != int(Quality.ACTIONLESS)) & self.has_action
        self.state_valid = (np.isfinite(self.state).all(axis=1) if self.has_state
                            else np.zeros(self.num_frames, dtype=bool))
        self.feasible = self._feasible(np.arange(self.num_frames))

    # ------------------------------------------------------------------ metadata

    def _read_embodiment_record(self) -> dict[str, Any]:
        path = self.root / EMBODIMENT_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{self.where}: {EMBODIMENT_FILE} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise DataError(f"{self.where}: {EMBODIMENT_FILE} must hold a JSON object")
        return data

    def _episodes(self, meta: Any) -> list[Episode]:
        """Episodes with their roles: the whole dataset's configured role, or the recorder's
        per-episode label (meta/lda_episodes.json), or else the most restrictive per-frame quality."""
        try:
            labels = {int(e["episode_index"]): e["quality"] for e in read_episode_labels(self.root)}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{self.where}: {EPISODES_FILE} is malformed: {err}") from None
        use_frames = self.cfg.role == "quality" and not labels
        if use_frames and QUALITY_KEY not in self.features:
            raise DataError(f"{self.where}: role 'quality' needs per-episode quality labels ({EPISODES_FILE}) or a "
                            f"per-frame {QUALITY_KEY!r} feature, and this dataset has neither; set "
                            f"data.datasets.{self.position}.role to high, low or actionless")
        frame_quality = None
        if use_frames:
            table = self.lerobot.hf_dataset.data
            order = np.argsort(_column(table, "index").reshape(-1), kind="stable")
            frame_quality = _column(table, QUALITY_KEY).reshape(-1)[order].astype(np.int64)
        out = []
        for row in meta.episodes:
            index = int(row["episode_index"])
            start, end = int(row["dataset_from_index"]), int(row["dataset_to_index"])
            where = f"{self.where} episode {index}"
            if not 0 <= start < end <= self.num_frames:
                raise DataError(f"{where}: frame range [{start}, {end}) is outside the data")
            if self.cfg.role != "quality":
                role = Quality[self.cfg.role.upper()]
            elif use_frames:
                role = _role_from_label(int(frame_quality[start:end].max()), where)
            elif index in labels:
                role = _role_from_label(labels[index], where)
            else:
                raise DataError(f"{where}: no quality label in {EPISODES_FILE}; set data.datasets."
                                f"{self.position}.role for the whole dataset")
            out.append(Episode(index, start, end, role))
        out.sort(key=lambda e: e.start)
        return out

    def _listed_episodes(self, field: str) -> set[int] | None:
        """The episode indices in ``data.datasets.<i>.<field>`` (None when unset); an unknown one is refused."""
        listed = getattr(self.cfg, field)
        if listed is None:
            return None
        known = {ep.index for ep in self.episodes}
        unknown = sorted(set(listed) - known)
        if unknown:
            raise DataError(f"data.datasets.{self.position}.{field}: episode(s) {unknown} not in {self.name!r} "
                            f"(it has {len(known)} episodes)")
        return set(listed)

    def _split(self, default_fraction: float, seed: int) -> None:
        cfg = self.cfg
        chosen = self._listed_episodes("heldout_episodes")
        if chosen is None:
            # stratified by role, so held-out data exists for every role with >= 2 episodes
            fraction = default_fraction if cfg.heldout_fraction is None else cfg.heldout_fraction
            rng = np.random.default_rng([seed, 0x4E1D, _stable_hash(self.name)])
            chosen = set()
            for role in Quality:
                group = [ep.index for ep in self.episodes if ep.role == role]
                n = len(group)
                k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
                if k:
                    chosen.update(int(group[i]) for i in rng.choice(n, size=k, replace=False))
        trained = self._listed_episodes("train_episodes")
        if trained is not None and trained & chosen:
            raise DataError(f"data.datasets.{self.position}.train_episodes: episode(s) {sorted(trained & chosen)} "
                            f"are also held out; an episode is trained on or held out, not both")
        for ep in self.episodes:
            ep.heldout = ep.index in chosen
            ep.trained = not ep.heldout and (trained is None or ep.index in trained)

    # ------------------------------------------------------------------ windows

    def window_indices(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Clamped frame indices and padding flags of the windows around anchor ``rows`` (B,)."""
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self.ep_lo[rows][:, None], self.ep_hi[rows][:, None]
        out = {}
        for name, offs in (("history", self.offsets.history), ("chunk", self.offsets.chunk),
                           ("obs", self.offsets.obs), ("future", self.offsets.future)):
            raw = rows[:, None] + offs[None, :]
            out[name] = np.clip(raw, lo, hi - 1)
            out[f"{name}_pad"] = (raw < lo) | (raw >= hi)
        return out

    def _feasible(self, rows: np.ndarray) -> np.ndarray:
        """(B, 4) bool: tasks the role allows and the sample can serve (target and condition present)."""
        w = self.window_indices(rows)
        action_valid = self.sample_action_valid(rows, w)
        any_future = (~w["future_pad"]).any(axis=1)
        allowed = ROLE_TASK_ALLOWED[self.role[rows]]
        out = np.zeros((len(rows), len(Task)), dtype=bool)
        out[:, Task.POLICY] = allowed[:, Task.POLICY] & action_valid
        out[:, Task.FORWARD_DYNAMICS] = allowed[:, Task.FORWARD_DYNAMICS] & action_valid & any_future
        out[:, Task.INVERSE_DYNAMICS] = allowed[:, Task.INVERSE_DYNAMICS] & action_valid & any_future
        out[:, Task.FORECAST] = allowed[:, Task.FORECAST] & any_future
        return out

    def sample_action_valid(self, rows: np.ndarray, w: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """A sample has usable actions when the anchor's and every history action are valid."""
        w = self.window_indices(rows) if w is None else w
        return self.frame_action_valid[rows] & self.frame_action_valid[w["history"]].all(axis=1)

    def rows(self, split: str) -> np.ndarray:
        """Anchor rows of the ``train`` or ``heldout`` episodes."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        return np.flatnonzero(self.heldout if split == "heldout" else self.trained)

    def episodes_of(self, split: str) -> list[Episode]:
        return [ep for ep in self.episodes if (ep.heldout if split == "heldout" else ep.trained)]

    def summary(self) -> dict[str, Any]:
        counts = {ROLE_NAMES[r]: sum(1 for e in self.episodes if e.role == r) for r in Quality}
        return {"name": self.name, "root": str(self.root), "embodiment": self.embodiment, "fps": self.fps,
                "image_key": self.image_key, "frames": self.num_frames, "episodes": len(self.episodes),
                "episodes_by_role": counts, "heldout_episodes": [e.index for e in self.episodes if e.heldout],
                "train_episodes_by_role": {ROLE_NAMES[r]: sum(1 for e in self.episodes if e.trained and e.role == r)
                                           for r in Quality},
                "action_dim": self.action_dim, "state_dim": self.state_dim}


def _stable_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def open_sources(cfgs: Sequence[DatasetConfig], layout: TimeLayout, default_heldout: float,
                 seed: int) -> list[SourceDataset]:
    if not cfgs:
        raise DataError("data.datasets is empty: name at least one local LeRobot dataset")
    sources = [SourceDataset(c, i, layout, default_heldout, seed) for i, c in enumerate(cfgs)]
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"dataset name(s) {dup} appear twice; set data.datasets.N.name to tell them apart")
    return sources


# ---------------------------------------------------------------------------------------------- sampling


def task_weight_vector(weights: TaskWeights) -> np.ndarray:
    return np.array([weights.policy, weights.forward_dynamics, weights.inverse_dynamics, weights.forecast],
                    dtype=np.float64)


@dataclass
class BatchPlan:
    """Who is in one (global or micro) batch: dataset position, anchor row and task per sample."""

    dataset: np.ndarray
    row: np.ndarray
    task: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def slice(self, start: int, stop: int) -> BatchPlan:
        return BatchPlan(self.dataset[start:stop], self.row[start:stop], self.task[start:stop])


class TaskSampler:
    """Deterministic, role-aware, objective-first sampler of global batches (a pure function of seed and step).

    A batch is split by **objective first**: each objective gets its ``task_weights`` share of the batch
    (:meth:`objective_counts`: the floor of it in every batch, the leftover slots by its fractional part;
    an objective no frame can serve gives its share to the others). Each objective then draws its anchors
    from the frames *eligible* for it (its role allows it and the frame can serve it:
    :meth:`SourceDataset._feasible`; policy: high, dynamics: high + low, forecast: all): a dataset in
    proportion to ``weight x`` the sum of its eligible frames' ``role_weights``, a frame within it in
    proportion to its role weight (uniformly when they are equal). Adding low-quality or actionless data
    therefore never takes a sample away from the policy: it changes only what the objectives that may use
    it see. The batch is shuffled (also deterministically), so that micro-batches
    mix objectives. A role at weight 0 is never drawn.
    """

    def __init__(self, sources: Sequence[SourceDataset], weights: TaskWeights, seed: int,
                 split: str = "train", role_weights: RoleWeights | None = None) -> None:
        self.seed = seed
        w = task_weight_vector(weights)
        rw = role_weight_vector(role_weights)
        self.roles = [s.role for s in sources]
        #: per objective, per dataset: the eligible anchor rows and their cumulative role weights
        self.rows_by_task: list[list[np.ndarray]] = []
        self._cum_weights: list[list[np.ndarray]] = []
        #: per objective: the probability of each dataset (zeros where the objective has no frame)
        self.dataset_probs = np.zeros((len(Task), len(sources)))
        trainable = [np.zeros(len(s.role), dtype=bool) for s in sources]
        for t in Task:
            rows_t, cum_t = [], []
            for d, s in enumerate(sources):
                rows = s.rows(split)
                rows = rows[s.feasible[rows, t] & (rw[s.role[rows]] > 0)]
                frame_w = rw[s.role[rows]]
                rows_t.append(rows)
                cum_t.append(np.cumsum(frame_w))
                self.dataset_probs[t, d] = s.cfg.weight * float(frame_w.sum())
                if w[t] > 0:
                    trainable[d][rows] = True
            self.rows_by_task.append(rows_t)
            self._cum_weights.append(cum_t)
        mass = self.dataset_probs.sum(axis=1)
        shares = np.where(mass > 0, w, 0.0)
        if shares.sum() <= 0:
            raise DataError(f"no {split} sample can train any objective with task_weights {w.tolist()} and "
                            f"role_weights {dict(zip(ROLE_NAMES.values(), rw.tolist(), strict=True))} "
                            "(check the roles, the role weights, the held-out split and the episode lengths)")
        self.dataset_probs[mass > 0] /= mass[mass > 0, None]
        #: the share of every batch each objective gets (task_weights renormalised over the objectives served)
        self.task_shares = shares / shares.sum()
        self.sample_counts = [int(m.sum()) for m in trainable]

    def objective_counts(self, batch_size: int, u: float) -> np.ndarray:
        """(tasks,) int64: how many samples of a ``batch_size`` batch each objective gets: at least the floor of
        its share, and the batch's few leftover slots one each to objectives picked with probability equal to
        their fractional parts (systematic sampling at offset ``u`` in [0, 1)), so that the shares hold exactly
        on average even for small batches."""
        exact = self.task_shares * batch_size
        counts = np.floor(exact).astype(np.int64)
        frac = exact - counts
        left = batch_size - int(counts.sum())
        if left:
            edges = np.cumsum(frac)
            picks = np.searchsorted(edges, u + np.arange(left), side="right")
            counts[np.minimum(picks, len(counts) - 1)] += 1
        return counts

    def batch(self, step: int, batch_size: int) -> BatchPlan:
        rng = np.random.default_rng([self.seed, 0xBA7C4, int(step)])
        counts = self.objective_counts(batch_size, float(rng.random()))
        tasks = np.repeat(np.arange(len(Task), dtype=np.int64), counts)
        datasets = np.empty(batch_size, dtype=np.int64)
        rows = np.empty(batch_size, dtype=np.int64)
        for t in np.unique(tasks):
            sel = np.flatnonzero(tasks == t)
            ds = rng.choice(self.dataset_probs.shape[1], size=len(sel), p=self.dataset_probs[t])
            u = rng.random(len(sel))
            for i, d, x in zip(sel, ds, u, strict=True):
                cum = self._cum_weights[t][d]
                k = min(int(np.searchsorted(cum, x * cum[-1], side="right")), len(cum) - 1)
                datasets[i], rows[i] = d, self.rows_by_task[t][d][k]
        order = rng.permutation(batch_size)
        return BatchPlan(datasets[order], rows[order], tasks[order])

    def counts(self, plan: BatchPlan) -> np.ndarray:
        """(roles, tasks) int64: how many samples of ``plan`` have each data role and objective."""
        role = np.empty(len(plan), dtype=np.int64)
        for d in np.unique(plan.dataset):
            sel = plan.dataset == d
            role[sel] = self.roles[int(d)][plan.row[sel]]
        out = np.zeros((len(Quality), len(Task)), dtype=np.int64)
        np.add.at(out, (role, plan.task.astype(np.int64)), 1)
        return out

    def expected_shares(self) -> np.ndarray:
        """(roles, tasks): the expected share of a sample's (role, objective) over all draws (sums to 1)."""
        out = np.zeros((len(Quality), len(Task)))
        for t in Task:
            for d, (rows, cum) in enumerate(zip(self.rows_by_task[t], self._cum_weights[t], strict=True)):
                if len(rows) and self.dataset_probs[t, d] > 0:
                    frame_w = np.diff(cum, prepend=0.0) / cum[-1]
                    np.add.at(out[:, t], self.roles[d][rows], self.task_shares[t] * self.dataset_probs[t, d] * frame_w)
        return out


def role_weight_vector(weights: RoleWeights | None) -> np.ndarray:
    """Per-role sampling weights indexed by :class:`Quality` (all 1.0 when ``weights`` is None)."""
    if weights is None:
        return np.ones(len(Quality), dtype=np.float64)
    by_name = weights.as_dict()
    return np.array([by_name[ROLE_NAMES[r]] for r in Quality], dtype=np.float64)


def shares_dict(shares: np.ndarray) -> dict[str, Any]:
    """JSON form of :meth:`TaskSampler.expected_shares`: expected share of a sample per objective, per role
    and per role x objective."""
    return {
        "objective": {TASK_NAMES[t]: round(float(shares[:, t].sum()), 6) for t in Task},
        "role": {ROLE_NAMES[r]: round(float(shares[r].sum()), 6) for r in Quality},
        "role_objective": {ROLE_NAMES[r]: {TASK_NAMES[t]: round(float(shares[r, t]), 6) for t in Task}
                           for r in Quality},
    }


def effective_samples(counts: np.ndarray) -> dict[str, Any]:
    """JSON form of a (roles, tasks) count table: totals per objective, per role and per role x objective."""
    counts = np.asarray(counts, dtype=np.int64)
    return {
        "total": int(counts.sum()),
        "objective": {TASK_NAMES[t]: int(counts[:, t].sum()) for t in Task},
        "role": {ROLE_NAMES[r]: int(counts[r].sum()) for r in Quality},
        "role_objective": {ROLE_NAMES[r]: {TASK_NAMES[t]: int(counts[r, t]) for t in Task} for r in Quality},
    }


# ---------------------------------------------------------------------------------------------- batches


class LanguageTable:
    """Token embeddings per task string: ``tokens[text]`` (L, D) float32, ``mask[text]`` (L,) bool."""

    def __init__(self, entries: dict[str, tuple[torch.Tensor, torch.Tensor]], dim: int) -> None:
        self.entries = entries
        self.dim = dim

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in texts if t not in self.entries]
        if missing:
            raise KeyError(f"no language embedding for task(s) {sorted(set(missing))[:3]}")
        length = max(int(self.entries[t][1].sum()) for t in texts)
        length = max(length, 1)
        tokens = torch.zeros(len(texts), length, self.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, t in enumerate(texts):
            tok, m = self.entries[t]
            n = int(m.sum())
            tokens[i, :n] = tok[m][:n].float()
            mask[i, :n] = True
        return tokens, mask

    @classmethod
    def encode(cls, texts: Sequence[str], encoder: Any) -> LanguageTable:
        unique = sorted(set(texts))
        entries = {}
        for i in range(0, len(unique), 32):
            chunk = unique[i:i + 32]
            emb = encoder.encode(chunk)
            for j, t in enumerate(chunk):
                entries[t] = (emb.tokens[j].cpu().float(), emb.mask[j].cpu())
        return cls(entries, int(encoder.dim))


def assemble_batch(sources: Sequence[SourceDataset], plan: BatchPlan, model_config: LDAConfig,
                   obs_latents: torch.Tensor, future_latents: torch.Tensor, language: LanguageTable,
                   embodiment_slots: Sequence[int], action_width: int, state_width: int,
                   condition: tuple[torch.Tensor, ...] | None = None) -> dict[str, torch.Tensor]:
    """The ``LDAModel.compute_loss`` batch for ``plan`` (latents already gathered, physical units).

    ``condition``: per-sample VLM tokens and mask (image-conditioned Qwen3-VL, from the latent cache)
    [+ RoPE ids, batch key ``language_positions``, when the tokens feed fine-tuned VLM layers];
    without it the language tokens are looked up per task string in ``language``.

    Actions and states are zero-padded to ``action_width`` / ``state_width``; samples without valid
    actions carry zeros (and ``action_valid`` False); chunk steps past the episode end or with an
    invalid action are flagged in ``action_is_pad``.
    """
    b = len(plan)
    c = model_config
    hist = np.zeros((b, c.time.history_action_steps, action_width), np.float32)
    acts = np.zeros((b, c.time.chunk_size, action_width), np.float32)
    state = np.zeros((b, state_width), np.float32)
    action_valid = np.zeros(b, bool)
    state_valid = np.zeros(b, bool)
    action_is_pad = np.ones((b, c.time.chunk_size), bool)
    future_pad = np.ones((b, c.num_future_frames), bool)
    role = np.zeros(b, np.int64)
    emb = np.zeros(b, np.int64)
    texts = []
    for d in np.unique(plan.dataset):
        sel = np.flatnonzero(plan.dataset == d)
        src = sources[int(d)]
        rows = plan.row[sel]
        w = src.window_indices(rows)
        av = src.sample_action_valid(rows, w)
        action_valid[sel] = av
        role[sel] = src.role[rows]
        emb[sel] = embodiment_slots[int(d)]
        future_pad[sel] = w["future_pad"]
        if src.has_action:
            a = src.action[w["chunk"]]  # (n, chunk, A)
            h = src.action[w["history"]]
            ok = av[:, None, None]
            acts[sel, :, : src.action_dim] = np.where(ok, a, 0.0)
            hist[sel, :, : src.action_dim] = np.where(ok, h, 0.0)
            action_is_pad[sel] = w["chunk_pad"] | ~src.frame_action_valid[w["chunk"]] | ~av[:, None]
        if src.has_state:
            sv = src.state_valid[rows]
            state[sel, : src.state_dim] = np.where(sv[:, None], src.state[rows], 0.0)
            state_valid[sel] = sv
    texts = [sources[int(d)].task_text[int(sources[int(d)].task_index[r])]
             for d, r in zip(plan.dataset, plan.row, strict=True)]
    lang, lang_mask = language.batch(texts) if condition is None else condition[:2]
    extra = {"language_positions": condition[2]} if condition is not None and len(condition) == 3 else {}
    return {
        "embodiment_id": torch.from_numpy(emb),
        "task": torch.from_numpy(plan.task.astype(np.int64)),
        "role": torch.from_numpy(role),
        "obs_latents": obs_latents,
        "future_latents": future_latents,
        "future_latents_is_pad": torch.from_numpy(future_pad),
        "state": torch.from_numpy(state),
        "state_valid": torch.from_numpy(state_valid),
        "history_actions": torch.from_numpy(hist),
        "actions": torch.from_numpy(acts),
        "action_is_pad": torch.from_numpy(action_is_pad),
        "action_valid": torch.from_numpy(action_valid),
        "language": lang,
        "language_mask": lang_mask,
        **extra,
    }
