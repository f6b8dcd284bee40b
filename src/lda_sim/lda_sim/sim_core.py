"""ROS-free simulated robot: a robosuite environment driven by absolute end-effector targets.

    sim = SimRobot("panda_lift", image_size=96)
    obs = sim.reset(seed=3)                       # same seed -> same object placement
    obs = sim.step({"right": (pos, quat)}, {"right": 0.0})   # track a pose, close the gripper

All poses are in the robot base frame (position [m], quaternion x, y, z, w). Targets are tracked with
robosuite's operational-space controller: each control step the pose error is clipped to a maximum step and
sent as the controller's delta command, so an absolute target far away is approached at a bounded speed.
A hand without a target holds the pose it had when its targets stopped (hold-last-pose).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

# robosuite picks its GL backend at import; egl renders offscreen without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
# robosuite warns at import and on every reset about optional extras and unused controller parts; only its
# errors matter here. A filter on its named logger holds from before the logger is configured.
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)

Pose = tuple[np.ndarray, np.ndarray]  # (position (3,), quaternion xyzw (4,)) in the base frame


@dataclass(frozen=True)
class RobotSpec:
    """One simulated robot configuration: which robosuite task, robot, camera and hands."""

    env_name: str
    robosuite_robot: str
    hands: tuple[str, ...]
    camera: str
    task: str
    # Reachable box for targets in the base frame, (low xyz, high xyz); targets are clipped into it.
    workspace: tuple[tuple[float, float, float], tuple[float, float, float]]
    gripper: str  # "panda" (two-finger, width in m) or "hand" (dexterous hand, width-like openness)
    object_body: Callable[[object], int]  # env -> MuJoCo body id of the task object
    init_joints: tuple[tuple[str, float], ...] = ()  # start posture overrides (joint name, rad)
    # Stiffness of the arm's operational-space controller (None: robosuite's 150). A recorded action is the
    # motion the hand made in one period; replayed as "current pose + action" it reproduces the motion
    # only if the arm reaches such a target within the period, as a real position-controlled arm does.
    arm_kp: float | None = None
    # Success = the object held up: risen this far [m] above where the episode started it, and within the
    # given distance [m] of a hand's grip site. None: robosuite's own success check of the task.
    held_up: tuple[float, float] | None = None


ROBOTS: dict[str, RobotSpec] = {
    "panda_lift": RobotSpec(
        env_name="Lift",
        robosuite_robot="Panda",
        hands=("right",),
        camera="agentview",
        task="lift the red cube",
        workspace=((0.25, -0.40, -0.10), (0.85, 0.40, 0.50)),  # table top is at z = -0.112
        gripper="panda",
        object_body=lambda env: env.cube_body_id,
        # At 150 the Panda covers about half of a 2 cm step per 10 Hz period, so replayed expert actions
        # fell short and lifted 0/8; at 2000 it covers ~95 % and they lift 8/8. Above ~3000 it overshoots.
        arm_kp=2000.0,
    ),
    "gr1_pickplace": RobotSpec(
        env_name="PickPlaceCan",
        robosuite_robot="GR1FixedLowerBody",
        hands=("left", "right"),
        camera="robot0_robotview",
        task="pick up the can",
        workspace=((0.0, -0.65, -0.15), (0.75, 0.65, 0.50)),
        gripper="hand",
        object_body=lambda env: env.obj_body_id[env.obj_to_use],
        # Lean over the bins and look toward the can's bin. Upright, the can is out of the arm's reach; at a
        # 0.5 rad lean the far half of the bin still was (the elbow straightened, the shoulder roll hit its
        # limit and the arm flung about); at 0.7 every spawn point is reachable with a bent elbow. The head
        # tilts up to keep the bin, the right hand and the can in view, and renders ~40% faster than level.
        init_joints=(("robot0_torso_waist_pitch", 0.7), ("robot0_head_yaw", -0.4), ("robot0_head_pitch", -0.4)),
        # At robosuite's 150 the arm covers a third of a 2 cm step per 10 Hz period (two periods: 67 %); at
        # 1000 it covers ~80 % (two periods: 97 %). 2000 tracks a little better but dropped the can on one
        # seed in ten (the arm jolts when the fingers close on it).
        arm_kp=1000.0,
        # robosuite's PickPlaceCan succeeds when the can lies in the far bin, out of the right arm's reach:
        # the task here is the pick. A held can's centre is ~9 cm from the grip site (at the wrist).
        held_up=(0.03, 0.13),
    ),
}

# Targets farther than this outside the workspace are rejected as bad input rather than clipped.
REJECT_MARGIN_M = 0.3
PANDA_MAX_WIDTH = 0.08  # fully open finger distance [m]
HAND_MAX_WIDTH = 0.10  # openness scale reported for a dexterous hand (fully open) [m]
# Dexterous hand (robosuite's Fourier hand, 6 commands: pinky, ring, middle, index, thumb flexion, thumb
# rotation). Closure c = 1 - width / HAND_MAX_WIDTH flexes the four fingers and the thumb alike; the thumb
# swings round into opposition (facing the palm) while c goes from HAND_OPPOSE[0] to HAND_OPPOSE[1]. A hand
# curled less than HAND_OPPOSE[0] keeps its thumb beside the index finger, out of the way of an object it
# is moved next to; closing from there wraps the fingers round the object and the thumb onto its far side.
HAND_OPPOSE = (0.35, 0.60)
# A Fourier hand's actuated finger joints, named as a real GR-1's hand driver publishes them
# (config/robots/gr1_humanoid.yaml) after the side prefix L_ / R_; robosuite adds 'gripper0_<hand>_'.
HAND_FINGER_JOINTS = ("thumb_proximal_yaw_joint", "thumb_proximal_pitch_joint", "index_proximal_joint",
                      "middle_proximal_joint", "ring_proximal_joint", "pinky_proximal_joint")


def finger_joint_names(robot: str, hand: str) -> list[str]:
    """The finger joints a hand publishes and takes targets for; [] for a parallel gripper (width only)."""
    if ROBOTS[robot].gripper != "hand":
        return []
    return [f"{hand[0].upper()}_{joint}" for joint in HAND_FINGER_JOINTS]


def hand_action_for_width(dof: int, width: float | None) -> np.ndarray:
    """A dexterous hand's actuator commands (-1 open .. 1 closed, robosuite's action order) for an openness
    ``width`` (None: open); see HAND_OPPOSE."""
    closure = 0.0 if width is None else float(np.clip(1.0 - width / HAND_MAX_WIDTH, 0.0, 1.0))
    oppose = np.clip((closure - HAND_OPPOSE[0]) / (HAND_OPPOSE[1] - HAND_OPPOSE[0]), 0.0, 1.0)
    return 2.0 * np.array([closure] * (dof - 1) + [oppose]) - 1.0


@functools.cache
def hand_finger_map(robot: str, hand: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of :func:`finger_joint_names`: the hand action entry that drives it and its target range
    [rad] (its drive's control range), read from the robot's hand model without building a scene. The
    hand's action is copied onto coupled actuators (format_action); the range is the joint's own drive's.
    The arrays are shared (cached): read-only."""
    from robosuite.models import robots
    from robosuite.models.grippers import GRIPPER_MAPPING

    model = GRIPPER_MAPPING[getattr(robots, ROBOTS[robot].robosuite_robot)().default_gripper[hand]]()
    driven_by = model.format_action(np.arange(model.dof))  # actuator -> action entry
    ranges = {a.get("name"): [float(v) for v in a.get("ctrlrange").split()] for a in model.root.find("actuator")}
    action_ids, low, high = [], [], []
    for joint in finger_joint_names(robot, hand):
        drive = f"{model.naming_prefix}{joint}_drive"
        k = list(model.actuators).index(drive)
        action_ids.append(int(driven_by[k]))
        low.append(ranges[drive][0])
        high.append(ranges[drive][1])
    out = (np.array(action_ids), np.array(low), np.array(high))
    for a in out:
        a.flags.writeable = False
    return out


def finger_targets_for_width(robot: str, hand: str, width: float | None) -> np.ndarray:
    """The finger joint targets [rad] (:func:`finger_joint_names` order) that a dexterous hand's openness
    ``width`` stands for: what the sim drives for that width, so an operator can send joint targets, as a
    real hand's driver takes them, and a recorder logs the command (not only where contact stopped the
    fingers: the Fourier hand squeezes by the difference)."""
    action_ids, low, high = hand_finger_map(robot, hand)
    action = hand_action_for_width(int(action_ids.max()) + 1, width)
    return low + (action[action_ids] + 1.0) / 2.0 * (high - low)


@dataclass
class SimObservation:
    """One control step's sensors; every pose is in the robot base frame."""

    step: int
    image: np.ndarray | None  # (H, W, 3) uint8, upright; None when rendering is off
    eef_pos: dict[str, np.ndarray]
    eef_quat: dict[str, np.ndarray]  # xyzw
    gripper_width: dict[str, float]
    object_pos: np.ndarray
    object_quat: np.ndarray  # xyzw
    success: bool
    finger_positions: dict[str, np.ndarray] = field(default_factory=dict)  # hand -> finger_joint_names [rad]


class SimRobot:
    """A robosuite task wrapped behind reset(seed) / step(targets, grippers)."""

    def __init__(
        self,
        robot: str = "panda_lift",
        image_size: int = 96,
        camera: str | None = None,
        control_hz: float = 10.0,
        seed: int = 0,
        render: bool = True,
        max_step_m: float = 0.05,
        max_step_rad: float = 0.3,
    ):
        if robot not in ROBOTS:
            raise ValueError(f"unknown robot '{robot}'; choose one of {sorted(ROBOTS)}")
        if not 16 <= int(image_size) <= 1024:
            raise ValueError(f"image_size must be in [16, 1024], got {image_size}")
        if not 1.0 <= float(control_hz) <= 100.0:
            raise ValueError(f"control_hz must be in [1, 100], got {control_hz}")
        if not 0.0 < max_step_m <= 0.05:  # 0.05 m is the controller's largest delta per step
            raise ValueError(f"max_step_m must be in (0, 0.05], got {max_step_m}")
        if not 0.0 < max_step_rad <= 0.5:
            raise ValueError(f"max_step_rad must be in (0, 0.5], got {max_step_rad}")
        _check_seed(seed)
        self.name = robot
        self.spec = ROBOTS[robot]
        self.hands = self.spec.hands
        self.image_size = int(image_size)
        self.camera = camera or self.spec.camera
        self.render = render
        self.max_step_m = float(max_step_m)
        self.max_step_rad = float(max_step_rad)
        self._env = self._make_env(float(control_hz), seed)
        self._robot = self._env.robots[0]
        self._controller = self._robot.composite_controller
        self._object_body = self.spec.object_body(self._env)
        self._fingers = {hand: self._finger_map(hand) for hand in self.hands if finger_joint_names(robot, hand)}
        if self.spec.init_joints:
            qpos, names = np.array(self._robot.init_qpos, dtype=float), list(self._robot.robot_joints)
            for joint, value in self.spec.init_joints:
                qpos[names.index(joint)] = value
            self._robot.init_qpos = qpos
        self._ws_low, self._ws_high = (np.array(b, dtype=float) for b in self.spec.workspace)
        if self.spec.gripper == "hand":
            model = self._env.sim.model
            self._hand_flex_joints = {}
            for hand in self.hands:
                joints = self._robot.gripper[hand].joints  # in qpos order
                flex = [i for i, name in enumerate(joints) if not name.endswith("thumb_proximal_yaw_joint")]
                high = np.array([model.jnt_range[model.joint_name2id(joints[i])][1] for i in flex])
                self._hand_flex_joints[hand] = (np.array(flex), high)
        self._targets: dict[str, Pose | None] = {}
        self._gripper_targets: dict[str, float] = {}
        self._step = 0
        # The first controller step JIT-compiles robosuite's numba kernels: 7 s on a fresh venv on 2 busy
        # cores (cached on disk afterwards), long enough for a node waiting on 10 Hz steps to give up. Take
        # that step here, before anyone waits, then start the episode.
        self.reset(seed)
        self.step()
        self.reset(seed)

    # -- construction ------------------------------------------------------------------------------
    def _make_env(self, control_hz: float, seed: int):
        import robosuite
        from robosuite.controllers import load_composite_controller_config
        # BASIC = one OSC_POSE controller per arm (GR1's default mink whole-body IK is not available).
        config = load_composite_controller_config(controller="BASIC", robot=self.spec.robosuite_robot)
        if self.spec.arm_kp is not None:
            for hand in self.hands:
                config["body_parts"][hand]["kp"] = self.spec.arm_kp
        kwargs = dict(
            robots=self.spec.robosuite_robot,
            controller_configs=config,
            has_renderer=False,
            has_offscreen_renderer=self.render,
            use_camera_obs=self.render,
            control_freq=control_hz,
            horizon=10**9,  # episode length is the caller's business
            ignore_done=True,
            hard_reset=False,  # reloading the model every reset costs seconds; seeding keeps resets reproducible
            seed=seed,
        )
        if self.render:
            kwargs.update(camera_names=self.camera, camera_heights=self.image_size, camera_widths=self.image_size)
        try:
            return robosuite.make(self.spec.env_name, **kwargs)
        except Exception as exc:  # robosuite also logs the camera names it has
            if self.render and self.camera != self.spec.camera:
                raise ValueError(f"cannot render camera '{self.camera}' for {self.name}: {exc}") from exc
            raise

    # -- episode control ---------------------------------------------------------------------------
    def reset(self, seed: int) -> SimObservation:
        """Start a new episode; the object placement (and arm start noise) depend only on ``seed``."""
        _check_seed(seed)
        # Samplers hold a reference to env.rng, so reseed it in place instead of replacing it.
        self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        if self.spec.gripper == "panda":
            raw = self._open_panda_gripper()
        self._step = 0
        self._targets = {hand: None for hand in self.hands}
        self._gripper_targets = {}
        self._hold = {hand: self._eef_pose_base(hand) for hand in self.hands}
        self._object_start_z = None
        obs = self._observe(raw)
        self._object_start_z = float(obs.object_pos[2])
        return obs

    def step(
        self,
        targets: Mapping[str, Pose | None] | None = None,
        grippers: Mapping[str, float | None] | None = None,
    ) -> SimObservation:
        """Advance one control step towards the given absolute EEF targets and gripper widths.

        A hand missing from ``targets`` (or mapped to None) holds its last pose; a hand missing from
        ``grippers`` keeps its last commanded width. Raises ValueError on an unknown hand or a bad target.
        """
        targets, grippers = dict(targets or {}), dict(grippers or {})
        # Check everything before changing anything, so a refused command leaves no half-applied state.
        checked = {hand: self.check_target(hand, *t) for hand, t in targets.items() if t is not None}
        widths = {self._check_hand(hand): self.check_fingers(hand, w) for hand, w in grippers.items() if w is not None}
        for hand in targets:
            self._check_hand(hand)
        for hand in self.hands:
            if hand in checked:
                self._targets[hand] = checked[hand]
            elif self._targets[hand] is not None:  # targets just stopped: hold where the hand is now
                self._hold[hand] = self._eef_pose_base(hand)
                self._targets[hand] = None
        self._gripper_targets.update(widths)
        action = self._controller.create_action_vector(self._action_dict())
        raw, _, _, _ = self._env.step(action)
        self._step += 1
        return self._observe(raw)

    def close(self) -> None:
        self._env.close()

    def _open_panda_gripper(self) -> dict:
        """Start the episode with the gripper open, like an operator's or a policy's first command, instead
        of robosuite's half-closed start: a recorded first frame then shows the gripper as the commands
        that follow leave it. Returns the observation of the changed scene."""
        for hand in self.hands:
            joints = self._robot._ref_gripper_joint_pos_indexes[hand]
            self._env.sim.data.qpos[joints] = [PANDA_MAX_WIDTH / 2, -PANDA_MAX_WIDTH / 2]
            self._robot.gripper[hand].current_action = np.array([1.0, -1.0])  # its integrated command: open
        self._env.sim.forward()
        return self._env._get_observations(force_update=True)

    # -- input checks ------------------------------------------------------------------------------
    def check_target(self, hand: str, pos, quat) -> Pose:
        """Validate a target pose; return it clipped into the workspace, normalised. Raises ValueError."""
        self._check_hand(hand)
        pos = np.asarray(pos, dtype=float).reshape(-1)
        quat = np.asarray(quat, dtype=float).reshape(-1)
        if pos.shape != (3,) or quat.shape != (4,):
            raise ValueError(f"{hand} target needs 3 position and 4 quaternion values")
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            raise ValueError(f"{hand} target has a NaN or infinite value")
        norm = np.linalg.norm(quat)
        if not 0.5 < norm < 1.5:
            raise ValueError(f"{hand} target quaternion has norm {norm:.3f}; expected a unit quaternion")
        outside = float(np.linalg.norm(pos - np.clip(pos, self._ws_low, self._ws_high)))
        if outside > REJECT_MARGIN_M:
            raise ValueError(
                f"{hand} target {np.round(pos, 3).tolist()} is {outside:.2f} m outside the workspace "
                f"{self._ws_low.tolist()}..{self._ws_high.tolist()} (base frame)"
            )
        return np.clip(pos, self._ws_low, self._ws_high), quat / norm

    def check_fingers(self, hand: str, command) -> float | np.ndarray:
        """A width (a number), or one target per finger joint [rad] of a dexterous hand, clipped to range."""
        if np.ndim(command) == 0:
            return self.check_width(command)
        if hand not in self._fingers:
            raise ValueError(f"{hand} has a gripper: give one width, not {np.size(command)} finger targets")
        targets = np.asarray(command, dtype=float).reshape(-1)
        qpos_ids, _, low, high = self._fingers[hand]
        if targets.shape != (len(qpos_ids),):
            raise ValueError(f"{hand} hand needs {len(qpos_ids)} finger targets "
                             f"({finger_joint_names(self.name, hand)}), got {targets.size}")
        if not np.all(np.isfinite(targets)):
            raise ValueError(f"{hand} finger targets have a NaN or infinite value")
        return np.clip(targets, low, high)

    def check_width(self, width) -> float:
        width = float(width)
        if not np.isfinite(width):
            raise ValueError("gripper width is NaN or infinite")
        return float(np.clip(width, 0.0, self.max_gripper_width))

    @property
    def max_gripper_width(self) -> float:
        return PANDA_MAX_WIDTH if self.spec.gripper == "panda" else HAND_MAX_WIDTH

    def _check_hand(self, hand: str) -> str:
        if hand not in self.hands:
            raise ValueError(f"unknown hand '{hand}' for {self.name}; hands: {list(self.hands)}")
        return hand

    # -- control -----------------------------------------------------------------------------------
    def _action_dict(self) -> dict[str, np.ndarray]:
        actions = {}
        for hand in self.hands:
            arm = self._controller.get_controller(hand)
            pos_b, quat_b = self._targets[hand] if self._targets[hand] is not None else self._hold[hand]
            base_pos, base_rot = self._base_pose()
            target_pos = base_pos + base_rot.apply(pos_b)
            target_rot = base_rot * Rotation.from_quat(quat_b)
            pos, rot = self._eef_pose_world(hand)
            pos_err = _clip_norm(target_pos - pos, self.max_step_m)
            rot_err = _clip_norm((target_rot * rot.inv()).as_rotvec(), self.max_step_rad)
            # The controller takes deltas in its own origin frame (a site that moves with GR1's torso).
            _, origin_rot = self._controller.get_controller_base_pose(hand)
            delta = np.concatenate([origin_rot.T @ pos_err, origin_rot.T @ rot_err])
            actions[hand] = np.clip(delta / arm.output_max[:6], -1.0, 1.0)
            actions[f"{hand}_gripper"] = self._gripper_action(hand)
        return actions

    def _gripper_action(self, hand: str) -> np.ndarray:
        gripper = self._robot.gripper[hand]
        width = self._gripper_targets.get(hand)
        if self.spec.gripper == "panda":
            # The Panda gripper integrates the sign of its action by 0.2 per step ([-1, 1] = open..closed).
            if width is None:
                return np.zeros(1)
            want = 1.0 - 2.0 * width / PANDA_MAX_WIDTH
            diff = want - gripper.current_action[-1]  # [-a, a] once it has moved, [0] after reset
            return np.array([np.sign(diff) if abs(diff) > gripper.speed / 2 else 0.0])
        if isinstance(width, np.ndarray):  # finger joint targets: each joint's action, scaled to its range
            _, action_ids, low, high = self._fingers[hand]
            action = np.full(gripper.dof, -1.0)
            action[action_ids] = 2.0 * (width - low) / (high - low) - 1.0
            return np.clip(action, -1.0, 1.0)
        # Dexterous hand: absolute joint targets, -1 open .. 1 closed (see HAND_OPPOSE); open until told.
        return hand_action_for_width(gripper.dof, width)

    def _finger_map(self, hand: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For each named finger joint: its qpos index, and :func:`hand_finger_map`'s action entry and range."""
        gripper, model = self._robot.gripper[hand], self._env.sim.model
        qpos_ids = [model.get_joint_qpos_addr(f"{gripper.naming_prefix}{joint}")
                    for joint in finger_joint_names(self.name, hand)]
        return (np.array(qpos_ids), *hand_finger_map(self.name, hand))

    # -- observation -------------------------------------------------------------------------------
    def _base_pose(self) -> tuple[np.ndarray, Rotation]:
        body = self._robot.robot_model.root_body
        data = self._env.sim.data
        return np.array(data.get_body_xpos(body)), Rotation.from_matrix(data.get_body_xmat(body))

    def _eef_pose_world(self, hand: str) -> tuple[np.ndarray, Rotation]:
        site = self._robot.eef_site_id[hand]
        data = self._env.sim.data
        return np.array(data.site_xpos[site]), Rotation.from_matrix(data.site_xmat[site].reshape(3, 3))

    def _eef_pose_base(self, hand: str) -> Pose:
        pos, rot = self._eef_pose_world(hand)
        return self._to_base(pos, rot)

    def _to_base(self, pos: np.ndarray, rot: Rotation) -> Pose:
        base_pos, base_rot = self._base_pose()
        return base_rot.inv().apply(pos - base_pos), (base_rot.inv() * rot).as_quat()

    def _gripper_width(self, hand: str) -> float:
        qpos = self._env.sim.data.qpos[self._robot._ref_gripper_joint_pos_indexes[hand]]
        if self.spec.gripper == "panda":
            return float(qpos[0] - qpos[1])
        # Hand openness: mean flexion of the fingers and thumb as a fraction of each joint's range (the
        # thumb's rotation into opposition left out), 0 flexed = open: the inverse of _gripper_action.
        flex, high = self._hand_flex_joints[hand]
        closed = float(np.clip(np.mean(qpos[flex] / high), 0.0, 1.0))
        return HAND_MAX_WIDTH * (1.0 - closed)

    def _success(self, obj_pos: np.ndarray, poses: dict[str, Pose]) -> bool:
        if self.spec.held_up is None:
            return bool(self._env._check_success())
        if self._object_start_z is None:  # the reset's own observation
            return False
        rise, reach = self.spec.held_up
        in_hand = min(float(np.linalg.norm(obj_pos - pos)) for pos, _ in poses.values()) < reach
        return bool(obj_pos[2] - self._object_start_z >= rise and in_hand)

    def _observe(self, raw: dict) -> SimObservation:
        image = None
        if self.render:
            image = raw[f"{self.camera}_image"]
            import robosuite.macros as macros

            if macros.IMAGE_CONVENTION == "opengl":  # rendered bottom row first
                image = image[::-1]
            image = np.ascontiguousarray(image, dtype=np.uint8)
        poses = {hand: self._eef_pose_base(hand) for hand in self.hands}
        data = self._env.sim.data
        obj_pos, obj_quat = self._to_base(
            np.array(data.body_xpos[self._object_body]),
            Rotation.from_quat(np.array(data.body_xquat[self._object_body]), scalar_first=True),
        )
        return SimObservation(
            step=self._step,
            image=image,
            eef_pos={hand: p for hand, (p, _) in poses.items()},
            eef_quat={hand: q for hand, (_, q) in poses.items()},
            gripper_width={hand: self._gripper_width(hand) for hand in self.hands},
            finger_positions={hand: data.qpos[ids].copy() for hand, (ids, *_) in self._fingers.items()},
            object_pos=obj_pos,
            object_quat=obj_quat,
            success=self._success(obj_pos, poses),
        )


def _clip_norm(vec: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec if norm <= limit else vec * (limit / norm)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
