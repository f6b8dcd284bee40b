"""Typed configuration of the authors' released LDA-1B (``Qwen_MMDiT`` with the MM-DiT flow-matching head).

The values come from the authors' ``config.yaml`` (``framework.action_model`` and friends); this module
reads that file's dict and keeps only what fixes the function and the weight shapes. Names follow ours;
the comment after each field names the authors' key. Plain Python (no torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lda_common.config import ConfigError

#: The authors' DiT size table (``MMDiT_ActionHeader.DiTConfig``): (heads, head_dim); width = heads * head_dim.
DIT_SIZES: dict[str, tuple[int, int]] = {
    "DiT-B": (12, 64),
    "DiT-L": (32, 48),
    "DiT-XL": (32, 64),
}

#: The four tasks in the order the authors' head regroups a batch (policy, inverse, forward, video_gen).
UPSTREAM_TASKS: tuple[str, ...] = ("policy", "inverse_dynamics", "forward_dynamics", "video_gen")


@dataclass(frozen=True)
class DinoSpec:
    """The DINOv3 ViT embedded in the action model (transformers ``DINOv3ViTConfig`` fields)."""

    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    num_register_tokens: int = 4
    patch_size: int = 16
    image_size: int = 224  # the image processor resizes to this square
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    layerscale_value: float = 1.0
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    use_gated_mlp: bool = False
    hidden_act: str = "gelu"
    pos_embed_rescale: float | None = 2.0  # random RoPE rescaling, train mode only (never used here)

    @property
    def tokens_per_frame(self) -> int:
        """CLS + registers + patches of one frame."""
        return 1 + self.num_register_tokens + (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class UpstreamConfig:
    """The action model of the authors' ``Qwen_MMDiT`` (their ``FlowmatchingActionHead``), as configured."""

    name: str = "lda-1b-upstream"
    num_heads: int = 32  # DiTConfig[action_model_type].num_attention_heads
    head_dim: int = 48  # DiTConfig[action_model_type].attention_head_dim
    num_layers: int = 16  # diffusion_model_cfg.num_layers
    hidden_size: int = 2560  # hidden_size: encoder/decoder MLP width; also the DiT output_dim
    dit_output_dim: int = 2560  # diffusion_model_cfg.output_dim
    text_dim: int = 2560  # diffusion_model_cfg.cross_attention_dim (the VLM width)
    action_dim: int = 138  # action_dim (padded)
    state_dim: int = 58  # state_dim
    action_horizon: int = 16  # future_action_window_size + 1
    history_actions: int = 5  # history action tokens of the data config (0: none)
    num_views: int = 1  # num_views
    obs_horizon: int = 2  # obs_horizon: current frames per view
    max_embodiments: int = 32  # max_num_embodiments
    num_registers: int = 32  # num_target_vision_tokens (DiT registers, not a pooling size)
    max_seq_len: int = 1024  # max_seq_len (rows of the learned position table)
    add_pos_embed: bool = True  # add_pos_embed
    future_obs_index: int = 16  # future_obs_index: inverse-dynamics loss covers the first steps only
    num_timestep_buckets: int = 1000  # num_timestep_buckets
    num_inference_steps: int = 4  # num_inference_timesteps
    noise_beta_alpha: float = 1.5  # noise_beta_alpha
    noise_beta_beta: float = 1.0  # noise_beta_beta
    noise_s: float = 0.999  # noise_s
    dropout: float = 0.2  # diffusion_model_cfg.dropout: cross-attention output, FFN (training only)
    dino: DinoSpec = field(default_factory=DinoSpec)
    vlm: dict[str, Any] | None = None  # Qwen3-VL config (transformers Qwen3VLConfig dict), when imported
    vlm_prompt: str = "{instruction}"  # datasets.vla_data.CoT_prompt

    def __post_init__(self) -> None:
        checks = {
            "num_heads": self.num_heads > 0, "head_dim": self.head_dim > 0, "num_layers": self.num_layers > 0,
            "action_horizon": self.action_horizon > 0, "obs_horizon": self.obs_horizon > 0,
            "num_views": self.num_views > 0, "max_embodiments": self.max_embodiments > 0,
            "future_obs_index": 0 < self.future_obs_index,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"must be positive, got {getattr(self, key)!r}", key)
        needed = self.num_views * self.dino.tokens_per_frame + self.history_actions + self.obs_horizon \
            + self.action_horizon
        if self.add_pos_embed and needed > self.max_seq_len:
            raise ConfigError(f"{needed} tokens need more position rows than max_seq_len={self.max_seq_len}",
                              "max_seq_len")

    @property
    def inner_dim(self) -> int:
        """Width of both DiT streams (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def obs_tokens(self) -> int:
        """Image-stream tokens before the registers: every DINO token of every view."""
        return self.num_views * self.dino.tokens_per_frame

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _get(mapping: Any, dotted: str, default: Any = None) -> Any:
    node = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def from_authors_config(full: dict[str, Any], *, dino: DinoSpec | None = None,
                        vlm: dict[str, Any] | None = None, history_actions: int | None = None,
                        dit_sizes: dict[str, tuple[int, int]] | None = None) -> UpstreamConfig:
    """Our config from the authors' whole config (the dict of their ``config.yaml``).

    ``dino``/``vlm`` describe the two pretrained encoders, which their config names by path only.
    ``history_actions`` defaults to 5 (their "two_history" GR-1 data configs); their config does not
    record it, it comes from the data config. Raises ``ConfigError`` naming a missing or unknown key.
    """
    action = _get(full, "framework.action_model")
    if not isinstance(action, dict):
        raise ConfigError("missing: the authors' config has no framework.action_model section",
                          "framework.action_model")
    sizes = {**DIT_SIZES, **(dit_sizes or {})}
    kind = action.get("action_model_type")
    if kind not in sizes:
        raise ConfigError(f"unknown DiT size {kind!r}; known: {sorted(sizes)}",
                          "framework.action_model.action_model_type")
    if action.get("vision_encoder_type", "dinov3") != "dinov3":
        raise ConfigError(f"only the dinov3 vision encoder is supported, got {action['vision_encoder_type']!r}",
                          "framework.action_model.vision_encoder_type")
    dit = action.get("diffusion_model_cfg") or {}
    if dit.get("positional_embeddings") not in (None, "none"):
        raise ConfigError(f"positional_embeddings {dit['positional_embeddings']!r} is not the released model's "
                          "(null)", "framework.action_model.diffusion_model_cfg.positional_embeddings")
    required = ("action_dim", "state_dim", "future_action_window_size", "hidden_size", "max_num_embodiments")
    for key in required:
        if key not in action:
            raise ConfigError("missing", f"framework.action_model.{key}")
    heads, head_dim = sizes[kind]
    return UpstreamConfig(
        num_heads=heads, head_dim=head_dim, num_layers=int(dit.get("num_layers", 16)),
        hidden_size=int(action["hidden_size"]), dit_output_dim=int(dit.get("output_dim", action["hidden_size"])),
        text_dim=int(dit.get("cross_attention_dim") or (vlm or {}).get("text_config", {}).get("hidden_size", 2560)),
        action_dim=int(action["action_dim"]), state_dim=int(action["state_dim"]),
        action_horizon=int(action["future_action_window_size"]) + 1,
        history_actions=5 if history_actions is None else history_actions,
        num_views=int(action.get("num_views", 1)), obs_horizon=int(action.get("obs_horizon", 2)),
        max_embodiments=int(action["max_num_embodiments"]),
        num_registers=int(action.get("num_target_vision_tokens", 32)),
        max_seq_len=int(action.get("max_seq_len", 1024)), add_pos_embed=bool(action.get("add_pos_embed", True)),
        future_obs_index=int(action.get("future_obs_index", 5)),
        num_timestep_buckets=int(action.get("num_timestep_buckets", 1000)),
        num_inference_steps=int(action.get("num_inference_timesteps", 4)),
        noise_beta_alpha=float(action.get("noise_beta_alpha", 1.5)),
        noise_beta_beta=float(action.get("noise_beta_beta", 1.0)), noise_s=float(action.get("noise_s", 0.999)),
        dropout=float(dit.get("dropout", 0.2)),
        dino=dino or DinoSpec(), vlm=vlm,
        vlm_prompt=str(_get(full, "datasets.vla_data.CoT_prompt", "{instruction}")),
    )


#: The published RoboCasa configuration (Wayer2/LDA-robocasa, as pinned by third parties): DiT-L, 16 layers,
#: hidden 2560, DINOv3 ViT-S/16, Qwen3-VL-4B (2560-d), 138-d actions, 58-d state, 32 embodiments.
PUBLISHED_ROBOCASA = UpstreamConfig()

#: The upstream option's named architectures (random weights from :class:`UpstreamLDA`, real ones from an import).
UPSTREAM_PRESETS: dict[str, UpstreamConfig] = {"lda-1b-upstream": PUBLISHED_ROBOCASA}
