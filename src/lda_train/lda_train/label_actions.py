"""``lda-label-actions``: give actionless episodes actions with the model's inverse-dynamics head.

Most manipulation video has no actions. LDA learns inverse dynamics, p(actions | frames now, frames to
come), so a checkpoint can label such video: for every step ``k`` of an episode it predicts the action
chunk that connects the frames at ``k`` (and its history) with the frames at ``k`` + the model's future
offsets, and takes the chunk's first row as the action of step ``k``. Two passes: the first without
history actions (the model's stand-in tokens, as at an episode's start in training), the second with the
first pass's labels as the history actions every other training sample has.

The result is a **new** dataset (the source is never written): every source episode copied in order,
the labelled ones with the predicted actions and the role ``low`` (never ``high``: they may train the
dynamics, never the policy), each record in ``meta/lda_episodes.json`` naming where its actions came
from (``action_source: inverse_dynamics``, the checkpoint and its SHA-256, the source episode). It is
written with the recorder's durable writer (:mod:`lda_common.episode_writer`): a killed run leaves a
dataset of whole episodes, and the same command continues it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lda_common.config import ConfigError
from lda_common.robot_config import RobotConfig
from lda_common.schema import QUALITIES, read_episode_labels

from .config import DatasetConfig
from .data import DataError, SourceDataset, _column
from .latent_cache import decode_frames

log = logging.getLogger("lda_train.label_actions")

#: keys of a meta/lda_episodes.json record that the writer sets itself
_WRITER_KEYS = {"episode_index", "quality", "quality_id", "task", "length", "action_valid_frames", "saved_at"}


class LabelError(RuntimeError):
    """The labelling cannot start or continue; the message names the cause."""


@dataclass
class LabelSettings:
    passes: int = 2  # 1: no history actions; 2: the first pass's labels as history actions
    num_steps: int | None = None  # Euler steps of the inverse-dynamics flow (None: the checkpoint's)
    seed: int = 0  # flow noise: episode e uses seed + e
    batch_size: int = 64  # steps of one episode per model call


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ActionLabeller:
    """One checkpoint's inverse dynamics over one source dataset (ROS-free; the CLI and the benchmark use it)."""

    def __init__(self, runtime: Any, source: str | Path, settings: LabelSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or LabelSettings()
        if self.settings.passes not in (1, 2):
            raise LabelError(f"passes must be 1 or 2, got {self.settings.passes}")
        config = runtime.config
        try:
            self.source = SourceDataset(DatasetConfig(root=str(source)), 0, config.time, 0.0, seed=0)
        except DataError as err:
            raise LabelError(str(err)) from None
        try:
            self.spec = config.embodiments[config.embodiment_index(self.source.embodiment)]
        except KeyError:
            known = [e.name for e in config.embodiments]
            raise LabelError(f"the checkpoint does not know the dataset's embodiment '{self.source.embodiment}' "
                             f"(it knows {known}); label with a checkpoint trained on this robot") from None
        #: the recorder's tick index per frame (the frame's own index where a dataset has none)
        table = self.source.lerobot.hf_dataset.data
        order = np.argsort(_column(table, "index").reshape(-1), kind="stable")
        self.ticks = (_column(table, "tick_index").reshape(-1).astype(np.int64)[order]
                      if "tick_index" in table.column_names else np.arange(self.source.num_frames))
        if self.source.action_dim and self.source.action_dim != self.spec.action_dim:
            raise LabelError(f"the dataset's actions are {self.source.action_dim}-d, the checkpoint's "
                             f"'{self.spec.name}' actions {self.spec.action_dim}-d")

    # -- prediction ----------------------------------------------------------------------------------
    def episode_latents(self, index: int) -> torch.Tensor:
        """DINO latents (n, gh, gw, C) of every frame of episode ``index``."""
        ep = self.source.episodes[index]
        frames = decode_frames(self.source, np.arange(ep.start, ep.end))
        rgb = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return self.runtime.dino.encode_frames(np.ascontiguousarray(rgb), self.runtime.config.latent_grid)

    @torch.no_grad()
    def predict(self, index: int, latents: torch.Tensor | None = None) -> np.ndarray:
        """Predicted actions (n, action_dim) of episode ``index``, physical units; the last row, which has no
        next frame, is NaN."""
        ep, s = self.source.episodes[index], self.settings
        n = ep.end - ep.start
        latents = self.episode_latents(index) if latents is None else latents
        off = self.source.offsets
        steps = np.arange(n)
        obs_idx = np.clip(steps[:, None] + off.obs[None, :], 0, n - 1)
        fut_idx = np.clip(steps[:, None] + off.future[None, :], 0, n - 1)
        text = self.source.task_text[int(self.source.task_index[ep.start])]
        tokens, mask = self.runtime.encode_instruction(text)
        state = torch.as_tensor(self.source.state[ep.start:ep.end]) if self.source.has_state else None
        labels = np.full((n, self.spec.action_dim), np.nan)
        for p in range(s.passes):
            history = None if p == 0 else self._history(labels, off.history)
            out = []
            for lo in range(0, n - 1, s.batch_size):
                rows = np.arange(lo, min(lo + s.batch_size, n - 1))
                obs = self._observation(latents[obs_idx[rows]], tokens, mask, state, rows,
                                        None if history is None else history[rows])
                chunk = self.runtime.model.inverse_dynamics(obs, latents[fut_idx[rows]], num_steps=s.num_steps,
                                                            seed=s.seed + ep.index * 1000 + lo)
                out.append(chunk[:, 0].double().cpu().numpy())
            labels[: n - 1] = np.concatenate(out)[:, : self.spec.action_dim]
        if not np.isfinite(labels[: n - 1]).all():
            raise LabelError(f"episode {ep.index}: the model predicted NaN/inf actions (a broken checkpoint?)")
        return labels

    def _observation(self, history_latents, tokens, mask, state, rows, history_actions):
        from lda_policy.model import Observation

        b = len(rows)
        return Observation(embodiment=self.spec.name, history_latents=history_latents,
                           language=tokens.expand(b, -1, -1), language_mask=mask.expand(b, -1),
                           state=None if state is None else state[rows, : self.spec.state_dim],
                           history_actions=None if history_actions is None
                           else torch.as_tensor(history_actions, dtype=torch.float32))

    @staticmethod
    def _history(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
        """(n, H, A) history actions from ``labels`` at the model's history offsets; steps before the episode
        start take its first label (as a robot standing still before it moved)."""
        if len(offsets) == 0:
            return None
        n = len(labels)
        idx = np.clip(np.arange(n)[:, None] + offsets[None, :], 0, max(n - 2, 0))
        return labels[idx]

    # -- the new dataset -----------------------------------------------------------------------------
    def write(self, out: str | Path, episodes: Sequence[int] | None = None, checkpoint: str | Path = "",
              progress: bool = False) -> dict[str, Any]:
        """Copy every source episode into the dataset at ``out``, the ``episodes`` (default: the actionless
        ones) with predicted actions and role ``low``. Continues a dataset an earlier run left unfinished.
        Returns a summary (labelled episodes, frames, seconds)."""
        from lda_common.episode_writer import DatasetError, DatasetStore

        src, out = self.source, Path(out).expanduser().absolute()
        if out == src.root or src.root in out.parents:
            raise LabelError(f"--out {out} is the source dataset or inside it: labelling writes a new dataset")
        chosen = self._choose(episodes)
        record = src.embodiment_record.get("robot_config")
        if not record:
            raise LabelError(f"{src.root}: no robot_config in meta/lda_embodiment.json (a dataset this suite did "
                             "not record cannot be copied with its layout)")
        config = RobotConfig.from_dict(record, f"{src.root}/meta/lda_embodiment.json")
        labels_in = {int(r["episode_index"]): r for r in read_episode_labels(src.root)}
        digest = file_sha256(Path(checkpoint) / "model.safetensors") if checkpoint else ""
        try:
            store = DatasetStore(out, config, repo_id=f"local/{out.name}")
        except DatasetError as err:
            raise LabelError(f"cannot open the output dataset: {err}") from None
        started, labelled, frames = time.monotonic(), [], 0
        try:
            done = store.num_episodes
            self._check_resumable(out, done)
            bar = _progress(len(src.episodes), done, progress)
            for i in range(done, len(src.episodes)):
                ep = src.episodes[i]
                base = {k: v for k, v in labels_in.get(ep.index, {}).items() if k not in _WRITER_KEYS}
                base.update({"source_dataset": str(src.root), "source_episode": ep.index})
                if i in chosen:
                    actions = self.predict(i)
                    quality = "low"
                    base.update({"action_source": "inverse_dynamics", "source_quality": QUALITIES[int(ep.role)],
                                 "checkpoint": str(checkpoint), "checkpoint_sha256": digest,
                                 "label_passes": self.settings.passes})
                    labelled.append(ep.index)
                else:
                    actions, quality = src.action[ep.start:ep.end].astype(np.float64), QUALITIES[int(ep.role)]
                self._copy(store, i, config, quality, actions, base, labelled=i in chosen)
                frames += ep.end - ep.start
                bar.update(1)
            bar.close()
        finally:
            store.close()
        seconds = time.monotonic() - started
        return {"out": str(out), "labelled_episodes": labelled, "copied_frames": frames, "seconds": round(seconds, 1)}

    def _choose(self, episodes: Sequence[int] | None) -> set[int]:
        src = self.source
        by_index = {ep.index: i for i, ep in enumerate(src.episodes)}
        if episodes is None:
            chosen = {i for i, ep in enumerate(src.episodes) if QUALITIES[int(ep.role)] == "actionless"}
            if not chosen:
                raise LabelError(f"{src.root} has no actionless episodes; name the episodes to label with --episodes")
            return chosen
        unknown = sorted(set(episodes) - set(by_index))
        if unknown:
            raise LabelError(f"episode(s) {unknown[:5]} are not in {src.root} (it has {len(by_index)}: "
                             f"{min(by_index)}..{max(by_index)})")
        return {by_index[e] for e in episodes}

    def _check_resumable(self, out: Path, done: int) -> None:
        """The first ``done`` episodes of ``out`` must be copies of this source's, in order."""
        for k, rec in enumerate(read_episode_labels(out)[:done]):
            if rec.get("source_dataset") != str(self.source.root) or rec.get("source_episode") != \
                    self.source.episodes[k].index:
                raise LabelError(f"{out} already holds episode {k} from {rec.get('source_dataset')!r} episode "
                                 f"{rec.get('source_episode')!r}, not from {self.source.root} episode "
                                 f"{self.source.episodes[k].index}: choose an empty --out, or the one this "
                                 "source was being labelled into")
        if done:
            log.info("continuing %s: %d of %d episodes already written", out, done, len(self.source.episodes))

    def _copy(self, store, i: int, config: RobotConfig, quality: str, actions: np.ndarray,
              info: dict[str, Any], labelled: bool) -> None:
        """Write source episode ``i`` (every camera, states, tick indices) with ``actions`` as ``quality``."""
        src = self.source
        ep = src.episodes[i]
        rows = np.arange(ep.start, ep.end)
        images = {}
        for cam in config.cameras:
            frames = decode_frames(src, rows, key=cam.feature_key)
            images[cam.name] = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        writer = store.new_episode()
        for k, row in enumerate(rows):
            writer.add_frame({name: img[k] for name, img in images.items()}, src.state[row], int(self.ticks[row]))
        # labelled: every step but the last (no next frame); copied: what the source marked valid
        valid = np.isfinite(actions).all(axis=1) if labelled else src.frame_action_valid[rows]
        writer.save(quality, src.task_text[int(src.task_index[ep.start])], np.nan_to_num(actions), valid, info)


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="episode", desc="label", disable=not enabled, smoothing=0.1)


def load_runtime(checkpoint: str | Path, dino_path: str | Path, language: str = "minilm",
                 language_path: str | None = None, device: str = "cpu") -> Any:
    """The model with its encoders, as the deployment loads it; errors name the checkpoint or encoder."""
    from lda_policy.deploy.runtime import ModelRuntime, RuntimeLoadError

    try:
        return ModelRuntime(checkpoint, dino_path, language, language_path, device)
    except (RuntimeLoadError, ConfigError, OSError) as err:
        raise LabelError(str(err)) from None


__all__ = ["ActionLabeller", "LabelError", "LabelSettings", "file_sha256", "load_runtime"]
