"""``UpstreamLDA``: the authors' LDA-1B action model (their ``FlowmatchingActionHead``), same function.

Inputs are what their head receives: VLM features ``vl_embs`` with a float 1/0 mask, camera frames
0..255 (current frames ordered view-major then time, and the future frame), a sin/cos state per
observation time, optional history actions, normalised padded actions with a mask, embodiment ids.

- :meth:`UpstreamLDA.training_losses`: the four-task training forward (``batch_sampler`` branch
  behaviour: every tensor regrouped by task), returning the losses per task;
- :meth:`UpstreamLDA.predict_action`: Euler sampling of the policy (normalised actions);
- :meth:`UpstreamLDA.video_gen`: Euler sampling of the future DINO tokens (no position embeddings, as
  upstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta

from .config import UPSTREAM_TASKS, UpstreamConfig
from .dit import UpstreamDiT
from .layers import ActionEncoder, PerEmbodimentMLP
from .vision import build_dino, encode_frames

CLEAN_BUCKET_FRACTION = 1.0  # history / clean actions are encoded at the last bucket ("t = 1")


@dataclass
class FlowDraws:
    """The random draws of one training forward, in the authors' call order (pass them to replay a run).

    ``*_beta`` are Beta(alpha, beta) samples (t = (s - beta) / s); the noises are standard normal.
    """

    action_beta: torch.Tensor  # (n_policy + n_inverse,)
    action_noise: torch.Tensor  # like their actions
    obs_beta: torch.Tensor  # (n_forward + n_video_gen,)
    obs_noise: torch.Tensor  # like their future DINO tokens


class UpstreamLDA(nn.Module):
    """The authors' action model; parameter names are ours (``upstream/keymap.py`` maps theirs)."""

    def __init__(self, config: UpstreamConfig, build_vision: bool = True) -> None:
        super().__init__()
        self.config = c = config
        d, dino = c.inner_dim, c.dino.hidden_size
        self.dit = UpstreamDiT(d, c.num_heads, c.num_layers, c.text_dim, c.dit_output_dim, c.dropout)
        self.state_encoder = PerEmbodimentMLP(c.max_embodiments, c.state_dim, c.hidden_size, d)
        self.action_encoder = ActionEncoder(c.max_embodiments, c.action_dim, d)
        self.action_decoder = PerEmbodimentMLP(c.max_embodiments, c.dit_output_dim, c.hidden_size, c.action_dim)
        self.obs_merger = nn.Linear(dino * (c.obs_horizon + 1), d)  # current frames + the future slot, per token
        self.obs_head = nn.Linear(c.hidden_size, dino)
        self.registers = nn.Parameter(0.02 * torch.randn(c.num_registers, d))
        self.future_standin = nn.Parameter(0.02 * torch.randn(dino))  # the future slot of policy samples
        self.action_standin = nn.Parameter(0.02 * torch.randn(c.action_horizon, d))  # action slot of video_gen
        self.task_vectors = nn.ParameterDict({t: nn.Parameter(0.02 * torch.randn(d)) for t in UPSTREAM_TASKS})
        self.positions = nn.Parameter(0.02 * torch.randn(c.max_seq_len, d)) if c.add_pos_embed else None
        self.vision_encoder = build_dino(c.dino) if build_vision else None

    def train(self, mode: bool = True) -> UpstreamLDA:
        """Train mode for the trainable parts; DINOv3 stays in eval mode (frozen, deterministic: in train
        mode it would rescale its RoPE coordinates at random, as it did in the authors' training)."""
        super().train(mode)
        if self.vision_encoder is not None:
            self.vision_encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but DINOv3 (the authors freeze ``action_model.vision_encoder``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("vision_encoder.")]

    # ------------------------------------------------------------------------------------------ pieces
    def encode_observation(self, curr_images: torch.Tensor) -> torch.Tensor:
        """Current frames -> (B, V*N, C*T) DINO tokens, channels interleaved over time (index c*T + t)."""
        c = self.config
        tokens = encode_frames(self.vision_encoder, curr_images, c.dino.image_size)
        b = curr_images.shape[0]
        tokens = tokens.view(b, c.num_views, c.obs_horizon, *tokens.shape[1:])
        return tokens.permute(0, 1, 3, 4, 2).reshape(b, c.num_views * tokens.shape[3], -1)

    def encode_future(self, future_images: torch.Tensor) -> torch.Tensor:
        """Future frames -> (B, V*N, C) DINO tokens (the quantity forward dynamics and video_gen denoise)."""
        tokens = encode_frames(self.vision_encoder, future_images, self.config.dino.image_size)
        return tokens.view(future_images.shape[0], -1, tokens.shape[-1])

    def _buckets(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.config.num_timestep_buckets).long()

    def _context(self, state: torch.Tensor, history_actions: torch.Tensor | None,
                 embodiment: torch.Tensor) -> torch.Tensor:
        """The clean head of the action stream: [history actions (bucket 1000), state tokens]."""
        parts = [self.state_encoder(state.to(self.registers.dtype), embodiment)]
        if history_actions is not None:
            clean = torch.full((history_actions.shape[0],), CLEAN_BUCKET_FRACTION, device=state.device)
            parts.insert(0, self.action_encoder(history_actions.to(self.registers.dtype), self._buckets(clean),
                                                embodiment))
        return torch.cat(parts, dim=1)

    def _run_dit(self, obs_tokens: torch.Tensor, action_stream: torch.Tensor, vl_embs: torch.Tensor,
                 text_mask: torch.Tensor | None, buckets: torch.Tensor, task_vector: torch.Tensor,
                 with_positions: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if with_positions and self.positions is not None:
            n_obs, n_act = obs_tokens.shape[1], action_stream.shape[1]
            obs_tokens = obs_tokens + self.positions[:n_obs]
            action_stream = action_stream + self.positions[n_obs:n_obs + n_act]
        return self.dit(obs_tokens, action_stream, vl_embs, text_mask, self.registers, buckets, task_vector)

    def _future_tokens_out(self, image_out: torch.Tensor) -> torch.Tensor:
        # upstream keeps the last V*patches + (CLS + registers) tokens: all of them for one view
        dino = self.config.dino
        keep = self.config.num_views * (dino.image_size // dino.patch_size) ** 2 + 1 + dino.num_register_tokens
        return self.obs_head(image_out)[:, -keep:]

    def sample_time(self, n: int, device: torch.device) -> torch.Tensor:
        """Beta(alpha, beta) draws (the authors' time sampler; t = (s - draw) / s)."""
        c = self.config
        return Beta(c.noise_beta_alpha, c.noise_beta_beta).sample((n,)).to(device)

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, vl_embs: torch.Tensor, text_mask: torch.Tensor | None, curr_images: torch.Tensor | None,
                       state: torch.Tensor, embodiment: torch.Tensor, history_actions: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, num_steps: int | None = None,
                       curr_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk (B, horizon, action_dim): Euler from noise (t = 0) to data (t = 1).

        ``curr_tokens``: :meth:`encode_observation` of the frames, when the caller caches DINO tokens
        (then ``curr_images`` is not used).
        """
        c = self.config
        steps = num_steps or c.num_inference_steps
        b = vl_embs.shape[0]
        curr = curr_tokens if curr_tokens is not None else self.encode_observation(curr_images)
        curr = curr.to(self.registers.dtype)
        slot = self.future_standin.expand(b, curr.shape[1], -1)
        obs_tokens = self.obs_merger(torch.cat([curr, slot], dim=-1))
        context = self._context(state, history_actions, embodiment)
        task = self.task_vectors["policy"].expand(b, -1)
        actions = noise if noise is not None else torch.randn(b, c.action_horizon, c.action_dim, device=vl_embs.device)
        actions = actions.to(self.registers.dtype)
        for step in range(steps):
            buckets = torch.full((b,), int(step / steps * c.num_timestep_buckets), device=vl_embs.device)
            stream = torch.cat([context, self.action_encoder(actions, buckets, embodiment)], dim=1)
            _, action_out = self._run_dit(obs_tokens, stream, vl_embs, text_mask, buckets, task)
            velocity = self.action_decoder(action_out, embodiment)[:, -c.action_horizon:]
            actions = actions + velocity / steps
        return actions

    @torch.no_grad()
    def video_gen(self, vl_embs: torch.Tensor, text_mask: torch.Tensor | None, curr_images: torch.Tensor,
                  state: torch.Tensor, embodiment: torch.Tensor, history_actions: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None, num_steps: int | None = None) -> torch.Tensor:
        """Predicted future DINO tokens (B, V*N, C) of the forecasting task; no position embeddings (upstream)."""
        b = vl_embs.shape[0]
        stream = torch.cat([self._context(state, history_actions, embodiment),
                            self.action_standin.expand(b, -1, -1)], dim=1)
        return self._sample_future(vl_embs, text_mask, self.encode_observation(curr_images), stream, "video_gen",
                                   noise, num_steps, with_positions=False)

    @torch.no_grad()
    def forward_dynamics(self, vl_embs: torch.Tensor, text_mask: torch.Tensor | None, curr_images: torch.Tensor | None,
                         state: torch.Tensor, embodiment: torch.Tensor, actions: torch.Tensor,
                         history_actions: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                         num_steps: int | None = None, curr_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted future DINO tokens (B, V*N, C) after the normalised action chunk ``actions``.

        Not a function of the authors' code (they only train this task): it samples the forward-dynamics
        task the way their ``video_gen`` samples forecasting, with the inputs their training gives it
        (clean actions at bucket 1000, ``fd_embedding``, position embeddings).
        """
        b = vl_embs.shape[0]
        clean = self._buckets(torch.ones(b, device=vl_embs.device))
        action_tokens = self.action_encoder(actions.to(self.registers.dtype), clean, embodiment)
        stream = torch.cat([self._context(state, history_actions, embodiment), action_tokens], dim=1)
        curr = curr_tokens if curr_tokens is not None else self.encode_observation(curr_images)
        return self._sample_future(vl_embs, text_mask, curr, stream, "forward_dynamics", noise, num_steps)

    def _sample_future(self, vl_embs: torch.Tensor, text_mask: torch.Tensor | None, curr: torch.Tensor,
                       stream: torch.Tensor, task_name: str, noise: torch.Tensor | None, num_steps: int | None,
                       with_positions: bool = True) -> torch.Tensor:
        """Euler from noise to the future DINO tokens, the action stream held fixed."""
        c = self.config
        steps = num_steps or c.num_inference_steps
        b = vl_embs.shape[0]
        curr = curr.to(self.registers.dtype)
        future = noise if noise is not None else torch.randn(b, curr.shape[1], c.dino.hidden_size,
                                                             device=vl_embs.device)
        future = future.to(self.registers.dtype)
        task = self.task_vectors[task_name].expand(b, -1)
        for step in range(steps):
            buckets = torch.full((b,), int(step / steps * c.num_timestep_buckets), device=vl_embs.device)
            obs_tokens = self.obs_merger(torch.cat([curr, future], dim=-1))
            image_out, _ = self._run_dit(obs_tokens, stream, vl_embs, text_mask, buckets, task,
                                         with_positions=with_positions)
            future = future + self._future_tokens_out(image_out) / steps
        return future

    # ------------------------------------------------------------------------------------------ training
    def training_losses(self, batch: dict[str, torch.Tensor], tasks: list[str],
                        draws: FlowDraws | None = None) -> dict[str, torch.Tensor]:
        """The authors' training forward; see :func:`.training.training_losses`."""
        from .training import training_losses

        return training_losses(self, batch, tasks, draws)

    def num_parameters(self) -> dict[str, int]:
        """Parameters per part (DiT, encoders, DINO, tokens)."""
        parts: dict[str, int] = {}
        for name, p in self.named_parameters():
            top = name.split(".", 1)[0]
            key = top if top in ("dit", "state_encoder", "action_encoder", "action_decoder", "vision_encoder") \
                else "other"
            parts[key] = parts.get(key, 0) + p.numel()
        return parts


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum((pred - target)^2 * mask) / (sum(mask) + 1e-8), the authors' action loss."""
    return (F.mse_loss(pred, target, reduction="none") * mask).sum() / (mask.sum() + 1e-8)
