"""What the model-hosting nodes (policy, safety monitor, dynamics replay) share: the model parameters, loading
the robot and the model from them, and ``main()``.

A node class mixes :class:`ModelNode` into its rclpy node class, declares :meth:`model_parameters` with its
own, implements :meth:`start` (load, subscribe; raise on anything wrong) and :meth:`shutdown`, and gets its
console-script ``main`` from :func:`node_main`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from lda_common.robot_config import ConfigError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from .deploy.replay import ReplayError
from .deploy.robot import ImageError, RobotInterface
from .deploy.ros_io import ParameterError, declare, stamp_to_sec
from .deploy.runtime import ModelRuntime, RuntimeLoadError, set_torch_threads
from .deploy.safety import CalibrationError

#: Errors that mean "this node cannot start with what it was given": printed, exit status 1.
STARTUP_ERRORS = (RuntimeLoadError, ConfigError, CalibrationError, ReplayError, ValueError, OSError)


class ModelNode:
    """Mixin for rclpy nodes that host the LDA model."""

    def model_parameters(self) -> dict[str, Any]:
        """Declare the parameters every model node takes and return their values."""
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        return {
            "robot_config": d("robot_config", "", "robot description YAML (config/robots/<robot>.yaml)", required=True),
            "camera": d("camera", "", "camera name in the robot config the model sees ('' = the first)"),
            "checkpoint": d("checkpoint", "", "LDA checkpoint directory (save_pretrained format)", required=True),
            "dino_path": d("dino_path", "", "local DINOv3 ViT directory (from_pretrained format)", required=True),
            "language_encoder": d("language_encoder", "minilm", "language encoder", choices=["minilm", "qwen3vl"]),
            "language_encoder_path": d("language_encoder_path", "", "local language encoder directory ('' = bundled "
                                       "MiniLM)"),
            "device": d("device", "cpu", "torch device, e.g. cpu or cuda:0"),
            "torch_threads": d("torch_threads", 0, "torch intra-op threads (0 = torch default)", low=0, high=256),
            "num_inference_steps": d("num_inference_steps", 0, "Euler steps (0 = the checkpoint's default); the "
                                     "monitor's must match its calibration", low=0, high=100),
        }

    def load_model(self, p: dict[str, Any]) -> tuple[RobotInterface, ModelRuntime]:
        """The robot description and the model runtime named by the model parameters ``p``."""
        robot = RobotInterface(p["robot_config"], p["camera"])
        set_torch_threads(p["torch_threads"])
        runtime = ModelRuntime(p["checkpoint"], p["dino_path"], p["language_encoder"],
                               p["language_encoder_path"] or None, p["device"], p["num_inference_steps"] or None)
        return robot, runtime

    # -- the robot's streams, decoded the same way in every model node ---------------------------------
    bad_images = 0  # camera frames that could not be decoded (diagnostics)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def camera_frame(self, msg) -> tuple[float, np.ndarray] | None:
        """(stamp [s], RGB image) of a camera message; None for a frame that cannot be decoded (counted, logged)."""
        try:
            rgb = self.robot.image_to_rgb(msg)
        except ImageError as err:
            self.bad_images += 1
            self.get_logger().warning(f"dropping camera frame: {err}", throttle_duration_sec=5.0)
            return None
        return stamp_to_sec(msg.header.stamp), rgb

    def finger_sample(self, hand: str, msg) -> tuple[float, np.ndarray] | None:
        """(stamp [s], finger values) of a JointState for ``hand``; None when it names none of its joints."""
        values = self.robot.fingers_from_joint_state(hand, msg.name, msg.position)
        return None if values is None else (stamp_to_sec(msg.header.stamp), values)

    def start(self) -> None:
        """Load and connect everything; raise one of :data:`STARTUP_ERRORS` with a clear message otherwise."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop worker threads and leave the robot safe (called once on the way out)."""

    def spin(self, executor: SingleThreadedExecutor) -> int:
        """Run until shut down; the process exit status."""
        executor.spin()
        return 0


def node_main(program: str, make_node: Callable[[], ModelNode]) -> Callable[[list[str] | None], int]:
    """A console-script ``main``: exit status 2 for a bad parameter, 1 for anything else that stops start-up."""

    def main(args: list[str] | None = None) -> int:
        rclpy.init(args=args)
        node = None
        try:
            try:
                node = make_node()
                node.start()
            except (ParameterError, *STARTUP_ERRORS) as err:
                print(f"{program}: error: {err}", file=sys.stderr, flush=True)
                return 2 if isinstance(err, ParameterError) else 1
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                return node.spin(executor)
            except (KeyboardInterrupt, ExternalShutdownException):
                return 0
        finally:
            if node is not None:
                try:
                    node.shutdown()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
                node.destroy_node()
            if rclpy.ok():
                rclpy.try_shutdown()

    return main
