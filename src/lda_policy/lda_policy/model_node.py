"""The model parameters and loading shared by the nodes that hold the model (the model host, the replay).

Separate from :mod:`lda_policy.ros_io` because it imports torch: the safety gate must not.
"""

from __future__ import annotations

from typing import Any

from .deploy.replay import ReplayError
from .deploy.robot import RobotInterface
from .deploy.runtime import ModelRuntime, RuntimeLoadError, set_torch_threads
from .deploy.safety import CalibrationError
from .ros_io import STARTUP_ERRORS, RobotNode, declare

#: What stops a model node at start-up: printed, exit status 1.
MODEL_STARTUP_ERRORS = (RuntimeLoadError, CalibrationError, ReplayError, *STARTUP_ERRORS)


class ModelNode(RobotNode):
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
            "num_inference_steps": d("num_inference_steps", 0, "Euler steps of the policy (0 = the checkpoint's "
                                     "default)", low=0, high=100),
        }

    def load_model(self, p: dict[str, Any]) -> tuple[RobotInterface, ModelRuntime]:
        """The robot description and the model runtime named by the model parameters ``p``."""
        robot = RobotInterface(p["robot_config"], p["camera"])
        set_torch_threads(p["torch_threads"])
        runtime = ModelRuntime(p["checkpoint"], p["dino_path"], p["language_encoder"],
                               p["language_encoder_path"] or None, p["device"], p["num_inference_steps"] or None)
        return robot, runtime
