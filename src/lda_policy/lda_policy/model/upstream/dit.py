"""The authors' MM-DiT: an image stream (registers + observation tokens) and an action stream share one
joint self-attention per block, each cross-attends to the VLM tokens, and both are modulated by the
time + task vector.

Their block differs from a textbook AdaLN-Zero MM-DiT (and from ours) in ways the checkpoints depend on:
the cross-attention query is an unmodulated LayerNorm; the "post-attention gamma" multiplies the whole
residual stream after both attention residuals (not a gate on the branch); gammas start at 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CrossAttention, FeedForward, ScaledRMSNorm, TimestepEncoder, _merge_heads

STREAMS = ("image", "action")
#: The twelve modulation vectors of a block, in the order its ``modulation`` output is split.
MODULATION = (
    "image_pre_attn_gamma", "image_post_attn_gamma", "image_pre_ff_gamma", "image_post_ff_gamma",
    "action_pre_attn_gamma", "action_post_attn_gamma", "action_pre_ff_gamma", "action_post_ff_gamma",
    "image_pre_attn_beta", "image_pre_ff_beta", "action_pre_attn_beta", "action_pre_ff_beta",
)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


class JointAttention(nn.Module):
    """Both streams, projected by their own bias-free QKV, attend jointly (image first); softmax in float32."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleDict({s: nn.Linear(width, 3 * width, bias=False) for s in STREAMS})
        self.out = nn.ModuleDict({s: nn.Linear(width, width, bias=False) for s in STREAMS})

    def forward(self, image: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for name, x in zip(STREAMS, (image, action), strict=True):
            b, n, _ = x.shape  # feature layout [q | k | v], each heads x head_dim
            parts.append(self.qkv[name](x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4))
        q, k, v = torch.cat(parts, dim=3)
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        weights = logits.float().softmax(dim=-1).to(v.dtype)
        joint = _merge_heads(weights @ v)
        n_image = image.shape[1]
        return self.out["image"](joint[:, :n_image]), self.out["action"](joint[:, n_image:])


class UpstreamBlock(nn.Module):
    """One MM-DiT block of the authors' head (see the module docstring for its order of operations)."""

    def __init__(self, width: int, heads: int, text_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.modulation = nn.Linear(width, len(MODULATION) * width)
        self.joint_attn = JointAttention(width, heads)
        self.cross_attn = nn.ModuleDict({s: CrossAttention(width, text_dim, heads, dropout) for s in STREAMS})
        self.ffn = nn.ModuleDict({s: FeedForward(width, dropout) for s in STREAMS})

    def forward(self, image: torch.Tensor, action: torch.Tensor, text: torch.Tensor,
                text_bias: torch.Tensor | None, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.modulation(F.silu(cond)).unsqueeze(1).chunk(len(MODULATION), dim=-1)
        mod = dict(zip(MODULATION, vectors, strict=True))
        x = {"image": image, "action": action}
        h = {s: _layer_norm(x[s]) * mod[f"{s}_pre_attn_gamma"] + mod[f"{s}_pre_attn_beta"] for s in STREAMS}
        attn_image, attn_action = self.joint_attn(h["image"], h["action"])
        x = {"image": x["image"] + attn_image, "action": x["action"] + attn_action}
        for s in STREAMS:  # the cross-attention query is a plain LayerNorm, no modulation
            x[s] = x[s] + self.cross_attn[s](_layer_norm(x[s]), text, text_bias)
            x[s] = x[s] * mod[f"{s}_post_attn_gamma"]  # scales the whole stream, residual included
            h = _layer_norm(x[s]) * mod[f"{s}_pre_ff_gamma"] + mod[f"{s}_pre_ff_beta"]
            x[s] = x[s] + self.ffn[s](h) * mod[f"{s}_post_ff_gamma"]
        return x["image"], x["action"]


class UpstreamDiT(nn.Module):
    """Registers + blocks + final RMSNorms + output projections (to ``output_dim``) of both streams."""

    def __init__(self, width: int, heads: int, num_layers: int, text_dim: int, output_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.time_encoder = TimestepEncoder(width)
        self.blocks = nn.ModuleList(UpstreamBlock(width, heads, text_dim, dropout) for _ in range(num_layers))
        self.final_norm = nn.ModuleDict({s: ScaledRMSNorm(width) for s in STREAMS})
        self.proj_out = nn.ModuleDict({s: nn.Linear(width, output_dim) for s in STREAMS})

    def forward(self, image: torch.Tensor, action: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                registers: torch.Tensor, buckets: torch.Tensor,
                task_vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (B, N, D) without registers; returns both streams projected, registers dropped."""
        n_reg = registers.shape[0]
        image = torch.cat([registers.unsqueeze(0).expand(image.shape[0], -1, -1).to(image.dtype), image], dim=1)
        text = F.layer_norm(text, (self.text_dim,), eps=1e-5)  # once, before the blocks
        cond = self.time_encoder(buckets) + task_vector
        for block in self.blocks:
            image, action = block(image, action, text, text_mask, cond)
        image = self.final_norm["image"](image[:, n_reg:])
        action = self.final_norm["action"](action)
        return self.proj_out["image"](image), self.proj_out["action"](action)

