"""The model parameters and loading shared by the nodes that hold the model (the model host, the replay).

Separate from :mod:`lda_policy.ros_io` because it imports torch: the safety gate must not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .deploy.replay import ReplayError
from .deploy.robot import RobotInterface
from .deploy.runtime import ModelRuntime, RuntimeLoadError, set_torch_threads
from .deploy.safety import CalibrationError
from .ros_io import STARTUP_ERRORS, ParameterError, RobotNode, declare

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
            "dino_path": d("dino_path", "", "local DINOv3 ViT directory (from_pretrained format); required for our "
                           "checkpoints, not used by imported upstream ones (their DINOv3 is inside)"),
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
        if not str(p["dino_path"]).strip():
            raise ParameterError("parameter 'dino_path' is required: local DINOv3 ViT directory (from_pretrained "
                                 "format)")
        robot = RobotInterface(p["robot_config"], p["camera"])
        set_torch_threads(p["torch_threads"])
        runtime = ModelRuntime(p["checkpoint"], p["dino_path"], p["language_encoder"],
                               p["language_encoder_path"] or None, p["device"], p["num_inference_steps"] or None)
        return robot, runtime


def is_upstream(checkpoint: str | Path) -> bool:
    """True for an imported upstream checkpoint (config.json ``"format": "lda-upstream-checkpoint"``)."""
    from .model.upstream.checkpoint import is_upstream_checkpoint

    return is_upstream_checkpoint(Path(str(checkpoint)).expanduser())


def load_upstream_policy(checkpoint: str | Path, processor: str | Path, device: str = "cpu", dtype: str = "auto",
                         statistics_key: str = "") -> Any:
    """The :class:`~lda_policy.model.upstream.policy.UpstreamPolicy` of an imported checkpoint, or
    :class:`RuntimeLoadError` naming what is missing. ``processor`` '' = the checkpoint directory when it holds
    the Qwen3-VL processor files; ``dtype`` auto = bfloat16 on CUDA, float32 on the CPU."""
    import torch

    from .model import CheckpointError
    from .model.upstream.policy import UpstreamPolicy

    checkpoint = Path(str(checkpoint)).expanduser()
    proc = Path(str(processor)).expanduser() if str(processor).strip() else checkpoint
    if not (proc / "tokenizer_config.json").is_file():
        raise RuntimeLoadError(f"Qwen3-VL processor directory '{proc}' has no tokenizer_config.json: set "
                               "vlm_processor to the base model's processor files (Qwen/Qwen3-VL-4B-Instruct: "
                               "tokenizer, chat template, image processor)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeLoadError(f"device '{device}' requested but CUDA is not available")
    types = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    try:
        return UpstreamPolicy(checkpoint, proc, device, types[dtype], statistics_key or None)
    except (CheckpointError, OSError, ValueError, KeyError) as err:
        raise RuntimeLoadError(f"cannot load the upstream checkpoint '{checkpoint}': {err}") from None
