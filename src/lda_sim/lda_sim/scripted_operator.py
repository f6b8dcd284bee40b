"""ROS-free scripted teleoperator: turns observations into absolute EEF targets and gripper widths.

    op = ScriptedOperator("panda_lift", "low", seed=7)
    obs = sim.reset(seed=7)
    while not op.done:
        targets, grippers = op.act(obs)
        obs = sim.step(targets, grippers)

Modes mimic the data an LDA user collects: ``high`` is a clean expert (approach above the object, descend,
close, lift; a dexterous hand descends beside the object, moves in palm first and wraps round it); ``low``
is the real-world kind of teleoperation the paper keeps instead of discarding (pauses, detours, hand jitter
and drift, sloppy grasps that need retries, some failures); ``actionless`` moves the robot through the task
like a demonstrator whose actions are not kept, so it is an expert with some jitter.
The operator reads the privileged object pose, like a human who sees the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from lda_sim.sim_core import Pose, SimObservation

MODES = ("high", "low", "actionless")


@dataclass(frozen=True)
class SideGrasp:
    """A five-finger power grasp of an upright object from its side, the palm facing it.

    The hand turns so that its palm faces +y (the robot's left: the right hand comes from the object's right),
    thumb up, fingers pointing forward and down by a pitch that depends on how far forward the object
    stands: steep near the robot, so the forearm clears the bin's near wall; flatter far away, so the arm
    still reaches with a bent elbow. It descends ``standoff`` beside the object, moves in until the palm
    touches it, and closes over ``close_ramp`` steps (the thumb swings into opposition on the way).
    """

    palm_offset: tuple[float, float, float]  # object centre in the grip-site frame (-y: along the fingers)
    pitch_deg: tuple[float, float]  # fingers below horizontal for a near .. far object [deg]
    pitch_x: tuple[float, float]  # object x (base frame) at which the pitch is the near .. far value
    yaw_deg: tuple[float, float] = (0.0, 0.0)  # fingers turned toward the robot's midline (+y) [deg] ...
    yaw_y: tuple[float, float] = (0.0, 1.0)  # ... for an object at this y (base frame) .. at this one
    standoff: float = 0.04  # descend this far out along the palm normal, then move in
    raise_first: float = 0.08  # lift the hand this much in its start orientation before turning it
    close_ramp: int = 5  # steps over which the hand closes from open_width to closed_width

    def rotation(self, object_pos) -> Rotation:
        """The hand orientation (base frame) that grasps an object standing at ``object_pos``."""
        pitch = np.radians(np.interp(object_pos[0], self.pitch_x, self.pitch_deg))
        fingers = np.array([np.cos(pitch), 0.0, -np.sin(pitch)])
        palm = np.array([0.0, 1.0, 0.0])  # the palm normal is the grip site's +z, the fingers its -y
        level = Rotation.from_matrix(np.stack([np.cross(-fingers, palm), -fingers, palm], axis=1))
        return Rotation.from_euler("z", np.interp(object_pos[1], self.yaw_y, self.yaw_deg), degrees=True) * level


@dataclass(frozen=True)
class TaskScript:
    """Where the operator's waypoints lie for one robot's task (base frame, metres)."""

    hand: str  # the hand that does the task; the others hold still
    open_width: float
    closed_width: float = 0.0
    hover: float = 0.10  # approach height above the grasp point
    grasp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # grip site relative to the object centre
    lift: float = 0.15
    align_yaw: bool = False  # turn the gripper to the object's yaw (a box: 90-degree symmetric)
    lifted_dz: float = 0.03  # the object rose this much: the grasp held
    side_grasp: SideGrasp | None = None  # None: a top grasp in the start orientation (a parallel gripper)


TASKS: dict[str, TaskScript] = {
    # The Panda's 8 cm stroke closes on the 4 cm cube at any yaw (20/20 lifted without turning): the
    # expert keeps the gripper's yaw, so the policy has no per-episode rotation to
    # reproduce that its image features may not show.
    "panda_lift": TaskScript(hand="right", open_width=0.08),
    # The can starts in the right-hand bin; the right hand lifts it with a side power grasp (high mode:
    # 20/20 on seeds 0-9 and 100-109, 17/20 on 200-219; low: 12/20 on 0-9 and 100-109; actionless: 10/10
    # on 0-9). Open is a pre-shaped hand, fingers a third curled and the thumb beside them, so the
    # fingertips clear the bin floor; the can is held 1.5 cm above its centre. Carrying it to the other
    # bin (robosuite's success) is not scripted: the sim scores the pick (RobotSpec.held_up).
    "gr1_pickplace": TaskScript(
        hand="right", open_width=0.065, hover=0.12, grasp_offset=(0.0, 0.0, 0.015), lift=0.15,
        side_grasp=SideGrasp(palm_offset=(0.0, -0.075, 0.04), pitch_deg=(30.0, 15.0), pitch_x=(0.38, 0.48),
                            yaw_deg=(0.0, 30.0), yaw_y=(-0.12, -0.04)),
    ),
}


@dataclass(frozen=True)
class Style:
    """How an operator moves; the three modes differ only in these numbers."""

    speed: tuple[float, float]  # commanded speed range [m per control step], drawn per attempt
    jitter: float = 0.0  # per-step hand tremor, std [m]
    drift: float = 0.0  # slowly wandering offset (random walk) std per step [m]
    pause_prob: float = 0.0  # chance per step to freeze ...
    pause_steps: tuple[int, int] = (0, 0)  # ... for this many steps
    detour_prob: float = 0.0  # chance per attempt to wander off to a wrong spot first
    detour: float = 0.0  # how far that spot is [m]
    grasp_error: float = 0.0  # std of the horizontal grasp offset per attempt [m]
    height_error: float = 0.0  # std of the grasp height error per attempt [m]
    yaw_error: float = 0.0  # std of the gripper yaw error per attempt [rad]
    close_steps: int = 8  # steps to wait for the gripper to close
    max_attempts: int = 3


STYLES: dict[str, Style] = {
    "high": Style(speed=(0.035, 0.04)),
    "actionless": Style(speed=(0.025, 0.035), jitter=0.002),
    "low": Style(
        speed=(0.01, 0.025), jitter=0.004, drift=0.003, pause_prob=0.05, pause_steps=(3, 12),
        detour_prob=0.6, detour=0.12, grasp_error=0.014, height_error=0.012, yaw_error=0.35, close_steps=12,
        max_attempts=2,
    ),
}

# The GR-1's hand closes over SideGrasp.close_ramp steps and then squeezes; the low operator's grasp errors
# are smaller than the Panda's: the side grasp tolerates ~1 cm, the Panda's 8 cm stroke several.
GR1_STYLES: dict[str, Style] = {
    "high": Style(speed=(0.035, 0.04), close_steps=10),
    "actionless": Style(speed=(0.025, 0.035), jitter=0.002, close_steps=10),
    "low": Style(
        speed=(0.01, 0.025), jitter=0.004, drift=0.003, pause_prob=0.05, pause_steps=(3, 12),
        detour_prob=0.6, detour=0.12, grasp_error=0.008, height_error=0.008, yaw_error=0.12, close_steps=12,
        max_attempts=2,
    ),
}
ROBOT_STYLES: dict[str, dict[str, Style]] = {"panda_lift": STYLES, "gr1_pickplace": GR1_STYLES}


class ScriptedOperator:
    """A finite-state operator for one episode; build a new one (or call ``reset``) per episode."""

    def __init__(self, robot: str, mode: str, seed: int = 0, max_steps: int = 200):
        if robot not in TASKS:
            raise ValueError(f"no scripted task for robot '{robot}'; choose one of {sorted(TASKS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {list(MODES)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.task = TASKS[robot]
        self.mode = mode
        self.style = ROBOT_STYLES.get(robot, STYLES)[mode]
        self.max_steps = max_steps
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.attempts = 0
        self.pauses = 0  # pause events, for statistics
        self.done = False
        self.success = False
        self.phase = "start"
        self._phase_steps = 0
        self._pause_left = 0
        self._cmd: np.ndarray | None = None  # commanded position, moved toward the waypoint each step
        self._quat: np.ndarray | None = None
        self._drift = np.zeros(3)
        self._width = self.task.open_width
        self._settle = 0
        self._object_z: float | None = None
        self._grasp_obj: np.ndarray | None = None  # side grasp: where the object stood when the hand moved in

    # -- main entry --------------------------------------------------------------------------------
    def act(self, obs: SimObservation) -> tuple[dict[str, Pose], dict[str, float]]:
        """One control step: the targets and gripper widths to send for observation ``obs``."""
        hand = self.task.hand
        if self._cmd is None:
            self._cmd = np.array(obs.eef_pos[hand], dtype=float)
            self._start_rot = Rotation.from_quat(obs.eef_quat[hand])
            self._raise_to = self._cmd + [0.0, 0.0, self.task.side_grasp.raise_first if self.task.side_grasp else 0.0]
            self._begin_attempt(obs)
        if not self.done:
            self.steps += 1
            self._phase_steps += 1
            if self._pause_left > 0:
                self._pause_left -= 1
            elif self.style.pause_prob and self.rng.random() < self.style.pause_prob and self.phase != "start":
                self._pause_left = int(self.rng.integers(*self.style.pause_steps, endpoint=True))
                self.pauses += 1
            else:
                self._advance(obs)
            if self.steps >= self.max_steps and not self.done:
                self._finish(self._succeeded(obs))
        tremor = np.zeros(3) if self.done else self.rng.normal(0.0, self.style.jitter, 3)
        quat = self._start_rot.as_quat() if self.phase == "raise" else self._quat
        return {hand: (self._cmd + self._drift + tremor, quat)}, {hand: self._width}

    # -- state machine -----------------------------------------------------------------------------
    def _advance(self, obs: SimObservation) -> None:
        hand, task, style = self.task.hand, self.task, self.style
        eef = np.asarray(obs.eef_pos[hand])
        obj = np.asarray(obs.object_pos)
        self._drift = self._drift + self.rng.normal(0.0, style.drift, 3) if style.drift else self._drift
        self._drift = np.clip(self._drift, -0.015, 0.015)
        side = task.side_grasp
        if side is None:
            grasp = obj + np.asarray(task.grasp_offset) + self._grasp_error
        else:  # the grip site sits at the wrist: place the palm against the object, out of its way until then
            at = obj if self._grasp_obj is None else self._grasp_obj
            grasp = at - self._grasp_rot.apply(side.palm_offset) + task.grasp_offset + self._grasp_error
            standoff = grasp - side.standoff * self._grasp_rot.apply([0.0, 0.0, 1.0])
        if self.phase == "start":
            if side is not None and side.raise_first > 0:
                self._goto("raise")  # fingers up and clear of the object before the hand turns
            else:
                self._goto("detour" if self._detour is not None else "approach")
        elif self.phase == "raise":
            if self._move(self._raise_to, eef, tol=0.02) or self._phase_steps > 40:
                self._goto("detour" if self._detour is not None else "approach")
        elif self.phase == "detour":
            if self._move(self._detour, eef, tol=0.03) or self._phase_steps > 40:
                self._goto("approach")
        elif self.phase == "approach":
            hover = (grasp if side is None else standoff) + [0.0, 0.0, task.hover]
            if np.linalg.norm((hover - self._cmd)[:2]) > 0.03:  # travel at hover height, not through the object
                hover[2] = max(hover[2], self._cmd[2])
            if self._move(hover, eef, tol=0.015) or self._phase_steps > 50:
                self._goto("descend")
        elif self.phase == "descend":
            if side is not None:
                if self._move(standoff, eef, tol=0.01) or self._phase_steps > 30:
                    self._grasp_obj = obj.copy()
                    self._goto("move_in")
            elif self._move(grasp, eef, tol=0.008) or self._phase_steps > 30:
                self._object_z = obj[2]
                self._goto("close")
        elif self.phase == "move_in":  # the palm stops against the object, short of the nominal point
            if self._move(grasp, eef, tol=0.015) or self._phase_steps > 8:
                self._object_z = obj[2]
                self._goto("close")
        elif self.phase == "close":
            if side is None:
                self._width = task.closed_width
            else:  # close gradually: the fingers wrap round while the thumb swings into opposition
                done = min(1.0, self._phase_steps / side.close_ramp)
                self._width = task.open_width + done * (task.closed_width - task.open_width)
            self._move(self._cmd, eef)
            if self._phase_steps >= style.close_steps:
                self._lift_from, self._lift_eef_z = self._cmd.copy(), eef[2]
                self._goto("lift")
        elif self.phase == "lift":
            reached = self._move(self._lift_from + [0.0, 0.0, task.lift], eef, tol=0.02)
            if eef[2] - self._lift_eef_z > 0.06 and obj[2] - self._object_z < task.lifted_dz:
                self._goto("release")  # the object stayed behind: the grasp failed
            elif reached or self._phase_steps > 40:
                self._goto("settle")
        elif self.phase == "release":
            self._width = task.open_width
            self._grasp_obj = None
            self._move(self._cmd + [0.0, 0.0, 0.01], eef)
            if self._phase_steps >= 5:
                if self.attempts >= style.max_attempts:
                    self._finish(False)
                else:
                    self._begin_attempt(obs)
                    self._goto("approach")
        elif self.phase == "settle":
            self._move(self._cmd, eef)
            self._settle = self._settle + 1 if self._succeeded(obs) else 0
            if self._settle >= 3:
                self._finish(True)
            elif self._phase_steps > 20:
                self._finish(self._succeeded(obs))

    def _succeeded(self, obs: SimObservation) -> bool:
        return bool(obs.success)  # the sim's task success, the one the closed-loop evaluation scores

    def _begin_attempt(self, obs: SimObservation) -> None:
        """New grasp attempt: draw this attempt's speed and sloppiness."""
        style, task = self.style, self.task
        self.attempts += 1
        self._speed = float(self.rng.uniform(*style.speed))
        self._grasp_error = np.zeros(3)
        self._grasp_error[:2] = self.rng.normal(0.0, style.grasp_error, 2)
        self._grasp_error[2] = abs(self.rng.normal(0.0, style.height_error))  # people stop short, not below
        yaw = self._yaw_to_object(obs) if task.align_yaw else 0.0
        if task.side_grasp is None:
            rot = Rotation.from_euler("z", yaw + self.rng.normal(0.0, style.yaw_error)) * self._start_rot
        else:  # positions follow the intended orientation; a yaw error turns the hand about its wrist
            self._grasp_rot = task.side_grasp.rotation(obs.object_pos)
            rot = Rotation.from_euler("z", yaw + self.rng.normal(0.0, style.yaw_error)) * self._grasp_rot
        self._quat = rot.as_quat()
        self._detour = None
        if self.rng.random() < style.detour_prob:
            offset = self.rng.uniform(-1.0, 1.0, 3) * style.detour
            offset[2] = abs(offset[2]) + task.hover
            self._detour = np.asarray(obs.object_pos) + offset

    def _yaw_to_object(self, obs: SimObservation) -> float:
        """Smallest rotation about z that lines the gripper's fingers up with a box's faces."""
        gripper_x = self._start_rot.apply([1.0, 0.0, 0.0])
        object_x = Rotation.from_quat(obs.object_quat).apply([1.0, 0.0, 0.0])
        diff = np.arctan2(object_x[1], object_x[0]) - np.arctan2(gripper_x[1], gripper_x[0])
        return float((diff + np.pi / 4) % (np.pi / 2) - np.pi / 4)

    def _move(self, waypoint, eef: np.ndarray, tol: float = 0.0) -> bool:
        """Step the commanded position toward ``waypoint``; True once both command and hand are there."""
        waypoint = np.asarray(waypoint, dtype=float)
        delta = waypoint - self._cmd
        dist = float(np.linalg.norm(delta))
        self._cmd = waypoint.copy() if dist <= self._speed else self._cmd + delta * (self._speed / dist)
        # The hand follows command + drift, so that is where the operator sees it arrive.
        return dist <= self._speed and float(np.linalg.norm(eef - waypoint - self._drift)) <= tol

    def _goto(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    def _finish(self, success: bool) -> None:
        self.done = True
        self.success = bool(success)
        self.phase = "done"
