"""LDAModel: the latent dynamics action model (MM-DiT + per-embodiment action encoders/decoders).

One network serves four objectives, chosen per sample by a task embedding and by which inputs are
clean, noisy or replaced by a learnable stand-in token (paper section III-B):

============================  =========================  ============================
task                          action chunk tokens        future-frame tokens
============================  =========================  ============================
policy                        noisy (predicted)          future stand-in
forward dynamics              clean (condition)          noisy (predicted)
inverse dynamics              noisy (predicted)          clean (condition)
visual forecasting            action stand-in            noisy (predicted)
============================  =========================  ============================

The action stream is [history actions, proprio state, action chunk]; the visual stream is
[register tokens, DINO tokens of the history frames, future-frame tokens]. Everything the public
methods take and return is in physical units; the model normalises with the statistics of its
checkpoint (:class:`~lda_policy.model.normalization.Normalizer`).

Shape letters in the comments (see also :mod:`~lda_policy.model.mmdit` for H, D_h, M):

==========  ==========================================================================
B           batch (samples)
T_h         history actions, ``config.time.history_action_steps``
T_c         action chunk, ``config.time.chunk_size``
T_a         action-stream tokens, T_h + 1 (state) + T_c
F_o         history (observation) frames, ``config.num_obs_frames``
F           future frames, ``config.num_future_frames``
P           patch tokens per frame, gh * gw = ``config.tokens_per_frame``
R           register tokens, ``config.num_registers``
T_v         visual-stream tokens, R + (F_o + F) * P
L           language tokens (the cross-attention context adds one null token: 1 + L)
A, S        padded action / state width, ``config.max_action_dim`` / ``config.max_state_dim``
C           DINO latent channels, ``config.latent_dim``
E           language token width, ``config.lang_dim``
D           hidden size, ``config.hidden_size``
==========  ==========================================================================
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lda_common.schema import Quality
from torch import nn

from .config import DINO_GRID, PRESETS, EmbodimentSpec, LDAConfig, Task, allowed_tasks
from .encoders import pool_latents
from .flow import euler_sample, interpolate, sample_time
from .mmdit import EmbodimentLinear, MMDiT, TimestepEmbedder, sincos_2d
from .normalization import Normalizer
from .observation import (
    InputError,
    Observation,
    bool_tensor,
    check_finite,
    check_range,
    check_tensor,
    float_tensor,
    int_tensor,
)

_ACTION_TASKS = (Task.POLICY, Task.INVERSE_DYNAMICS)  # tasks whose noisy modality is the action chunk


class LDAModel(nn.Module):
    """LDA-1B style latent dynamics action model. Build with :meth:`from_preset` or :meth:`from_pretrained`.

    Training: :meth:`compute_loss` (also ``model(batch)``, so DDP/FSDP wrappers see the training pass)
    on a batch that mixes tasks, roles and embodiments sample by sample.
    Inference: :meth:`policy`, :meth:`forward_dynamics`, :meth:`inverse_dynamics`, :meth:`forecast`.
    :meth:`denoise` is the raw network on normalised tensors; :meth:`compile_denoiser` compiles it.
    """

    def __init__(self, config: LDAConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        h, e = c.hidden_size, c.max_embodiments
        self.bf16_autocast = True  # inference runs the denoiser under bf16 autocast on CUDA
        self._denoise = self.denoise  # replaced by a compiled version in compile_denoiser()
        self.normalizer = Normalizer(c)

        self.action_encoder = EmbodimentLinear(e, c.max_action_dim, h)
        self.state_encoder = EmbodimentLinear(e, c.max_state_dim, h)
        self.action_decoder = EmbodimentLinear(e, h, c.max_action_dim, zero_init=True)
        self.latent_encoder = nn.Linear(c.latent_dim, h)
        self.latent_decoder = nn.Linear(h, c.latent_dim)
        nn.init.zeros_(self.latent_decoder.weight)
        nn.init.zeros_(self.latent_decoder.bias)
        self.language_proj = nn.Sequential(nn.LayerNorm(c.lang_dim), nn.Linear(c.lang_dim, h))
        # Fine-tuned last VLM layers (paper, appendix A): the language input is then the frozen VLM's
        # hidden states entering them, and this tail makes the tokens (see :meth:`apply_vlm_tail`).
        self.vlm_tail = None
        if c.condition.finetune_layers:
            from .vlm_tail import VLMTail

            spec = c.condition.vlm_text
            if spec is None or spec.hidden_size != c.lang_dim:
                raise ValueError(f"condition.finetune_layers={c.condition.finetune_layers} needs the VLM's text "
                                 f"shape (condition.vlm_text) with hidden_size = lang_dim {c.lang_dim}, got {spec}")
            self.vlm_tail = VLMTail(spec, c.condition.finetune_layers)
        # Always-valid context token: cross-attention never sees an all-masked row.
        self.null_language = nn.Parameter(torch.randn(1, 1, h) * 0.02)

        self.time_embed = TimestepEmbedder(h, c.flow.timestep_scale)
        self.task_embed = nn.Embedding(len(Task), h)
        nn.init.normal_(self.task_embed.weight, std=0.02)

        n_action_tokens = c.time.history_action_steps + 1 + c.time.chunk_size
        self.action_pos = nn.Parameter(torch.randn(1, n_action_tokens, h) * 0.02)
        self.frame_embed = nn.Parameter(torch.randn(1, c.num_obs_frames + c.num_future_frames, 1, h) * 0.02)
        self.register_buffer("spatial_pos", sincos_2d(c.latent_grid, h), persistent=False)
        self.registers = nn.Parameter(torch.randn(1, c.num_registers, h) * 0.02)
        # Stand-ins for absent or invalid inputs (paper: "register tokens ... as placeholders").
        self.action_standin = nn.Parameter(torch.randn(h) * 0.02)
        self.state_standin = nn.Parameter(torch.randn(h) * 0.02)
        self.future_standin = nn.Parameter(torch.randn(h) * 0.02)

        self.mmdit = MMDiT(h, c.num_layers, c.num_heads, c.mlp_ratio)

        dims = torch.arange(c.max_action_dim)
        sdims = torch.arange(c.max_state_dim)
        amask = torch.zeros(e, c.max_action_dim, dtype=torch.bool)
        smask = torch.zeros(e, c.max_state_dim, dtype=torch.bool)
        for i, spec in enumerate(c.embodiments):
            amask[i] = dims < spec.action_dim
            smask[i] = sdims < spec.state_dim
        self.register_buffer("action_dim_mask", amask, persistent=False)
        self.register_buffer("state_dim_mask", smask, persistent=False)
        allowed = torch.zeros(len(Quality), len(Task), dtype=torch.bool)
        for role in Quality:
            for task in allowed_tasks(role):
                allowed[role, task] = True
        self.register_buffer("role_task_allowed", allowed, persistent=False)

    # ------------------------------------------------------------------ construction / checkpoints

    @classmethod
    def from_preset(cls, name: str, device: torch.device | str = "cpu", **overrides: Any) -> LDAModel:
        """Builds preset ``name`` (see ``PRESETS``) with random weights and identity statistics.

        ``overrides`` replace config fields (e.g. ``embodiments=(EmbodimentSpec(...),)``,
        ``lang_dim=384``). ``device="meta"`` builds the structure without allocating memory.
        """
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        config = replace(PRESETS[name], **overrides)
        with torch.device(device):
            return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu",
                        preset: str | None = None) -> LDAModel:
        """Loads a checkpoint written by :meth:`save_pretrained`.

        With ``preset`` given, the checkpoint's architecture must equal that preset's, else a
        :class:`~lda_policy.model.checkpoint.CheckpointError` names the differing fields.
        """
        from .checkpoint import load_checkpoint

        return load_checkpoint(cls, directory, device=device, preset=preset)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json``, ``model.safetensors`` and ``normalization.json`` into ``directory``."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    def load_pretrained(self, directory: str | Path) -> None:
        """Loads weights and statistics of a checkpoint with this model's exact config into this model."""
        from .checkpoint import load_into

        load_into(self, directory)

    def embodiment(self, name: str) -> EmbodimentSpec:
        return self.config.embodiments[self.config.embodiment_index(name)]

    def compile_denoiser(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` the denoiser used by training and the four inference calls."""
        self._denoise = torch.compile(self.denoise, **compile_kwargs)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute MM-DiT block activations during backward (memory for compute, lda-1b training)."""
        self.mmdit.gradient_checkpointing = enabled

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (works on the meta device); ``total`` is their sum."""
        groups = {
            "mmdit/self_attention": ("qkv", "q_norm", "k_norm", "attn_out"),
            "mmdit/cross_attention": ("norm_cross", "cross_q", "cross_q_norm", "cross_out", "cross_kv",
                                      "cross_k_norm"),
            "mmdit/ffn": ("mlp",),
            "mmdit/adaln": ("ada_ln", "final_ada_ln"),
        }
        counts = dict.fromkeys(list(groups) + [
            "embodiment_action_state_encoders_decoders", "latent_encoder_decoder", "language_projection",
            "time_and_task_embedding", "tokens_and_positions", "vlm_tail"], 0)
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            parts = name.split(".")
            if parts[0] == "mmdit":
                key = next(g for g, names in groups.items() if any(n in parts for n in names))
            elif parts[0] in ("action_encoder", "state_encoder", "action_decoder"):
                key = "embodiment_action_state_encoders_decoders"
            elif parts[0] in ("latent_encoder", "latent_decoder"):
                key = "latent_encoder_decoder"
            elif parts[0] in ("language_proj",):
                key = "language_projection"
            elif parts[0] == "vlm_tail":
                key = "vlm_tail"
            elif parts[0] in ("time_embed", "task_embed"):
                key = "time_and_task_embedding"
            else:
                key = "tokens_and_positions"
            counts[key] += p.numel()
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------ denoiser

    def denoise(
        self,
        embodiment_id: torch.Tensor,
        task: torch.Tensor,
        t: torch.Tensor,
        history_actions: torch.Tensor,
        history_present: torch.Tensor,
        state: torch.Tensor,
        state_present: torch.Tensor,
        actions: torch.Tensor,
        actions_present: torch.Tensor,
        obs_latents: torch.Tensor,
        future_latents: torch.Tensor,
        future_present: torch.Tensor,
        language: torch.Tensor,
        language_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity of the flow on normalised tensors (no validation; use the public methods).

        Shapes (letters: module docstring): embodiment_id/task/t (B,); history_actions (B, T_h, A) with
        history_present (B,); state (B, S) with state_present (B,); actions (B, T_c, A) with
        actions_present (B, T_c); obs_latents (B, F_o, P, C); future_latents (B, F, P, C) with
        future_present (B, F); language (B, L, E) with language_mask (B, L).
        ``*_present`` False puts the stand-in token there. Padded action/state dimensions must be 0.
        Returns the action velocity (B, T_c, A) and future-latent velocity (B, F, P, C).
        """
        c = self.config
        b = task.shape[0]
        # Action stream [history actions, state, chunk]; a stand-in (D,) replaces absent inputs.
        hist_tok = self.action_encoder(history_actions, embodiment_id)  # (B, T_h, D)
        hist_tok = torch.where(history_present[:, None, None], hist_tok, self.action_standin)  # (B, T_h, D)
        state_tok = self.state_encoder(state[:, None], embodiment_id)  # (B, 1, S) -> (B, 1, D)
        state_tok = torch.where(state_present[:, None, None], state_tok, self.state_standin)  # (B, 1, D)
        chunk_tok = self.action_encoder(actions, embodiment_id)  # (B, T_c, D)
        chunk_tok = torch.where(actions_present[..., None], chunk_tok, self.action_standin)  # (B, T_c, D)
        # + action_pos (1, T_a, D): a learnt position per action-stream token
        action_tokens = torch.cat([hist_tok, state_tok, chunk_tok], dim=1) + self.action_pos  # (B, T_a, D)

        # Visual stream [registers, history frames, future frames].
        obs_tok = self.latent_encoder(obs_latents)  # (B, F_o, P, D)
        fut_tok = self.latent_encoder(future_latents)  # (B, F, P, D)
        fut_tok = torch.where(future_present[:, :, None, None], fut_tok, self.future_standin)  # (B, F, P, D)
        # + frame_embed (1, F_o + F, 1, D): which frame; + spatial_pos (P, D): where in the frame.
        frames = torch.cat([obs_tok, fut_tok], dim=1) + self.frame_embed + self.spatial_pos  # (B, F_o + F, P, D)
        # registers (1, R, D) -> (B, R, D); frames -> (B, (F_o + F) * P, D)
        visual_tokens = torch.cat([self.registers.expand(b, -1, -1), frames.flatten(1, 2)], dim=1)  # (B, T_v, D)

        cond = self.time_embed(t) + self.task_embed(task)  # (B, D)
        # Context: the always-valid null token (1, 1, D) -> (B, 1, D), then language (B, L, E) -> (B, L, D).
        ctx = torch.cat([self.null_language.expand(b, -1, -1), self.language_proj(language)], dim=1)  # (B, 1 + L, D)
        ctx_mask = torch.cat([torch.ones_like(language_mask[:, :1]), language_mask], dim=1)  # (B, 1 + L)

        out_a, out_v = self.mmdit([action_tokens, visual_tokens], cond, ctx, ctx_mask)  # (B, T_a, D), (B, T_v, D)
        # The last T_c action tokens are the chunk: (B, T_c, D) -> (B, T_c, A).
        v_actions = self.action_decoder(out_a[:, -c.time.chunk_size:], embodiment_id)
        future_start = c.num_registers + c.num_obs_frames * c.tokens_per_frame  # R + F_o * P: future tokens follow
        # (B, F * P, D) -> (B, F * P, C) -> (B, F, P, C)
        v_future = self.latent_decoder(out_v[:, future_start:]).view(b, c.num_future_frames,
                                                                     c.tokens_per_frame, c.latent_dim)
        return v_actions, v_future

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training pass, :meth:`compute_loss` (LeRobot convention: ``loss, info = policy(batch)``)."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss of a batch mixing tasks, roles and embodiments sample by sample.

        Keys (B samples; physical units; widths W_a <= max_action_dim, W_s <= max_state_dim, zero
        padded beyond each embodiment's own dims; grid = config.latent_grid or 14x14):

        - ``embodiment_id`` (B,) int: slot in ``config.embodiments``
        - ``task`` (B,) int: 0 policy, 1 forward dynamics, 2 inverse dynamics, 3 forecasting
        - ``role`` (B,) int: 0 high, 1 low, 2 actionless (see ``allowed_tasks``)
        - ``obs_latents`` (B, num_obs_frames, gh, gw, latent_dim) float
        - ``future_latents`` (B, num_future_frames, gh, gw, latent_dim) float
        - ``future_latents_is_pad`` (B, num_future_frames) bool, optional (default all False)
        - ``state`` (B, W_s) float; ``state_valid`` (B,) bool, optional (default all True)
        - ``history_actions`` (B, history_action_steps, W_a) float
        - ``actions`` (B, chunk_size, W_a) float; ``action_is_pad`` (B, chunk_size) bool, optional
        - ``action_valid`` (B,) bool: False = the sample has no usable actions (values ignored, may be NaN)
        - ``language`` (B, L, lang_dim) float; ``language_mask`` (B, L) bool
        - ``language_positions`` (B, 3, L) int, with fine-tuned VLM layers only: ``language`` then holds
          the hidden states entering them (see :meth:`apply_vlm_tail`)

        Role semantics are enforced here, not trusted to the caller: invalid actions never enter
        as tokens (history and chunk become stand-ins), a disallowed (role, task) pair, a task whose
        target or clean condition is missing (no valid actions, no valid future frame) contributes
        exactly zero loss and gradient. Entries flagged as padding never enter the network (zeros
        where they are noised targets, stand-ins where they are clean conditions) and carry no loss.

        Returns the mean loss over samples with an active loss and ``info`` with ``loss``,
        ``loss/<task>``, ``count/<task>`` (active samples per task), ``loss/action``, ``loss/visual``.
        """
        c = self.config
        # Normalised, zero where invalid or padded; widths padded to A / S, latents pooled to P per frame.
        inputs = self._training_inputs(batch)
        task, eid = inputs["task"], inputs["embodiment_id"]  # (B,), (B,)
        b, dev = task.shape[0], task.device
        actions = inputs["actions"]  # (B, T_c, A) clean chunk
        future = inputs["future_latents"]  # (B, F, P, C) clean future latents
        action_is_pad = inputs["action_is_pad"]  # (B, T_c)
        act_valid, fut_valid = inputs["action_valid"], ~inputs["future_latents_is_pad"]  # (B,), (B, F)
        # Which loss each sample carries, all (B,) bool.
        any_future = fut_valid.any(dim=1)
        is_action_task = (task == Task.POLICY) | (task == Task.INVERSE_DYNAMICS)
        allowed = self.role_task_allowed[inputs["role"], task]
        action_loss_on = allowed & is_action_task & act_valid & ((task != Task.INVERSE_DYNAMICS) | any_future)
        visual_loss_on = allowed & ~is_action_task & any_future & ((task != Task.FORWARD_DYNAMICS) | act_valid)

        t = sample_time(b, c.flow, dev)  # (B,)
        noise_a = torch.randn_like(actions)  # (B, T_c, A)
        noise_v = torch.randn_like(future)  # (B, F, P, C)
        noisy_a, target_a = interpolate(actions, noise_a, t)  # 2 x (B, T_c, A)
        noisy_v, target_v = interpolate(future, noise_v, t)  # 2 x (B, F, P, C)
        dim_mask = self.action_dim_mask[eid]  # (B, A): the embodiment's own action dims
        noisy_a = torch.where(dim_mask[:, None, :], noisy_a, 0.0)  # (B, T_c, A), padded dims stay 0

        # Network inputs per task (table in the module docstring).
        forward_dyn = task == Task.FORWARD_DYNAMICS  # (B,)
        actions_in = torch.where(is_action_task[:, None, None], noisy_a, actions)  # (B, T_c, A)
        # (B, T_c): False = action stand-in token
        actions_present = act_valid[:, None] & (is_action_task[:, None] | (forward_dyn[:, None] & ~action_is_pad))
        future_in = torch.where(is_action_task[:, None, None, None], future, noisy_v)  # (B, F, P, C)
        # (B, F): False = future stand-in token
        future_present = ~is_action_task[:, None] | ((task == Task.INVERSE_DYNAMICS)[:, None] & fut_valid)

        # v_a (B, T_c, A), v_v (B, F, P, C)
        v_a, v_v = self._denoise(eid, task, t, inputs["history_actions"], act_valid, inputs["state"],
                                 inputs["state_valid"], actions_in, actions_present, inputs["obs_latents"],
                                 future_in, future_present, inputs["language"], inputs["language_mask"])

        # Action loss: squared error averaged over the real steps and dims of each sample.
        a_mask = (~action_is_pad)[:, :, None] & dim_mask[:, None, :]  # (B, T_c, A)
        a_err = torch.where(a_mask, (v_a.float() - target_a) ** 2, 0.0).sum(dim=(1, 2))  # (B,)
        loss_a = a_err / a_mask.sum(dim=(1, 2)).clamp(min=1)  # (B,)
        # Visual loss: squared error averaged per frame over P and C, then over the real future frames.
        v_err = ((v_v.float() - target_v) ** 2).mean(dim=(2, 3))  # (B, F)
        loss_v = torch.where(fut_valid, v_err, 0.0).sum(dim=1) / fut_valid.sum(dim=1).clamp(min=1)  # (B,)
        per_sample = (torch.where(action_loss_on, c.action_loss_weight * loss_a, 0.0)
                      + torch.where(visual_loss_on, c.visual_loss_weight * loss_v, 0.0))  # (B,)
        active = action_loss_on | visual_loss_on  # (B,)
        loss = per_sample.sum() / active.sum().clamp(min=1)  # ()

        info: dict[str, float] = {"loss": float(loss.detach())}
        with torch.no_grad():
            for tk in Task:
                sel = (task == tk) & active
                n = int(sel.sum())
                info[f"count/{tk.name.lower()}"] = n
                info[f"loss/{tk.name.lower()}"] = float(per_sample[sel].sum() / max(n, 1))
            info["loss/action"] = float(loss_a[action_loss_on].sum() / max(int(action_loss_on.sum()), 1))
            info["loss/visual"] = float(loss_v[visual_loss_on].sum() / max(int(visual_loss_on.sum()), 1))
        return loss, info

    def _training_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validates the batch (names the bad key) and returns normalised, padded, sanitised tensors."""
        c = self.config
        dev = self.action_pos.device
        missing = [k for k in ("embodiment_id", "task", "role", "obs_latents", "future_latents", "state",
                               "history_actions", "actions", "action_valid", "language", "language_mask")
                   if k not in batch]
        if missing:
            raise InputError(f"batch is missing key(s) {missing}")
        task = int_tensor(batch, "task", dev)
        if task.dim() != 1:
            raise InputError(f"batch['task'] must have shape (B,), got {tuple(task.shape)}")
        b = task.shape[0]
        eid = int_tensor(batch, "embodiment_id", dev, (b,), 0, len(c.embodiments) - 1)
        role = int_tensor(batch, "role", dev, (b,), 0, len(Quality) - 1)
        check_range("task", task, 0, len(Task) - 1)
        opt_bool = {"future_latents_is_pad": (b, c.num_future_frames), "state_valid": (b,),
                    "action_is_pad": (b, c.time.chunk_size)}
        defaults = {"future_latents_is_pad": False, "state_valid": True, "action_is_pad": False}
        out: dict[str, torch.Tensor] = {"task": task, "embodiment_id": eid, "role": role}
        out["action_valid"] = bool_tensor(batch, "action_valid", dev, (b,))
        for key, shape in opt_bool.items():
            out[key] = (bool_tensor(batch, key, dev, shape) if key in batch
                        else torch.full(shape, defaults[key], dtype=torch.bool, device=dev))

        out["obs_latents"] = self._latents(batch["obs_latents"], "obs_latents", b, c.num_obs_frames, None)
        out["future_latents"] = self._latents(batch["future_latents"], "future_latents", b,
                                              c.num_future_frames, ~out["future_latents_is_pad"])
        present = set(eid.tolist())
        action_need = max(c.embodiments[i].action_dim for i in present)
        state_need = max(c.embodiments[i].state_dim for i in present)
        amask, smask = self.action_dim_mask[eid][:, None], self.state_dim_mask[eid]
        # key: (leading shape, narrowest allowed width, padded width, used-entry mask)
        layout = {
            "actions": ((b, c.time.chunk_size), action_need, c.max_action_dim,
                        amask & out["action_valid"][:, None, None] & ~out["action_is_pad"][:, :, None]),
            "history_actions": ((b, c.time.history_action_steps), action_need, c.max_action_dim,
                                amask & out["action_valid"][:, None, None]),
            "state": ((b,), state_need, c.max_state_dim, smask & out["state_valid"][:, None]),
        }
        for key, (lead, need, width, mask) in layout.items():
            x = float_tensor(batch, key, dev)
            if x.dim() != len(lead) + 1 or tuple(x.shape[:-1]) != lead or not need <= x.shape[-1] <= width:
                raise InputError(f"batch[{key!r}] must have shape {lead + ('W',)} with {need} <= W <= {width}, "
                                 f"got {tuple(x.shape)}")
            x = F.pad(x, (0, width - x.shape[-1]))
            check_finite(key, x, mask)
            x = torch.where(mask, x, 0.0)  # invalid or padded entries become exactly 0, never NaN
            x = (self.normalizer.normalize_state(x, eid) if key == "state"
                 else self.normalizer.normalize_action(x, eid))
            out[key] = torch.where(mask, x, 0.0)
        out["language"], out["language_mask"] = self._language(batch["language"], batch["language_mask"], b)
        if self.vlm_tail is not None:
            if "language_positions" not in batch:
                raise InputError(f"this model fine-tunes the last {c.condition.finetune_layers} VLM layer(s): the "
                                 "batch needs 'language_positions' (B, 3, L) with the VLM hidden states entering "
                                 "them in 'language' (a latent cache built with encoders.vlm_finetune_layers)")
            out["language"] = self.apply_vlm_tail(out["language"], batch["language_positions"], out["language_mask"])
        elif "language_positions" in batch:
            raise InputError("the batch holds VLM hidden states for fine-tuned layers ('language_positions'), but "
                             "this model has none (condition.finetune_layers = 0): its cache and model disagree")
        return out

    def apply_vlm_tail(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The language tokens (B, L, lang_dim) float32 of a model with fine-tuned VLM layers: its
        :class:`~.vlm_tail.VLMTail` on the frozen VLM's hidden states entering them (B, L, lang_dim), their
        RoPE ids (B, 3, L) and mask (B, L); padded rows are zero. Training, evaluation and deployment all
        make the tokens through this one method."""
        if self.vlm_tail is None:
            raise InputError("this model has no fine-tuned VLM layers (condition.finetune_layers = 0)")
        dev = self.action_pos.device
        if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (mask.shape[0], 3, mask.shape[1]):
            shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise InputError(f"language_positions must have shape ({mask.shape[0]}, 3, {mask.shape[1]}), got {shape}")
        mask = mask.to(dev)
        tokens = self.vlm_tail(hidden.to(dev, torch.float32), positions.to(dev), mask)
        return torch.where(mask[..., None], tokens.float(), 0.0)

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def policy(self, obs: Observation | dict[str, Any], num_steps: int | None = None,
               generator: torch.Generator | None = None, seed: int | None = None,
               noise_scale: float = 1.0) -> torch.Tensor:
        """Action chunk (B, chunk_size, action_dim) in physical units for the current observation.

        ``noise_scale`` scales the Gaussian the flow starts from: 1 samples the learnt distribution, 0
        integrates from its mean (deterministic: no chunk-to-chunk sampling jitter)."""
        if not 0.0 <= noise_scale <= 1.0:
            raise ValueError(f"noise_scale must be in [0, 1], got {noise_scale}")
        return self._sample(obs, Task.POLICY, None, None, num_steps, generator, seed, noise_scale)

    @torch.inference_mode()
    def forward_dynamics(self, obs: Observation | dict[str, Any], actions: torch.Tensor,
                         num_steps: int | None = None, generator: torch.Generator | None = None,
                         seed: int | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Future DINO latents (B, num_future_frames, gh, gw, latent_dim) after executing ``actions``.

        ``actions``: (B, chunk_size, action_dim) physical, the chunk starting at t = 0. ``noise``: the
        flow's starting point (B, num_future_frames, tokens_per_frame, latent_dim), normalised units;
        given, it replaces ``generator``/``seed`` (the same noise for every row compares rows fairly).
        """
        return self._sample(obs, Task.FORWARD_DYNAMICS, actions, None, num_steps, generator, seed, noise=noise)

    @torch.inference_mode()
    def inverse_dynamics(self, obs: Observation | dict[str, Any], future_latents: torch.Tensor,
                         num_steps: int | None = None, generator: torch.Generator | None = None,
                         seed: int | None = None) -> torch.Tensor:
        """Action chunk (B, chunk_size, action_dim) that leads to ``future_latents``.

        ``future_latents``: (B, num_future_frames, gh, gw, latent_dim) DINO units (model grid or 14x14).
        """
        return self._sample(obs, Task.INVERSE_DYNAMICS, None, future_latents, num_steps, generator, seed)

    @torch.inference_mode()
    def forecast(self, obs: Observation | dict[str, Any], num_steps: int | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Future DINO latents (B, num_future_frames, gh, gw, latent_dim) without knowing the actions
        (``noise``: as in :meth:`forward_dynamics`)."""
        return self._sample(obs, Task.FORECAST, None, None, num_steps, generator, seed, noise=noise)

    def _sample(self, obs: Observation | dict[str, Any], task: Task, actions: torch.Tensor | None,
                future: torch.Tensor | None, num_steps: int | None, generator: torch.Generator | None,
                seed: int | None, noise_scale: float = 1.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        o = self._observation_inputs(obs)
        b, eid, dev = o["b"], o["embodiment_id"], o["device"]
        spec = c.embodiments[o["slot"]]
        steps = c.flow.num_inference_steps if num_steps is None else int(num_steps)
        act_shape = (b, c.time.chunk_size, c.max_action_dim)
        fut_shape = (b, c.num_future_frames, c.tokens_per_frame, c.latent_dim)
        clean_a = torch.zeros(act_shape, device=dev)
        clean_v = torch.zeros(fut_shape, device=dev)
        if task == Task.FORWARD_DYNAMICS:
            a = check_tensor("actions", actions, (b, c.time.chunk_size, spec.action_dim), dev)
            a = F.pad(a, (0, c.max_action_dim - spec.action_dim))
            clean_a = torch.where(self.action_dim_mask[eid][:, None], self.normalizer.normalize_action(a, eid), 0.0)
        if task == Task.INVERSE_DYNAMICS:
            clean_v = self._latents(future, "future_latents", b, c.num_future_frames, None)
        shape = act_shape if task in _ACTION_TASKS else fut_shape
        if noise is None:
            noise = self._noise(shape, generator, seed, dev) * noise_scale
        else:
            noise = check_tensor("noise", noise, shape, dev)
        task_ids = torch.full((b,), int(task), dtype=torch.long, device=dev)
        act_present = torch.full((b, c.time.chunk_size), task != Task.FORECAST, device=dev)
        fut_present = torch.full((b, c.num_future_frames), task != Task.POLICY, device=dev)
        dim_mask = self.action_dim_mask[eid][:, None]
        use_bf16 = self.bf16_autocast and dev.type == "cuda"
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if task in _ACTION_TASKS:
                acts, fut = torch.where(dim_mask, x, 0.0), clean_v
            else:
                acts, fut = clean_a, x
            with amp:
                v_a, v_v = self._denoise(eid, task_ids, t, o["history_actions"], o["history_present"], o["state"],
                                o["state_present"], acts, act_present, o["obs_latents"], fut, fut_present,
                                o["language"], o["language_mask"])
            return v_a if task in _ACTION_TASKS else v_v

        x = euler_sample(velocity, noise, steps)
        if task in _ACTION_TASKS:
            return self.normalizer.unnormalize_action(x, eid)[..., : spec.action_dim]
        return self.normalizer.unnormalize_latent(x).view(b, c.num_future_frames, *c.latent_grid, c.latent_dim)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None, seed: int | None,
               device: torch.device) -> torch.Tensor:
        if device.type == "meta":
            return torch.randn(shape, device=device)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        if generator is None:
            return torch.randn(shape, device=device)
        return torch.randn(shape, generator=generator, device=generator.device).to(device)

    def _observation_inputs(self, obs: Observation | dict[str, Any]) -> dict[str, Any]:
        """Validates an observation and returns normalised model inputs."""
        c = self.config
        if isinstance(obs, dict):
            unknown = set(obs) - set(Observation.__dataclass_fields__)
            if unknown:
                raise InputError(f"observation has unknown field(s) {sorted(unknown)}")
            obs = Observation(**obs)
        if not isinstance(obs, Observation):
            raise InputError(f"obs must be an Observation or dict, got {type(obs).__name__}")
        try:
            slot = c.embodiment_index(obs.embodiment)
        except KeyError as err:
            raise InputError(f"obs.embodiment: {err.args[0]}") from None
        spec = c.embodiments[slot]
        dev = self.action_pos.device
        lat = obs.history_latents
        if not isinstance(lat, torch.Tensor) or lat.dim() != 5:
            raise InputError("obs.history_latents must be a (B, frames, gh, gw, C) tensor, got "
                             f"{tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__}")
        b = lat.shape[0]
        eid = torch.full((b,), slot, dtype=torch.long, device=dev)
        out: dict[str, Any] = {"b": b, "slot": slot, "embodiment_id": eid, "device": dev}
        out["obs_latents"] = self._latents(lat, "history_latents", b, c.num_obs_frames, None)
        mask = obs.language_mask
        if mask is None and isinstance(obs.language, torch.Tensor) and obs.language.dim() == 3:
            mask = torch.ones(obs.language.shape[:2], dtype=torch.bool)
        out["language"], out["language_mask"] = self._language(obs.language, mask, b)

        if obs.state is None:
            out["state"] = torch.zeros(b, c.max_state_dim, device=dev)
            out["state_present"] = torch.zeros(b, dtype=torch.bool, device=dev)
        else:
            s = check_tensor("state", obs.state, (b, spec.state_dim), dev)
            s = F.pad(s, (0, c.max_state_dim - spec.state_dim))
            out["state"] = torch.where(self.state_dim_mask[eid], self.normalizer.normalize_state(s, eid), 0.0)
            out["state_present"] = torch.ones(b, dtype=torch.bool, device=dev)
        n_hist = c.time.history_action_steps
        if obs.history_actions is None:
            out["history_actions"] = torch.zeros(b, n_hist, c.max_action_dim, device=dev)
            out["history_present"] = torch.zeros(b, dtype=torch.bool, device=dev)
        else:
            a = check_tensor("history_actions", obs.history_actions, (b, n_hist, spec.action_dim), dev)
            a = F.pad(a, (0, c.max_action_dim - spec.action_dim))
            out["history_actions"] = torch.where(self.action_dim_mask[eid][:, None],
                                                 self.normalizer.normalize_action(a, eid), 0.0)
            out["history_present"] = torch.ones(b, dtype=torch.bool, device=dev)
        return out

    def _latents(self, x: Any, name: str, b: int, frames: int, valid: torch.Tensor | None) -> torch.Tensor:
        """(B, frames, gh, gw, C) physical (model grid or 14x14) -> normalised (B, frames, P, C)."""
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        grids = {tuple(c.latent_grid), DINO_GRID}
        if x.dim() != 5 or x.shape[:2] != (b, frames) or tuple(x.shape[2:4]) not in grids or x.shape[4] != c.latent_dim:
            raise InputError(f"{name} must have shape ({b}, {frames}, gh, gw, {c.latent_dim}) with (gh, gw) in "
                             f"{sorted(grids)}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"{name} must be a float tensor, got {x.dtype}")
        x = x.to(self.action_pos.device, torch.float32)
        mask = None if valid is None else valid[:, :, None, None, None]
        check_finite(name, x, mask)
        if mask is not None:
            x = torch.where(mask, x, 0.0)
        x = pool_latents(x, c.latent_grid)
        return self.normalizer.normalize_latent(x.flatten(2, 3))

    def _language(self, lang: Any, mask: Any, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.action_pos.device
        if not isinstance(lang, torch.Tensor) or lang.dim() != 3 or lang.shape[0] != b \
                or lang.shape[2] != self.config.lang_dim:
            shape = tuple(lang.shape) if isinstance(lang, torch.Tensor) else type(lang).__name__
            raise InputError(f"language must have shape ({b}, L, {self.config.lang_dim}), got {shape}")
        if not lang.is_floating_point():
            raise InputError(f"language must be a float tensor, got {lang.dtype}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(lang.shape[:2]):
            raise InputError(f"language_mask must be a bool tensor of shape {tuple(lang.shape[:2])}")
        lang, mask = lang.to(dev, torch.float32), mask.to(dev)
        check_finite("language", lang, mask[..., None])
        return torch.where(mask[..., None], lang, 0.0), mask
