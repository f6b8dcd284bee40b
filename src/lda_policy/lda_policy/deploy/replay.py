"""Replay recorded episodes through forward dynamics: predicted vs. observed DINO latents, ROS-free.

A rosbag2 recording (MCAP or sqlite3, read with ``rosbags`` through the recorder's ``bag_io``) is
aligned to the robot config's control grid exactly as the recorder and the bag converter align it
(:class:`lda_common.alignment.FrameSync`, the first camera as reference); states and the
recorded actions come from the hand-centric action space (action t = motion from state t to t+1).
At every ``predict_every`` ticks the forward-dynamics objective predicts the future frames' latents
from the history frames, the state, the history actions and the *recorded* action chunk; each
prediction is compared with the frames that really followed (:func:`~lda_policy.deploy.judge.latent_distance`).

The same windows give the safety calibration (:func:`calibration_distances`) and the RViz/Foxglove
pictures (:class:`LatentPCA` colouring, :func:`heatmap`, :func:`panel`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lda_common.geometry import HandsState, HandState

from .judge import latent_distance
from .robot import ConfigError, RobotInterface
from .runtime import ModelRuntime, RuntimeLoadError, set_torch_threads
from .safety import CALIBRATION_FILE, CalibrationError, SafetyCalibration


class ReplayError(RuntimeError):
    """A bag that cannot be replayed (missing topics, no complete frame); the message says why."""


@dataclass
class ReplayFrame:
    tick: int  # index on the control grid since the first camera frame
    stamp: float  # grid time [s] (bag stamps)
    image: np.ndarray  # (H, W, 3) uint8 RGB
    hands: HandsState  # measured EEF link poses + fingers
    state: np.ndarray  # observation.state


@dataclass
class Episode:
    frames: list[ReplayFrame]
    actions: np.ndarray  # (N, action_dim) recorded actions (motion to the next frame)
    valid: np.ndarray  # (N,) bool: action t exists (frame t+1 is the next tick)
    instruction: str | None = None
    rejected: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def read_episode(bag: str | Path, robot: RobotInterface) -> Episode:
    """All complete control ticks of a bag (camera ``robot.camera``), with states and recorded actions."""
    from lda_common.alignment import BadSample, CommandLog, FrameSync
    from lda_common.bag_io import BagError, bag_info, read_messages
    from lda_common.messages import deserialize, fingers_from_joint_state, pose_from_msg, stamp_ns

    from .robot import ImageError

    cfg = robot.config
    cam = robot.camera
    try:
        info = bag_info(bag)
    except BagError as err:
        raise ReplayError(str(err)) from None
    streams = {cam.topic: ("camera", None)}
    for h in cfg.hands:
        streams[h.pose_topic] = ("pose", h)
        streams[h.gripper_topic] = ("fingers", h)
    command_topics = {h.gripper_command_topic: h for h in cfg.hands if h.gripper_command_topic}
    commands = {h.name: CommandLog() for h in command_topics.values()}  # stamps in ns
    missing = [t for t in [*streams, *command_topics] if t not in info.topics]
    if missing:
        raise ReplayError(f"bag {bag} lacks topic(s) {missing} of robot '{cfg.robot}' (has {sorted(info.topics)})")
    ids = {t: (k if k == "camera" else f"{k}:{h.name}") for t, (k, h) in streams.items()}
    rejected: dict[str, int] = {}

    def reject(stream: str, _stamp: int, _reason: str) -> None:
        rejected[stream] = rejected.get(stream, 0) + 1

    sync = FrameSync(list(ids.values()), "camera", period_ns=round(1e9 / cfg.fps),
                     tolerance_ns=round(cfg.tolerance_s * 1e9), max_latency_ns=round(cfg.max_latency_s * 1e9),
                     on_reject=reject)
    ticks = []
    instruction = None
    topics = set(streams) | set(command_topics) | {cfg.instruction_topic}
    for topic, msgtype, _log_ns, cdr in read_messages(bag, topics):
        try:
            msg = deserialize(cdr, msgtype)
            if topic == cfg.instruction_topic:
                instruction = str(msg.data).strip() or instruction
                continue
            if topic in command_topics:  # the recorded finger action is the command in force
                hand = command_topics[topic]
                commands[hand.name].add(stamp_ns(msg), fingers_from_joint_state(msg, hand.fingers))
                continue
            kind, hand = streams[topic]
            if kind == "camera":
                value = robot.image_to_rgb(msg)  # converted up front: the recorder's checks and resize
            elif kind == "pose":
                value = pose_from_msg(msg, cfg.quaternion_tolerance, cfg.base_frame)
            else:
                value = fingers_from_joint_state(msg, hand.fingers)
        except (BadSample, ImageError):
            reject(ids.get(topic, topic), 0, "")
            continue
        sync.push(ids[topic], stamp_ns(msg), value)
        ticks += sync.poll()
    ticks += sync.poll(final=True)
    frames, starts_ns = [], []
    for tick in ticks:
        if not tick.complete:
            continue
        starts_ns.append(tick.stamp_ns)
        hands = {}
        for h in cfg.hands:
            pos, quat = tick.values[f"pose:{h.name}"]
            hands[h.name] = HandState.make(pos, quat, tick.values[f"fingers:{h.name}"])
        frames.append(ReplayFrame(tick.index, tick.stamp_ns * 1e-9, tick.values["camera"], hands,
                                  robot.state_vector(hands)))
    if len(frames) < 2:
        raise ReplayError(f"bag {bag} has {len(frames)} complete control tick(s) for robot '{cfg.robot}'; need >= 2")
    idx = np.array([f.tick for f in frames])
    actions, valid = robot.space.actions_from_states(np.stack([f.state for f in frames]), np.diff(idx) == 1)
    for hand, log in commands.items():
        robot.space.put_commanded_fingers(actions, valid, hand, starts_ns, log, round(cfg.tolerance_s * 1e9))
    return Episode(frames, actions, valid, instruction, rejected)


# ---------------------------------------------------------------------------------------------- windows


@dataclass
class Prediction:
    """One forward-dynamics prediction from frame ``position`` of an episode, and what really happened."""

    position: int  # index into Episode.frames of the observation
    stamp: float
    predicted: torch.Tensor  # (F, gh, gw, C)
    targets: list[int | None]  # per future frame: index into Episode.frames, None past the end / in a gap
    observed: list[torch.Tensor | None]
    distances: list[float]  # NaN where no real frame
    patch_errors: list[np.ndarray | None]
    surprises: list[float]  # NaN without calibration
    chunk_targets: dict[str, np.ndarray] = field(default_factory=dict)  # hand -> (H, 3) EEF targets of the chunk


class DynamicsReplay:
    """Runs forward dynamics over an episode with its recorded actions (see the module docstring)."""

    def __init__(self, runtime: ModelRuntime, robot: RobotInterface, episode: Episode, instruction: str,
                 calibration: SafetyCalibration | None = None, num_samples: int = 1, seed: int = 0,
                 num_steps: int | None = None) -> None:
        robot.check_model(runtime.config)
        self.num_steps = num_steps or runtime.num_steps
        self.runtime, self.robot, self.episode = runtime, robot, episode
        self.instruction = instruction
        self.calibration = calibration
        self.num_samples, self.seed = num_samples, seed
        t = runtime.config.time
        fps = robot.config.fps
        self.obs_steps = [int(round(o * fps)) for o in t.obs_offsets_s]
        self.future_steps = [int(round(o * fps)) for o in t.future_offsets_s]
        self.future_offsets = t.future_offsets_s
        self.chunk = t.chunk_size
        self.hist = t.history_action_steps
        self._by_tick = {f.tick: i for i, f in enumerate(episode.frames)}
        self._latents: dict[int, torch.Tensor] = {}

    def latent(self, position: int) -> torch.Tensor:
        """DINO latents of frame ``position`` (model grid), encoded once."""
        if position not in self._latents:
            self._latents[position] = self.runtime.encode_image(self.episode.frames[position].image)
        return self._latents[position]

    def _at(self, position: int, steps: int) -> int | None:
        return self._by_tick.get(self.episode.frames[position].tick + steps)

    def _history_frames(self, position: int) -> list[int] | None:
        """Frames of the observation history (the first frame stands in before the episode start);
        None when one falls in a gap of the recording."""
        ep = self.episode
        frames = []
        for s in self.obs_steps:
            j = self._at(position, s)
            frames.append(0 if j is None and ep.frames[position].tick + s < ep.frames[0].tick else j)
        return None if any(j is None for j in frames) else frames

    def can_predict(self, position: int) -> bool:
        """Whether the history frames and the chunk of ``chunk_size`` recorded actions from ``position``
        exist (no gap)."""
        end = position + self.chunk
        if end > len(self.episode) or self._history_frames(position) is None:
            return False
        ticks = [f.tick for f in self.episode.frames[position:end]]
        return bool(self.episode.valid[position:end].all()) and ticks == list(range(ticks[0], ticks[0] + self.chunk))

    def predict(self, position: int) -> Prediction:
        ep, rt = self.episode, self.runtime
        hist_frames = self._history_frames(position)
        if hist_frames is None:
            raise ReplayError(f"frame {position}: a history frame falls in a gap of the recording")
        history = torch.stack([self.latent(j) for j in hist_frames])[None]
        hist_actions = None
        if self.hist and position >= self.hist and ep.valid[position - self.hist:position].all():
            hist_actions = ep.actions[position - self.hist:position]
        elif not self.hist:
            hist_actions = np.zeros((0, self.robot.action_dim))
        actions = ep.actions[position:position + self.chunk]
        obs = rt.observation(self.robot.embodiment, history, self.instruction, ep.frames[position].state,
                             hist_actions, image=ep.frames[position].image)
        predicted = rt.forward_dynamics(obs, actions, seed=self.seed, num_steps=self.num_steps,
                                        samples=self.num_samples)
        targets, observed, dists, patches, surprises = [], [], [], [], []
        for f, s in enumerate(self.future_steps):
            j = self._at(position, s)
            targets.append(j)
            if j is None:
                observed.append(None)
                dists.append(float("nan"))
                patches.append(None)
                surprises.append(float("nan"))
                continue
            obs_lat = self.latent(j)
            d, patch = latent_distance(obs_lat, predicted[f], rt.latent_mid, rt.latent_half)
            observed.append(obs_lat)
            dists.append(d)
            patches.append(patch)
            surprises.append(self.calibration.surprise(f, d) if self.calibration else float("nan"))
        plan = self.robot.plan(actions, ep.frames[position].hands, 0, ep.frames[position].stamp, self.robot.dt)
        return Prediction(position, ep.frames[position].stamp, predicted, targets, observed, dists, patches, surprises,
                          {h: t.positions.copy() for h, t in plan.hands.items()})

    def predictions(self, every: int = 5) -> Iterator[Prediction]:
        """Predictions from every ``every``-th frame that has a full recorded chunk."""
        for position in range(0, len(self.episode), max(1, every)):
            if self.can_predict(position):
                yield self.predict(position)


def calibration_distances(replays: list[DynamicsReplay], every: int = 2) -> np.ndarray:
    """(windows, future frames) latent distances over episodes (NaN where the real frame is missing)."""
    rows = [p.distances for r in replays for p in r.predictions(every)]
    if not rows:
        raise ReplayError("no window with a full recorded action chunk in the given episodes")
    return np.asarray(rows, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- pictures


class LatentPCA:
    """Three principal components of DINO patch latents mapped to RGB (fit on observed latents)."""

    def __init__(self, latents: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(latents.detach().cpu() if isinstance(latents, torch.Tensor) else latents, dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])
        self.mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[:3]
        if len(self.components) < 3:  # fewer samples than 3: pad with zero components
            self.components = np.vstack([self.components, np.zeros((3 - len(self.components), x.shape[1]))])
        proj = (x - self.mean) @ self.components.T
        self.low = np.quantile(proj, 0.02, axis=0)
        self.high = np.quantile(proj, 0.98, axis=0)

    def rgb(self, grid: torch.Tensor | np.ndarray) -> np.ndarray:
        """(gh, gw, C) latents -> (gh, gw, 3) uint8 colours."""
        g = np.asarray(grid.detach().cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float64)
        proj = (g.reshape(-1, g.shape[-1]) - self.mean) @ self.components.T
        span = np.maximum(self.high - self.low, 1e-9)
        col = np.clip((proj - self.low) / span, 0.0, 1.0)
        return (col.reshape(*g.shape[:-1], 3) * 255).round().astype(np.uint8)


def heatmap(errors: np.ndarray, vmax: float) -> np.ndarray:
    """(gh, gw) non-negative errors -> (gh, gw, 3) uint8 with matplotlib's 'inferno' (0 black .. vmax yellow)."""
    from matplotlib import colormaps

    e = np.clip(np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=0.0) / max(vmax, 1e-9), 0.0, 1.0)
    return (colormaps["inferno"](e)[..., :3] * 255).round().astype(np.uint8)


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, 3) to (size, size, 3) (patch grids stay crisp)."""
    h, w = img.shape[:2]
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return img[rows][:, cols]


def panel(camera: np.ndarray, observed_rgb: np.ndarray, predicted_rgb: np.ndarray | None,
          error_rgb: np.ndarray | None, tile: int = 160, gap: int = 4) -> np.ndarray:
    """One picture: [camera | observed latents (PCA) | predicted latents (PCA) | error heat-map]."""
    blank = np.zeros((tile, tile, 3), dtype=np.uint8)
    tiles = [_upscale(camera, tile), _upscale(observed_rgb, tile),
             _upscale(predicted_rgb, tile) if predicted_rgb is not None else blank,
             _upscale(error_rgb, tile) if error_rgb is not None else blank]
    out = np.full((tile, 4 * tile + 3 * gap, 3), 40, dtype=np.uint8)
    for k, t in enumerate(tiles):
        out[:, k * (tile + gap):k * (tile + gap) + tile] = t
    return out


# ---------------------------------------------------------------------------------------------- calibration CLI

CALIBRATE_DOC = """Calibrate the judge's surprise on training recordings: writes ``safety_calibration.json``.

    ros2 run lda_policy calibrate_safety --checkpoint CKPT --dino-path DINO \
        --robot-config config/robots/sim_panda.yaml --bag rec/ep0 --bag rec/ep1 ...

Each bag is replayed through the checkpoint's forward-dynamics objective with its recorded actions
(:mod:`lda_policy.deploy.replay`); the distance between predicted and real DINO latents of every
future frame is collected over all windows, and its mean and standard deviation per future frame are
stored next to the checkpoint (``<checkpoint>/safety_calibration.json`` unless ``--output``). Use
bags of the data the checkpoint was trained (or fine-tuned) on, and the judge's settings
(``--num-steps``, ``--num-samples``, ``--seed`` must equal the model host's ``judge_num_steps``,
``judge_num_samples`` and ``judge_seed``; they are stored and checked at start-up)."""


def calibrate(runtime: ModelRuntime, robot: RobotInterface, bags: list[str | Path], instruction: str = "",
              every: int = 2, num_samples: int = 1, seed: int = 0, num_steps: int = 1) -> SafetyCalibration:
    replays = []
    for bag in bags:
        episode = read_episode(bag, robot)
        text = instruction or episode.instruction
        if not text:
            raise ReplayError(f"bag {bag} has no instruction on {robot.config.instruction_topic}; pass --instruction")
        replays.append(DynamicsReplay(runtime, robot, episode, text, None, num_samples, seed, num_steps))
    distances = calibration_distances(replays, every)
    return SafetyCalibration.from_distances(distances, runtime.config.time.future_offsets_s, num_steps,
                                            num_samples, seed, source=", ".join(str(b) for b in bags))


def calibrate_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="calibrate_safety", description=CALIBRATE_DOC.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dino-path", required=True)
    ap.add_argument("--robot-config", required=True)
    ap.add_argument("--bag", action="append", required=True, help="training recording (repeat for more)")
    ap.add_argument("--camera", default="")
    ap.add_argument("--instruction", default="", help="task text when a bag has none recorded")
    ap.add_argument("--language-encoder", default="minilm", choices=["minilm", "qwen3vl"])
    ap.add_argument("--language-encoder-path", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-steps", type=int, default=1, help="Euler steps of the judge's forward dynamics "
                    "(the model host's judge_num_steps, default 1)")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=2, help="predict from every n-th control tick")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", default="", help=f"output file (default: <checkpoint>/{CALIBRATION_FILE})")
    a = ap.parse_args(argv)
    try:
        set_torch_threads(a.threads)
        robot = RobotInterface(a.robot_config, a.camera)
        runtime = ModelRuntime(a.checkpoint, a.dino_path, a.language_encoder, a.language_encoder_path or None,
                               a.device)
        cal = calibrate(runtime, robot, a.bag, a.instruction, a.every, a.num_samples, a.seed, a.num_steps)
    except (RuntimeLoadError, ConfigError, ReplayError, CalibrationError) as err:
        print(f"calibrate_safety: error: {err}", file=sys.stderr)
        return 1
    out = cal.save(a.output or Path(a.checkpoint) / CALIBRATION_FILE)
    table = "\n".join(f"  +{o:.2f} s: distance mean {m:.4f}, std {s:.4f}"
                      for o, m, s in zip(cal.future_offsets_s, cal.mean, cal.std, strict=True))
    print(f"wrote {out} from {cal.num_windows} windows of {len(a.bag)} bag(s):\n{table}")
    print("the judge's surprise is (distance - mean) / std per future frame")
    return 0
