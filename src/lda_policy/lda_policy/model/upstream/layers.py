"""Building blocks of the authors' MM-DiT action head, written from their description (ARCHITECTURE.md of
the golden fixture) and checked against their outputs: per-embodiment MLPs, the action encoder, the
time embedding and the MM-DiT itself.

Every numerical convention that differs from our paper-derived MM-DiT (``model/mmdit.py``) is kept on
purpose, because checkpoints trained with the authors' code depend on it; docs/reference/model.md lists them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PerEmbodimentLinear(nn.Module):
    """One linear map per embodiment: ``y = x @ weight[e] + bias[e]`` (weight stored input-major, (E, in, out))."""

    def __init__(self, num_embodiments: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embodiments, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_embodiments, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per slot
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, embodiment: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight[embodiment]) + self.bias[embodiment].unsqueeze(1)


class PerEmbodimentMLP(nn.Module):
    """Two per-embodiment linear layers with a ReLU between (state encoder, action decoder)."""

    def __init__(self, num_embodiments: int, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layer1 = PerEmbodimentLinear(num_embodiments, in_dim, hidden_dim)
        self.layer2 = PerEmbodimentLinear(num_embodiments, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, embodiment: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.relu(self.layer1(x, embodiment)), embodiment)


def bucket_sinusoid(buckets: torch.Tensor, width: int) -> torch.Tensor:
    """[sin(b f_k), cos(b f_k)] with f_k = 10000^(-k / (width/2)), in float32 (the action encoder's time code)."""
    half = width // 2
    scale = torch.log(torch.tensor(10000.0)).to(buckets.device) / half  # a float32 scalar, as upstream rounds it
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32, device=buckets.device) * scale)
    angles = buckets.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ActionEncoder(nn.Module):
    """Per-embodiment action encoder: ``out(swish(mix([in(a), sinusoid(bucket)])))``, one bucket per sample."""

    def __init__(self, num_embodiments: int, action_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.in_proj = PerEmbodimentLinear(num_embodiments, action_dim, width)
        self.mix = PerEmbodimentLinear(num_embodiments, 2 * width, width)
        self.out_proj = PerEmbodimentLinear(num_embodiments, width, width)

    def forward(self, actions: torch.Tensor, buckets: torch.Tensor, embodiment: torch.Tensor) -> torch.Tensor:
        features = self.in_proj(actions, embodiment)
        time_code = bucket_sinusoid(buckets.unsqueeze(1).expand(-1, actions.shape[1]), self.width)
        hidden = self.mix(torch.cat([features, time_code.to(features.dtype)], dim=-1), embodiment)
        return self.out_proj(F.silu(hidden), embodiment)


class TimestepEncoder(nn.Module):
    """diffusers-style 256-channel sinusoid of the bucket ([cos, sin], frequency shift 1), then an MLP."""

    CHANNELS = 256

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(self.CHANNELS, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        half = self.CHANNELS // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=buckets.device) / (half - 1)
        angles = buckets.float().unsqueeze(-1) * torch.exp(exponent)
        code = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(code)))


class ScaledRMSNorm(nn.Module):
    """``x / ||x|| * sqrt(width) * weight`` (x-transformers' RMSNorm: no eps inside, norm clamped at 1e-12)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = width ** 0.5
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.weight


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """Tokens attend to the VLM tokens; the float 1/0 text mask is *added* to the logits (padding is only
    down-weighted by e, not excluded), as diffusers does with a float mask."""

    def __init__(self, width: int, text_dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(text_dim, width)
        self.v = nn.Linear(text_dim, width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in (self.q(x), self.k(text), self.v(text)))
        bias = None if text_bias is None else text_bias[:, None, None, :].to(q.dtype)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.dropout(self.out(_merge_heads(attended)))


class FeedForward(nn.Module):
    """Linear(w, 4w), tanh-GELU, Linear(4w, w), with dropout after the GELU and after the output."""

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.dropout(F.gelu(self.up(x), approximate="tanh"))))
