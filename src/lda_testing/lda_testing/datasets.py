"""Synthetic teleoperation datasets recorded through the recorder's own episode writer (for tests,
benchmarks and the learning check; the data path is exactly the one recorded robot data takes).

A single-arm "reacher": the end effector moves towards a goal with a proportional controller, so the
next action is predictable from the state, the goal (drawn in the image) and the previous actions.
Images (64 x 64) show the end effector as a bright square and the goal as a dim one. ``high``
episodes follow the controller; ``low`` episodes add large random action noise; ``actionless``
episodes keep the video but no actions (as the recorder stores them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lda_common.episode_writer import DatasetStore
from lda_common.robot_config import RobotConfig

IMAGE = 64
TASKS = ("reach the goal", "move the gripper to the marker")


def robot_config(robot: str = "test_arm", hands: int = 1, fps: int = 10, image: int = IMAGE) -> RobotConfig:
    names = ["right", "left"][:hands]
    return RobotConfig.from_dict({
        "robot": robot, "fps": fps,
        "cameras": [{"name": "front", "type": "raw", "width": image, "height": image}],
        "hands": [{"name": n, "fingers": {"type": "width", "joints": [f"{n}_f1", f"{n}_f2"]}} for n in names],
    })


def _draw(pos: np.ndarray, goal: np.ndarray, size: int = IMAGE) -> np.ndarray:
    img = np.full((size, size, 3), 30, np.uint8)

    def square(p: np.ndarray, value: tuple[int, int, int], half: int) -> None:
        half = max(1, half * size // IMAGE)
        cx, cy = (np.clip(p[:2], -1, 1) * 0.45 + 0.5) * (size - 1)
        x0, y0 = int(cx) - half, int(cy) - half
        img[max(0, y0):y0 + 2 * half, max(0, x0):x0 + 2 * half] = value

    square(goal, (40, 200, 40), 5)
    square(pos, (230, 60, 60), 4)
    return img


def trajectory(rng: np.random.Generator, length: int, quality: str, hands: int = 1,
               gain: float = 0.15, image: int = IMAGE) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Images, states (length, 8 * hands) and actions (length, 7 * hands) of one episode."""
    pos = rng.uniform(-0.8, 0.8, size=(hands, 3))
    goal = rng.uniform(-0.8, 0.8, size=(hands, 3))
    quat = np.tile([0.0, 0.0, 0.0, 1.0], (hands, 1))
    grip = np.full((hands, 1), 0.04)
    images, states, actions = [], [], []
    for _t in range(length):
        images.append(_draw(pos[0], goal[0], image))
        states.append(np.concatenate([pos, quat, grip], axis=1).reshape(-1))
        delta = gain * (goal - pos)
        if quality == "low":
            delta = delta + rng.normal(0, 0.08, size=delta.shape)
        rot = np.zeros((hands, 3))
        grip_next = np.where(np.linalg.norm(goal - pos, axis=1, keepdims=True) < 0.15, 0.0, 0.04)
        actions.append(np.concatenate([delta, rot, grip_next], axis=1).reshape(-1))
        pos = pos + delta
        grip = grip_next
    return images, np.asarray(states, np.float32), np.asarray(actions, np.float32)


def record_dataset(root: str | Path, qualities: list[str], length: int = 30, seed: int = 0,
                   robot: str = "test_arm", hands: int = 1, fps: int = 10,
                   action_transform=None, image: int = IMAGE) -> Path:
    """Records one episode per entry of ``qualities`` into a LeRobot dataset at ``root`` (appends if
    it exists). ``action_transform(episode_index, actions) -> actions`` corrupts actions on purpose."""
    cfg = robot_config(robot, hands, fps, image)
    rng = np.random.default_rng(seed)
    store = DatasetStore(root, cfg)
    try:
        for q in qualities:
            images, states, actions = trajectory(rng, length, q, hands, image=image)
            w = store.new_episode()
            if action_transform is not None:
                actions = action_transform(w.index, actions)
            for t in range(length):
                w.add_frame({"front": images[t]}, states[t], t)
            valid = np.ones(length, bool)
            valid[-1] = False  # the last frame has no next frame: no action (as the recorder does)
            w.save(q, TASKS[w.index % len(TASKS)], actions, valid)
    finally:
        store.close()
    return Path(root)
