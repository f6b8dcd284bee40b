"""The authors' four-task training forward (``FlowmatchingActionHead.forward``, ``batch_sampler`` branch).

One batch mixes tasks; it is regrouped to [policy..., inverse..., forward..., video_gen...] (original
order kept within a task) and *every* tensor follows the regrouping (the ``main`` branch regrouped only
the noised tensors, which conditions samples on other samples' context). Then:

| task              | action slot                   | future-observation slot       | time from | loss         |
|-------------------|-------------------------------|-------------------------------|-----------|--------------|
| policy            | noisy actions                 | learnable stand-in vector     | actions   | action vel.  |
| inverse_dynamics  | noisy actions                 | clean future DINO tokens      | actions   | action vel.* |
| forward_dynamics  | clean actions (bucket 1000)   | noisy future DINO tokens      | obs       | obs vel.     |
| video_gen         | learnable action tokens       | noisy future DINO tokens      | obs       | obs vel.     |

(*) only the first ``future_obs_index`` steps of the chunk.

Losses are not weighted: ``loss = policy + inverse + obs`` with ``obs`` one mean over the forward and
video_gen samples together (the authors' ``dynamics_loss``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import UPSTREAM_TASKS

if TYPE_CHECKING:
    from .head import FlowDraws, UpstreamLDA

BATCH_KEYS = ("vl_embs", "text_mask", "curr_images", "future_images", "state", "actions", "action_mask",
              "embodiment")


def task_order(tasks: list[str]) -> tuple[list[int], dict[str, int]]:
    """Indices regrouping a batch by task (policy, inverse, forward, video_gen) and the count of each."""
    unknown = sorted(set(tasks) - set(UPSTREAM_TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the authors' tasks are {list(UPSTREAM_TASKS)}")
    order = [i for task in UPSTREAM_TASKS for i, t in enumerate(tasks) if t == task]
    return order, {task: tasks.count(task) for task in UPSTREAM_TASKS}


def _draw(model: UpstreamLDA, n_action: int, actions: torch.Tensor, n_obs: int,
          future: torch.Tensor) -> FlowDraws:
    from .head import FlowDraws

    action_beta = model.sample_time(n_action, actions.device)  # the authors' draw order
    action_noise = torch.randn_like(actions)
    obs_beta = model.sample_time(n_obs, actions.device)
    return FlowDraws(action_beta, action_noise, obs_beta, torch.randn_like(future))


def training_losses(model: UpstreamLDA, batch: dict[str, torch.Tensor], tasks: list[str],
                    draws: FlowDraws | None = None) -> dict[str, torch.Tensor]:
    """Losses of one mixed-task batch. ``batch`` holds :data:`BATCH_KEYS` (+ optional ``history_actions``)."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"training batch is missing {missing}")
    c = model.config
    order, count = task_order(tasks)
    index = torch.tensor(order, device=batch["vl_embs"].device)
    b = {k: (v[index] if v is not None else None) for k, v in batch.items()}
    emb = b["embodiment"].long()
    n_p, n_i, n_f, n_v = (count[t] for t in UPSTREAM_TASKS)
    dtype = model.registers.dtype
    curr = model.encode_observation(b["curr_images"]).to(dtype)
    future = model.encode_future(b["future_images"]).to(dtype)
    actions = b["actions"].to(dtype)
    context = model._context(b["state"], b.get("history_actions"), emb)

    acting, dreaming = slice(0, n_p + n_i), slice(n_p + n_i, None)
    draws = draws or _draw(model, n_p + n_i, actions[acting], n_f + n_v, future[dreaming])
    t_act = ((c.noise_s - draws.action_beta.to(dtype)) / c.noise_s).reshape(-1)
    t_obs = ((c.noise_s - draws.obs_beta.to(dtype)) / c.noise_s).reshape(-1)
    noisy_actions = (1 - t_act[:, None, None]) * draws.action_noise + t_act[:, None, None] * actions[acting]
    noisy_future = (1 - t_obs[:, None, None]) * draws.obs_noise + t_obs[:, None, None] * future[dreaming]
    buckets_act, buckets_obs = model._buckets(t_act), model._buckets(t_obs)

    clean = model._buckets(torch.ones(n_f, device=actions.device, dtype=dtype))
    action_slot = torch.cat([
        model.action_encoder(noisy_actions, buckets_act, emb[acting]),
        model.action_encoder(actions[n_p + n_i:n_p + n_i + n_f], clean, emb[n_p + n_i:n_p + n_i + n_f]),
        model.action_standin.expand(n_v, -1, -1)], dim=0)
    future_slot = torch.cat([model.future_standin.expand(n_p, future.shape[1], -1), future[n_p:n_p + n_i],
                             noisy_future], dim=0)
    obs_tokens = model.obs_merger(torch.cat([curr, future_slot], dim=-1))
    stream = torch.cat([context, action_slot], dim=1)
    task_vector = torch.cat([model.task_vectors[t].expand(count[t], -1) for t in UPSTREAM_TASKS], dim=0)
    image_out, action_out = model._run_dit(obs_tokens, stream, b["vl_embs"], b["text_mask"],
                                           torch.cat([buckets_act, buckets_obs]), task_vector)

    pred_actions = model.action_decoder(action_out, emb)[:, -actions.shape[1]:]
    target_actions = actions[acting] - draws.action_noise
    pred_future = model._future_tokens_out(image_out)[dreaming]
    target_future = future[dreaming] - draws.obs_noise
    return _losses(model, pred_actions, target_actions, b["action_mask"].to(dtype), pred_future, target_future,
                   (n_p, n_i, n_f, n_v))


def _losses(model: UpstreamLDA, pred_actions: torch.Tensor, target_actions: torch.Tensor, mask: torch.Tensor,
            pred_future: torch.Tensor, target_future: torch.Tensor,
            counts: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
    from .head import masked_mse

    n_p, n_i, n_f, n_v = counts
    k = model.config.future_obs_index
    policy = masked_mse(pred_actions[:n_p], target_actions[:n_p], mask[:n_p])
    inverse = masked_mse(pred_actions[n_p:n_p + n_i, :k], target_actions[n_p:, :k], mask[n_p:n_p + n_i, :k])
    zero = pred_actions.new_zeros(())
    # upstream takes F.mse_loss of an empty tensor (NaN) when no sample denoises the future; we return 0
    obs = F.mse_loss(pred_future, target_future) if n_f + n_v else zero
    forward = F.mse_loss(pred_future[:n_f], target_future[:n_f]) if n_f else zero
    video = F.mse_loss(pred_future[n_f:], target_future[n_f:]) if n_v else zero
    return {
        "loss": policy + inverse + obs, "action_loss": policy, "dynamics_loss": obs,
        "policy_loss": policy, "inverse_dynamics_loss": inverse, "forward_dynamics_loss": forward,
        "video_gen_loss": video, "pred_action_velocity": pred_actions, "pred_obs_velocity": pred_future,
    }
