"""The recorded dataset's schema: LeRobot features, quality ids, and the LDA sidecar files in ``meta/``.

ROS-free and LeRobot-free (training code can import it to select episodes by quality)::

    from lda_common.schema import episodes_with_quality
    high = episodes_with_quality("/data/pick_can", "high")          # -> [0, 3, 4, ...]
    LeRobotDataset("lda/pick_can", root="/data/pick_can", episodes=high, delta_timestamps=...)

Per frame: ``observation.images.<camera>`` (video), ``observation.state`` and ``action`` (float32, names
in ``meta/info.json`` and ``meta/lda_embodiment.json``), ``action_valid`` (bool), ``quality`` (int64,
``Quality`` below), ``tick_index`` (int64, 10 Hz ticks since the episode's first frame; equals
``frame_index`` unless ticks were dropped). Per episode: ``meta/lda_episodes.json``.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .robot_config import RobotConfig

# The one quality vocabulary of the suite: an episode's label when recorded, a sample's data role when trained.
# The recorder's checks, the converter's --quality choices, the dataset's `quality` column, the training roles
# and the QUALITY_* constants of lda_msgs/srv/StopEpisode all come from Quality (a test holds the service to it).


class Quality(enum.IntEnum):
    """Quality label; the value is the id stored in datasets and used as the data role in training batches."""

    HIGH = 0  # clean expert demonstrations: every objective (paper section III-B)
    LOW = 1  # valid but suboptimal actions: dynamics and forecasting, never imitation
    ACTIONLESS = 2  # video and state without actions: forecasting only

    @property
    def label(self) -> str:
        """The name written in datasets, services and on the command line: ``high``, ``low``, ``actionless``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Quality | str | int) -> Quality:
        """A member from itself, its label (case-insensitive) or its id; ``ValueError`` naming the value."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown quality {value!r}; one of {list(QUALITIES)}") from None
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown quality id {value!r}; one of {[int(q) for q in cls]}") from None


#: The labels in id order, for argparse choices and messages.
QUALITIES: tuple[str, ...] = tuple(q.label for q in Quality)


EMBODIMENT_FILE = "meta/lda_embodiment.json"
EPISODES_FILE = "meta/lda_episodes.json"
FORMAT = "lda-teleop-record/1"


def dataset_features(config: RobotConfig) -> dict[str, dict]:
    """LeRobot feature spec for a robot config (the default timestamp/index columns are added by LeRobot)."""
    features: dict[str, dict] = {}
    for cam in config.cameras:
        features[cam.feature_key] = {"dtype": "video", "shape": (cam.height, cam.width, 3),
                                     "names": ["height", "width", "channels"]}
    features["observation.state"] = {"dtype": "float32", "shape": (config.state_dim,),
                                     "names": config.state_names}
    features["action"] = {"dtype": "float32", "shape": (config.action_dim,), "names": config.action_names}
    features["action_valid"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["quality"] = {"dtype": "int64", "shape": (1,), "names": None}
    features["tick_index"] = {"dtype": "int64", "shape": (1,), "names": None}
    return features


def embodiment_record(config: RobotConfig) -> dict[str, Any]:
    """Contents of meta/lda_embodiment.json: everything needed to interpret the vectors without the YAML."""
    return {
        "format": FORMAT,
        "embodiment": config.robot,
        "fps": config.fps,
        "hands": config.hand_names,
        "cameras": {c.name: {"feature": c.feature_key, "height": c.height, "width": c.width, "topic": c.topic}
                    for c in config.cameras},
        "state": {"names": config.state_names, "units": config.state_units,
                  "frame": "canonical EEF frame pose in the robot base frame; quaternion xyzw with w >= 0"},
        "action": {"names": config.action_names, "units": config.action_units,
                   "frame": "per hand: motion from step t to t+1 in the canonical EEF frame at t; "
                            "rotation as rotation vector; fingers: value at t+1",
                   "valid_flag": "action_valid"},
        "quality_ids": {q.label: int(q) for q in Quality},
        "robot_config": config.to_dict(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a torn one (tmp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename or a new file inside it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_episode_labels(root: str | Path) -> list[dict[str, Any]]:
    """Per-episode records of meta/lda_episodes.json (episode_index, quality, task, length, ...)."""
    path = Path(root) / EPISODES_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text())["episodes"]


def episodes_with_quality(root: str | Path, *qualities: str) -> list[int]:
    """Indices of the saved episodes labelled with any of ``qualities``."""
    bad = [q for q in qualities if q not in QUALITIES]
    if bad:
        raise ValueError(f"unknown quality {bad[0]!r}; one of {list(QUALITIES)}")
    return [e["episode_index"] for e in read_episode_labels(root) if e["quality"] in qualities]
