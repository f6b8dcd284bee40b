"""Data side of fine-tuning an imported authors' checkpoint: LeRobot samples -> the authors' training batch.

The role-aware sampling is the suite's own (:class:`~lda_train.data.TaskSampler`: ``high`` episodes train
all four objectives, ``low`` ones the dynamics objectives and forecasting, never the policy, ``actionless``
ones forecasting only); every sample's objective becomes the authors' task name
(policy / forward_dynamics / inverse_dynamics / video_gen) and the batch takes the form their
``FlowmatchingActionHead.forward`` reads (docs/reference/model.md, "The upstream option"):

- frames: the current frames at t - 0.5 s and t (``obs_horizon`` of them, 0.5 s apart) and the future
  frame at t + 0.5 s, padded to a square with the ImageNet-mean colour and resized to ``image_size``
  (PIL, uint8), as their data pipeline does; the head runs DINOv3 on them itself;
- the VLM turn: every current frame then the checkpoint's prompt with the episode's task string;
- state: one row per current frame, ``[sin q, cos q]`` of ``observation.state`` (or raw), zero-padded;
- actions: min-max normalised per dimension to [-1, 1] with the fine-tuning data's statistics (a
  dimension with min = max becomes 0), zero-padded to the checkpoint's width (138) with ``action_mask``
  marking the real dimensions of the real (not past-the-episode) steps; history actions likewise;
- embodiment: the slot configured for the dataset's embodiment, else the authors' slot for it, else a
  free one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lda_common.schema import Quality
from lda_policy.model import Task, TimeLayout

from .data import BatchPlan, DataError, SourceDataset

#: our objective -> the authors' task name
UPSTREAM_TASK = {Task.POLICY: "policy", Task.FORWARD_DYNAMICS: "forward_dynamics",
                 Task.INVERSE_DYNAMICS: "inverse_dynamics", Task.FORECAST: "video_gen"}
#: embodiment slots the published checkpoints use (docs/guides/upstream-checkpoints.md, section 5)
AUTHORS_SLOTS = {"gr1_humanoid": 24, "gr1": 24}
IMAGENET_MEAN_RGB = (124, 116, 104)  # round(255 x (0.485, 0.456, 0.406)): the authors' square padding colour
FUTURE_OFFSET_S = 0.5  # future_observation_indices = [5] at 10 Hz
CONTROL_HZ = 10.0


def upstream_layout(config: Any) -> TimeLayout:
    """The authors' sample layout: ``history_actions`` actions before t, a chunk of ``action_horizon`` from
    t at 10 Hz, ``obs_horizon`` current frames 0.5 s apart ending at t, one future frame at t + 0.5 s."""
    obs = tuple(round(-0.5 * k, 6) + 0.0 for k in range(config.obs_horizon - 1, -1, -1))
    return TimeLayout(control_hz=CONTROL_HZ, chunk_size=config.action_horizon,
                      history_action_steps=config.history_actions, obs_offsets_s=obs,
                      future_offsets_s=(FUTURE_OFFSET_S,))


def assign_slots(sources: Sequence[SourceDataset], max_embodiments: int,
                 configured: Mapping[str, int]) -> dict[str, int]:
    """Embodiment name -> slot: ``upstream.embodiment_slots``, else the authors' slot, else the highest free."""
    for name, slot in configured.items():
        if not 0 <= int(slot) < max_embodiments:
            raise DataError(f"upstream.embodiment_slots.{name}: slot {slot} is out of range; the checkpoint has "
                            f"{max_embodiments} embodiment slots (0..{max_embodiments - 1})")
    names = list(dict.fromkeys(s.embodiment for s in sources))
    slots = {n: int(configured[n]) for n in names if n in configured}
    taken = set(configured.values()) | set(slots.values())
    for name in names:
        if name in slots:
            continue
        if name in AUTHORS_SLOTS and AUTHORS_SLOTS[name] not in taken:
            slots[name] = AUTHORS_SLOTS[name]
        else:
            free = [k for k in range(max_embodiments - 1, -1, -1)
                    if k not in taken and k not in AUTHORS_SLOTS.values()]
            if not free:
                raise DataError(f"no free embodiment slot for {name!r}: all {max_embodiments} are taken; set "
                                "upstream.embodiment_slots")
            slots[name] = free[0]
        taken.add(slots[name])
    shared = {}
    for name, slot in slots.items():
        shared.setdefault(slot, []).append(name)
    clash = {k: v for k, v in shared.items() if len(v) > 1}
    if clash:
        raise DataError(f"upstream.embodiment_slots: embodiments share a slot: {clash}")
    return slots


def state_width(source: SourceDataset, transform: str) -> int:
    return source.state_dim * (2 if transform == "sincos" else 1)


def check_dimensions(sources: Sequence[SourceDataset], config: Any, transform: str) -> None:
    """Refuses datasets the checkpoint cannot take, naming the dataset and the sizes."""
    if config.num_views != 1:
        raise DataError(f"the checkpoint expects {config.num_views} camera views; fine-tuning with lda-train "
                        "supports one view (data.datasets.N.image_key)")
    dims: dict[str, tuple[int, int]] = {}
    for s in sources:
        if s.action_dim > config.action_dim:
            raise DataError(f"{s.where}: {s.action_dim}-d actions exceed the checkpoint's {config.action_dim}-d "
                            "padded action space")
        width = state_width(s, transform)
        if width > config.state_dim:
            how = f"[sin, cos] of {s.state_dim}-d observation.state" if transform == "sincos" else \
                "observation.state"
            raise DataError(f"{s.where}: the state ({how}) is {width}-d, above the checkpoint's {config.state_dim}-d "
                            "state input" + (" (upstream.state=raw halves it)" if transform == "sincos" else ""))
        if s.has_action:
            seen = dims.setdefault(s.embodiment, (s.action_dim, s.state_dim))
            if seen != (s.action_dim, s.state_dim):
                raise DataError(f"{s.where}: embodiment {s.embodiment!r} has {s.action_dim}-d actions and "
                                f"{s.state_dim}-d states here, {seen[0]} / {seen[1]} in another dataset")


def action_statistics(sources: Sequence[SourceDataset], split: str = "train") -> dict[str, dict[str, Any]]:
    """Per embodiment, the authors' statistics layout ``{"action": {"min", "max", "mask"}}`` over every valid
    action of the ``split`` episodes (high and low: every action the model is trained on)."""
    by_name: dict[str, list[np.ndarray]] = {}
    for s in sources:
        if not s.has_action:
            continue
        rows = s.rows(split)
        by_name.setdefault(s.embodiment, []).append(s.action[rows[s.frame_action_valid[rows]]])
    out = {}
    for name, parts in by_name.items():
        a = np.concatenate(parts)
        if not len(a):
            continue
        out[name] = {"action": {"min": a.min(axis=0).astype(float).tolist(),
                                "max": a.max(axis=0).astype(float).tolist(),
                                "mask": [True] * a.shape[1]}}
    return out


def normalize(actions: np.ndarray, stats: Mapping[str, Any] | None, width: int) -> np.ndarray:
    """(..., d) physical -> (..., width) in [-1, 1], zero-padded; min = max dimensions become 0."""
    out = np.zeros((*actions.shape[:-1], width), np.float32)
    if stats is None or actions.shape[-1] == 0:
        return out
    low = np.asarray(stats["action"]["min"], np.float64)
    high = np.asarray(stats["action"]["max"], np.float64)
    span = high - low
    a = np.asarray(actions, np.float64)
    out[..., :a.shape[-1]] = np.where(span > 0, 2.0 * (a - low) / np.where(span > 0, span, 1.0) - 1.0, 0.0)
    return out


def square_resize(frames: torch.Tensor, size: int) -> np.ndarray:
    """(N, 3, H, W) float [0, 1] (lerobot's decoding) -> (N, size, size, 3) uint8: padded to a square with the
    ImageNet-mean colour, then resized with PIL's default filter (bicubic), as the authors' data pipeline."""
    from PIL import Image

    x = (frames.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, h, w, _ = x.shape
    side = max(h, w)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = x[i]
        if h != w:
            canvas = np.empty((side, side, 3), np.uint8)
            canvas[:] = IMAGENET_MEAN_RGB
            top, left = (side - h) // 2, (side - w) // 2
            canvas[top:top + h, left:left + w] = img
            img = canvas
        out[i] = img if side == size else np.asarray(Image.fromarray(img).resize((size, size)))
    return out


def vlm_inputs(processor: Any, prompt: str, frames: np.ndarray, instructions: Sequence[str]) -> dict[str, Any]:
    """The Qwen3-VL processor's batch: one user turn per sample holding every current frame, then the prompt
    with the instruction, the generation prompt added, left padded (as ``UpstreamPolicy.vlm_inputs``)."""
    from PIL import Image

    messages = []
    for sample, instruction in zip(frames, instructions, strict=True):
        content: list[dict[str, Any]] = [{"type": "image", "image": Image.fromarray(np.asarray(f))} for f in sample]
        content.append({"type": "text", "text": prompt.replace("{instruction}", instruction)})
        messages.append([{"role": "user", "content": content}])
    return processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                         return_tensors="pt", processor_kwargs={"padding": True})


@dataclass
class UpstreamBatch:
    """One (micro-)batch: the head's tensors, the VLM's processor inputs, the authors' task names, the roles."""

    tensors: dict[str, torch.Tensor]
    vlm: dict[str, torch.Tensor]
    tasks: list[str]
    roles: np.ndarray

    def __len__(self) -> int:
        return len(self.tasks)


class UpstreamData:
    """Binds the sources to a checkpoint's config: frames, statistics, slots; builds :class:`UpstreamBatch`."""

    def __init__(self, sources: Sequence[SourceDataset], config: Any, settings: Any, processor: Any,
                 statistics: Mapping[str, Any], slots: Mapping[str, int]) -> None:
        self.sources = list(sources)
        self.config = config
        self.settings = settings
        self.processor = processor
        self.statistics = dict(statistics)
        self.slots = dict(slots)
        self.n_obs = config.obs_horizon
        self.frames: list[np.ndarray | None] = [None] * len(self.sources)

    def preload(self, progress: bool = False) -> int:
        """Decodes every frame of the training and held-out episodes once (uint8, ``image_size``); returns bytes."""
        from .latent_cache import decode_frames

        total = 0
        size = self.settings.image_size
        for i, s in enumerate(self.sources):
            store = np.zeros((s.num_frames, size, size, 3), np.uint8)
            rows = np.flatnonzero(s.trained | s.heldout)
            for start in range(0, len(rows), 64):
                chunk = rows[start:start + 64]
                store[chunk] = square_resize(decode_frames(s, chunk), size)
            self.frames[i] = store
            total += store.nbytes
        return total

    def _window_frames(self, d: int, rows: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
        idx = np.concatenate([w["obs"], w["future"]], axis=1)  # clamped to the episode (lerobot's padding)
        return self.frames[d][idx]

    def batch(self, plan: BatchPlan, decoded: torch.Tensor | None = None) -> UpstreamBatch:
        """The batch of ``plan``; ``decoded``: (B, n_obs + 1, 3, H, W) float frames when not preloaded."""
        c, b = self.config, len(plan)
        frames = np.zeros((b, self.n_obs + 1, self.settings.image_size, self.settings.image_size, 3), np.uint8)
        state = np.zeros((b, self.n_obs, c.state_dim), np.float32)
        actions = np.zeros((b, c.action_horizon, c.action_dim), np.float32)
        mask = np.zeros((b, c.action_horizon, c.action_dim), np.float32)
        history = np.zeros((b, c.history_actions, c.action_dim), np.float32)
        emb = np.zeros(b, np.int64)
        roles = np.zeros(b, np.int64)
        for d in np.unique(plan.dataset):
            sel = np.flatnonzero(plan.dataset == d)
            src = self.sources[int(d)]
            rows = plan.row[sel]
            w = src.window_indices(rows)
            roles[sel] = src.role[rows]
            emb[sel] = self.slots[src.embodiment]
            if decoded is None:
                frames[sel] = self._window_frames(int(d), rows, w)
            if src.has_state:
                raw = src.state[w["obs"]]  # (n, T, S): one state row per current frame
                ok = src.state_valid[w["obs"]].all(axis=1)
                s = np.concatenate([np.sin(raw), np.cos(raw)], -1) if self.settings.state == "sincos" else raw
                state[sel, :, :s.shape[-1]] = np.where(ok[:, None, None], s, 0.0)
            if not src.has_action:
                continue
            stats = self.statistics.get(src.embodiment)
            valid = src.sample_action_valid(rows, w)
            chunk = normalize(src.action[w["chunk"]], stats, c.action_dim)
            actions[sel] = np.where(valid[:, None, None], chunk, 0.0)
            step_ok = valid[:, None] & ~w["chunk_pad"] & src.frame_action_valid[w["chunk"]]
            mask[sel, :, :src.action_dim] = step_ok[:, :, None]
            if c.history_actions:
                hist = normalize(src.action[w["history"]], stats, c.action_dim)
                history[sel] = np.where(valid[:, None, None], hist, 0.0)
        if decoded is not None:
            frames = square_resize(decoded.flatten(0, 1), self.settings.image_size).reshape(frames.shape)
        tasks = [UPSTREAM_TASK[Task(int(t))] for t in plan.task]
        check_roles(roles, tasks)
        texts = [self.sources[int(d)].task_text[int(self.sources[int(d)].task_index[r])]
                 for d, r in zip(plan.dataset, plan.row, strict=True)]
        vlm = vlm_inputs(self.processor, c.vlm_prompt, frames[:, :self.n_obs], texts)
        tensors = {"curr_images": torch.from_numpy(frames[:, :self.n_obs]),
                   "future_images": torch.from_numpy(frames[:, self.n_obs:]),
                   "state": torch.from_numpy(state), "actions": torch.from_numpy(actions),
                   "action_mask": torch.from_numpy(mask), "embodiment": torch.from_numpy(emb)}
        if c.history_actions:
            tensors["history_actions"] = torch.from_numpy(history)
        return UpstreamBatch(tensors, dict(vlm), tasks, roles)


def check_roles(roles: np.ndarray, tasks: Sequence[str]) -> None:
    """The role rule, checked again on every batch: low-quality samples never train the policy, actionless
    samples train video_gen only (the sampler already guarantees it; this guards the mapping)."""
    for role, task in zip(roles, tasks, strict=True):
        if (role == Quality.LOW and task == "policy") or (role == Quality.ACTIONLESS and task != "video_gen"):
            raise AssertionError(f"role rule broken: a {Quality(int(role)).name.lower()} sample assigned {task!r}")
