"""Tiny random-weight LeRobot policy checkpoints for the deployment tests of the ``lerobot`` model-host backend.

Written with LeRobot's own classes, the way ``lerobot-train`` saves ``pretrained_model/``: the policy's
``save_pretrained`` (``config.json`` + ``model.safetensors``) and the pre-/post-processor pipelines made by
``make_pre_post_processors`` from dataset statistics (``policy_preprocessor.json``, ``policy_postprocessor.json``
and their normaliser state). No ImageNet weights (``pretrained_backbone_weights: None``), tiny transformer dims.

The action statistics make the random policy's output small and safe for the test robots: pose deltas within
a few millimetres / centiradians of 0, fingers near 0.04 (the un-normalisation maps the network's O(1) output to
``mean + std * out``).
"""

from __future__ import annotations

from pathlib import Path

ACTION_STD = 0.0005  # pose-delta std of the statistics [m or rad]: random outputs stay far inside the gate's limits
FINGER_MEAN = 0.04


def robot_features(robot_config: str | Path, camera: str = "") -> dict:
    """{'image': (key, (3, H, W)), 'state_dim', 'action_dim', 'finger_columns'} of a robot config."""
    from lda_policy.deploy.robot import RobotInterface

    robot = RobotInterface(robot_config, camera)
    cam = robot.camera
    fingers = [c for h in robot.hands for c in range(robot.action_dim)[robot.space.finger_columns(h)]]
    return {"image": (cam.feature_key, (3, cam.height, cam.width)), "state_dim": robot.state_dim,
            "action_dim": robot.action_dim, "finger_columns": fingers}


def tiny_stats(features: dict) -> dict:
    """Dataset statistics (mean/std/min/max per feature, torch tensors) as LeRobot's normaliser takes them."""
    import torch

    key, _shape = features["image"]
    a_mean = torch.zeros(features["action_dim"])
    a_mean[features["finger_columns"]] = FINGER_MEAN
    a_std = torch.full((features["action_dim"],), ACTION_STD)
    s = features["state_dim"]
    stat = lambda mean, std: {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std}  # noqa: E731
    return {key: stat(torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)),
            "observation.state": stat(torch.full((s,), 0.2), torch.full((s,), 0.3)),
            "action": stat(a_mean, a_std)}


def write_tiny_act_checkpoint(directory: str | Path, robot_config: str | Path, chunk_size: int = 16,
                              seed: int = 0, camera: str = "", state: bool = True, **overrides) -> Path:
    """A random-weight ACT checkpoint for ``robot_config`` in ``directory`` (made if needed); returns it.

    ``state=False`` leaves ``observation.state`` out of the inputs; ``overrides`` go to ``ACTConfig`` (e.g. a
    wrong ``input_features`` for the refusal tests)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig

    f = robot_features(robot_config, camera)
    key, shape = f["image"]
    inputs = {key: PolicyFeature(FeatureType.VISUAL, shape)}
    if state:
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (f["state_dim"],))
    kwargs = {"input_features": inputs,
              "output_features": {"action": PolicyFeature(FeatureType.ACTION, (f["action_dim"],))},
              "chunk_size": chunk_size, "n_action_steps": chunk_size, "dim_model": 32, "n_heads": 2,
              "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1, "latent_dim": 8,
              "n_vae_encoder_layers": 1, "pretrained_backbone_weights": None, "device": "cpu", **overrides}
    return _save(ACTConfig(**kwargs), tiny_stats(f), directory, seed)


def write_tiny_diffusion_checkpoint(directory: str | Path, robot_config: str | Path, seed: int = 0,
                                    camera: str = "", **overrides) -> Path:
    """A random-weight Diffusion Policy checkpoint for ``robot_config`` (2 observation steps, 8 action steps,
    2 denoising steps, a tiny U-Net, no crop)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    f = robot_features(robot_config, camera)
    key, shape = f["image"]
    kwargs = {"input_features": {key: PolicyFeature(FeatureType.VISUAL, shape),
                                 "observation.state": PolicyFeature(FeatureType.STATE, (f["state_dim"],))},
              "output_features": {"action": PolicyFeature(FeatureType.ACTION, (f["action_dim"],))},
              "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "crop_shape": None,
              "pretrained_backbone_weights": None, "use_group_norm": True, "down_dims": (16, 32),
              "diffusion_step_embed_dim": 16, "num_inference_steps": 2, "device": "cpu", **overrides}
    return _save(DiffusionConfig(**kwargs), tiny_stats(f), directory, seed)


def write_act_checkpoint_from_dataset(directory: str | Path, dataset_root: str | Path, chunk_size: int = 16,
                                      seed: int = 0, **overrides) -> Path:
    """A random-weight ACT checkpoint made the way ``lerobot-train`` makes one from a dataset this suite recorded:
    the features from the dataset's metadata (``make_policy(cfg, ds_meta=...)``, LeRobot's
    ``dataset_to_policy_features``) and the normalisation from its ``meta/stats.json``. Tiny dims, no ImageNet
    weights; nothing is trained."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = LeRobotDatasetMetadata("lda/test", root=dataset_root)
    config = ACTConfig(**{"chunk_size": chunk_size, "n_action_steps": chunk_size, "dim_model": 32, "n_heads": 2,
                          "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1, "latent_dim": 8,
                          "n_vae_encoder_layers": 1, "pretrained_backbone_weights": None, "device": "cpu",
                          **overrides})
    torch.manual_seed(seed)
    policy = make_policy(config, ds_meta=meta)
    pre, post = make_pre_post_processors(config, dataset_stats=meta.stats)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def _save(config, stats: dict, directory: str | Path, seed: int) -> Path:
    import torch
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    policy = get_policy_class(config.type)(config)
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


__all__ = ["ACTION_STD", "FINGER_MEAN", "robot_features", "tiny_stats", "write_act_checkpoint_from_dataset",
           "write_tiny_act_checkpoint",
           "write_tiny_diffusion_checkpoint"]
