"""ROS-free LDA-1B model core: MM-DiT, flow matching, encoders, normalisation and checkpoints.

Quick start::

    from lda_policy.model import LDAModel, Observation
    model = LDAModel.from_preset("lda-tiny")
    actions = model.policy(Observation(embodiment="single_gripper", history_latents=..., language=...,
                                       state=..., history_actions=...))

Encoders (transformers-based, imported lazily) live in :mod:`lda_policy.model.encoders`.
"""

from .checkpoint import CheckpointError, read_config
from .config import (
                     DEFAULT_EMBODIMENTS,
                     DINO_DIM,
                     DINO_GRID,
                     PRESETS,
                     TASKS,
                     EmbodimentSpec,
                     FlowConfig,
                     LanguageCondition,
                     LDAConfig,
                     Task,
                     TimeLayout,
                     allowed_tasks,
)
from .encoders import (
                     DinoV3Encoder,
                     LanguageEmbedding,
                     MiniLMEncoder,
                     Qwen3VLEncoder,
                     load_language_encoder,
                     pool_latents,
                     write_random_dinov3_checkpoint,
                     write_random_qwen3vl_checkpoint,
)
from .lda import LDAModel
from .normalization import Normalizer, RobustStats
from .observation import InputError, Observation

__all__ = [
    "CheckpointError", "DEFAULT_EMBODIMENTS", "DINO_DIM", "DINO_GRID", "DinoV3Encoder",
    "EmbodimentSpec", "FlowConfig", "InputError", "LanguageCondition", "LDAConfig", "LDAModel", "LanguageEmbedding",
    "MiniLMEncoder", "Normalizer", "Observation", "PRESETS", "Qwen3VLEncoder", "RobustStats", "TASKS", "Task",
    "TimeLayout", "allowed_tasks", "load_language_encoder", "pool_latents", "read_config",
    "write_random_dinov3_checkpoint", "write_random_qwen3vl_checkpoint",
]
