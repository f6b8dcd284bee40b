"""Multi-modal diffusion transformer (MM-DiT) blocks, paper section III-D.

Two token streams (actions, visual) keep their own norms, QKV/output projections and FFNs, but
attend jointly in one self-attention per block (SD3-style). Language/VLM tokens are keys and values
of a cross-attention whose queries are the action and visual tokens. Each stream is modulated by
AdaLN-Zero from the conditioning vector c (diffusion time + task embedding): shift/scale before
self-attention and FFN, gates after them, all initialised to zero so every block starts as the
identity.

Shapes in the comments: B batch; T_i tokens of stream i (in LDAModel T_a action tokens and T_v
visual tokens) and T = sum_i T_i, all streams together; L context tokens (in LDAModel 1 + L: a null
token plus the language tokens); D hidden size; H heads; D_h = D / H head width; M = mlp_ratio * D
FFN width.

Also the input layers around it: per-embodiment linear maps, the flow-time embedder, 2-D sin-cos positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x (B, T_i, D), shift/scale (B, D); scale is a residual around 1 so zero init is identity."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _Stream(nn.Module):
    """Per-modality weights of one block."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        head_dim = hidden // num_heads
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))  # c (B, D) -> (B, 6D)
        self.norm_attn = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)  # (B, T_i, D) -> (B, T_i, 3D)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)  # QK-norm keeps bf16 attention logits tame
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
        self.cross_q = nn.Linear(hidden, hidden)
        self.cross_q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.cross_out = nn.Linear(hidden, hidden)
        self.norm_mlp = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)  # M
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_hidden, hidden))


class MMDiTBlock(nn.Module):
    """One block: joint self-attention -> cross-attention to language -> per-stream FFN."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, num_streams: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.streams = nn.ModuleList(_Stream(hidden, num_heads, mlp_ratio) for _ in range(num_streams))
        # Keys/values belong to the language modality, so one projection serves all query streams.
        self.cross_kv = nn.Linear(hidden, 2 * hidden)  # (B, L, D) -> (B, L, 2D)
        self.cross_k_norm = nn.RMSNorm(hidden // num_heads, eps=1e-6)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """Splits heads: (B, N, D) -> (B, H, N, D_h), for any token count N (T_i or L)."""
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        """Merges heads: (B, H, N, D_h) -> (B, N, D)."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, xs: list[torch.Tensor], c: torch.Tensor, ctx: torch.Tensor,
                ctx_mask: torch.Tensor) -> list[torch.Tensor]:
        """xs: per-stream tokens [(B, T_i, D)]; c: (B, D); ctx: (B, L, D); ctx_mask: (B, L) bool, True = real.

        Returns the updated streams, shaped as ``xs``.
        """
        lengths = [x.shape[1] for x in xs]  # [T_i], summing to T
        # Per stream 6 x (B, D): shift, scale, gate of the self-attention, then shift, scale, gate of the FFN.
        mods = [s.ada_ln(c).chunk(6, dim=-1) for s in self.streams]

        # 1. Joint self-attention: per-stream QKV projections, one attention over all T tokens.
        qs, ks, vs = [], [], []
        for x, s, (shift, scale, _, _, _, _) in zip(xs, self.streams, mods, strict=True):
            # modulate(norm(x)) (B, T_i, D) -> qkv (B, T_i, 3D) -> q, k, v: 3 x (B, T_i, D)
            q, k, v = s.qkv(modulate(s.norm_attn(x), shift, scale)).chunk(3, dim=-1)
            qs.append(s.q_norm(self._heads(q)))  # (B, H, T_i, D_h)
            ks.append(s.k_norm(self._heads(k)))  # (B, H, T_i, D_h)
            vs.append(self._heads(v))  # (B, H, T_i, D_h)
        out = F.scaled_dot_product_attention(torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2))  # (B, H, T, D_h)
        out = self._merge(out).split(lengths, dim=1)  # (B, T, D) -> per stream [(B, T_i, D)]
        # Gated residual: x (B, T_i, D) + gate (B, 1, D) * attn_out (B, T_i, D).
        xs = [x + gate.unsqueeze(1) * s.attn_out(o)
              for x, o, s, (_, _, gate, _, _, _) in zip(xs, out, self.streams, mods, strict=True)]

        # 2. Cross-attention: queries from every stream, keys/values from the context tokens.
        k, v = self.cross_kv(ctx).chunk(2, dim=-1)  # 2 x (B, L, D)
        k, v = self.cross_k_norm(self._heads(k)), self._heads(v)  # 2 x (B, H, L, D_h)
        # Per stream (B, T_i, D) -> (B, H, T_i, D_h), concatenated over streams -> (B, H, T, D_h).
        q = torch.cat([s.cross_q_norm(self._heads(s.cross_q(s.norm_cross(x))))
                       for x, s in zip(xs, self.streams, strict=True)], dim=2)
        # ctx_mask (B, L) -> (B, 1, 1, L): every head and query sees the same real context tokens.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx_mask[:, None, None, :])  # (B, H, T, D_h)
        out = self._merge(out).split(lengths, dim=1)  # (B, T, D) -> per stream [(B, T_i, D)]
        # Ungated residual (cross_out starts at zero): [(B, T_i, D)].
        xs = [x + s.cross_out(o) for x, o, s in zip(xs, out, self.streams, strict=True)]

        # 3. Per-stream FFN, modulated and gated: (B, T_i, D) -> (B, T_i, M) -> (B, T_i, D); gate (B, 1, D).
        return [x + gate.unsqueeze(1) * s.mlp(modulate(s.norm_mlp(x), shift, scale))
                for x, s, (_, _, _, shift, scale, gate) in zip(xs, self.streams, mods, strict=True)]


class MMDiT(nn.Module):
    """Stack of :class:`MMDiTBlock` plus the final AdaLN of each stream (output heads live outside)."""

    def __init__(self, hidden: int, num_layers: int, num_heads: int, mlp_ratio: float,
                 num_streams: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MMDiTBlock(hidden, num_heads, mlp_ratio, num_streams)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada_ln = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
                                          for _ in range(num_streams))
        self.gradient_checkpointing = False  # recompute block activations in backward to save memory
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for s in block.streams:
                # AdaLN-Zero: zero modulation; cross-attention output zeroed so the block is the identity.
                nn.init.zeros_(s.ada_ln[-1].weight)
                nn.init.zeros_(s.cross_out.weight)
        for ada in self.final_ada_ln:
            nn.init.zeros_(ada[-1].weight)

    def forward(self, xs: list[torch.Tensor], c: torch.Tensor, ctx: torch.Tensor,
                ctx_mask: torch.Tensor) -> list[torch.Tensor]:
        """Shapes as :meth:`MMDiTBlock.forward`; returns [(B, T_i, D)] after each stream's final AdaLN."""
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                xs = checkpoint(block, xs, c, ctx, ctx_mask, use_reentrant=False)
            else:
                xs = block(xs, c, ctx, ctx_mask)
        out = []
        for x, ada in zip(xs, self.final_ada_ln, strict=True):
            shift, scale = ada(c).chunk(2, dim=-1)  # 2 x (B, D)
            out.append(modulate(self.final_norm(x), shift, scale))  # (B, T_i, D)
        return out


# ---------------------------------------------------------------------------------------------- input layers


class EmbodimentLinear(nn.Module):
    """A linear layer with one weight set per embodiment slot, picked per sample."""

    def __init__(self, num_slots: int, in_dim: int, out_dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_slots, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_slots, out_dim))
        bound = 0.0 if zero_init else math.sqrt(6.0 / (in_dim + out_dim))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """x: (B, N, in_dim), slot: (B,) -> (B, N, out_dim)."""
        return torch.baddbmm(self.bias[slot].unsqueeze(1), x, self.weight[slot].to(x.dtype))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time followed by an MLP (DiT)."""

    def __init__(self, hidden: int, scale: float, freq_dim: int = 256) -> None:
        super().__init__()
        self.scale = scale
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = (t.float() * self.scale)[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (gh * gw, dim): half the channels encode the row, half the column."""
    def one_axis(n: int, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))
        args = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    rows = one_axis(grid[0], dim // 2)[:, None, :].expand(grid[0], grid[1], dim // 2)
    cols = one_axis(grid[1], dim // 2)[None, :, :].expand(grid[0], grid[1], dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid[0] * grid[1], dim).float()
