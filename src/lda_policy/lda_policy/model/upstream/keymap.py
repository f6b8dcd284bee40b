"""Names of the authors' state-dict keys in our upstream model, both ways.

Their flat ``Qwen_MMDiT.state_dict()`` has two parts: ``action_model.*`` (the head, DINOv3 embedded)
and ``qwen_vl_interface.model.*`` (Qwen3-VL under transformers' names). Every head key maps to one of
ours through the table below; every VLM key keeps its transformers name (stored in ``vlm.safetensors``).
A key matching no rule is an error, never silently dropped.
"""

from __future__ import annotations

import re

HEAD_PREFIX = "action_model."
VLM_PREFIX = "qwen_vl_interface.model."

#: (theirs, ours) templates under the head prefix. {i}: a block/layer index, {p}: weight|bias, {rest}: any tail.
RULES: tuple[tuple[str, str], ...] = (
    ("policy_embedding", "task_vectors.policy"),
    ("id_embedding", "task_vectors.inverse_dynamics"),
    ("fd_embedding", "task_vectors.forward_dynamics"),
    ("vg_embedding", "task_vectors.video_gen"),
    ("next_obs_learnable_tokens", "future_standin"),
    ("action_learnable_tokens.weight", "action_standin"),
    ("register_tokens.weight", "registers"),
    ("position_embedding.weight", "positions"),
    ("obs_merger.{p}", "obs_merger.{p}"),
    ("obs_projector.{p}", "obs_head.{p}"),
    ("state_encoder.layer{i}.W", "state_encoder.layer{i}.weight"),
    ("state_encoder.layer{i}.b", "state_encoder.layer{i}.bias"),
    ("action_decoder.layer{i}.W", "action_decoder.layer{i}.weight"),
    ("action_decoder.layer{i}.b", "action_decoder.layer{i}.bias"),
    ("action_encoder.W1.W", "action_encoder.in_proj.weight"),
    ("action_encoder.W1.b", "action_encoder.in_proj.bias"),
    ("action_encoder.W2.W", "action_encoder.mix.weight"),
    ("action_encoder.W2.b", "action_encoder.mix.bias"),
    ("action_encoder.W3.W", "action_encoder.out_proj.weight"),
    ("action_encoder.W3.b", "action_encoder.out_proj.bias"),
    ("model.timestep_encoder.timestep_embedder.linear_{i}.{p}", "dit.time_encoder.linear_{i}.{p}"),
    ("model.blocks.{i}.to_cond.2.{p}", "dit.blocks.{i}.modulation.{p}"),
    ("model.blocks.{i}.joint_attn.to_qkv.0.weight", "dit.blocks.{i}.joint_attn.qkv.image.weight"),
    ("model.blocks.{i}.joint_attn.to_qkv.1.weight", "dit.blocks.{i}.joint_attn.qkv.action.weight"),
    ("model.blocks.{i}.joint_attn.to_out.0.weight", "dit.blocks.{i}.joint_attn.out.image.weight"),
    ("model.blocks.{i}.joint_attn.to_out.1.weight", "dit.blocks.{i}.joint_attn.out.action.weight"),
    ("model.blocks.{i}.img_cross_attn.to_{qkv}.{p}", "dit.blocks.{i}.cross_attn.image.{qkv}.{p}"),
    ("model.blocks.{i}.img_cross_attn.to_out.0.{p}", "dit.blocks.{i}.cross_attn.image.out.{p}"),
    ("model.blocks.{i}.action_cross_attn.to_{qkv}.{p}", "dit.blocks.{i}.cross_attn.action.{qkv}.{p}"),
    ("model.blocks.{i}.action_cross_attn.to_out.0.{p}", "dit.blocks.{i}.cross_attn.action.out.{p}"),
    ("model.blocks.{i}.image_ff.net.0.proj.{p}", "dit.blocks.{i}.ffn.image.up.{p}"),
    ("model.blocks.{i}.image_ff.net.2.{p}", "dit.blocks.{i}.ffn.image.down.{p}"),
    ("model.blocks.{i}.action_ff.net.0.proj.{p}", "dit.blocks.{i}.ffn.action.up.{p}"),
    ("model.blocks.{i}.action_ff.net.2.{p}", "dit.blocks.{i}.ffn.action.down.{p}"),
    ("model.norm.g", "dit.final_norm.image.weight"),
    ("model.action_norm.g", "dit.final_norm.action.weight"),
    ("model.image_proj_out.{p}", "dit.proj_out.image.{p}"),
    ("model.action_proj_out.{p}", "dit.proj_out.action.{p}"),
    # transformers 5.x keeps the DINOv3 encoder layers under `model.` (the authors' vendored copy does not)
    ("vision_encoder.layer.{rest}", "vision_encoder.model.layer.{rest}"),
    ("vision_encoder.embeddings.{rest}", "vision_encoder.embeddings.{rest}"),
    ("vision_encoder.norm.{p}", "vision_encoder.norm.{p}"),
)

_PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias", "qkv": r"q|k|v", "rest": r".+"}


def _compile(template: str) -> re.Pattern[str]:
    pattern, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[pos:m.start()]) + f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(pattern + re.escape(template[pos:]) + r"\Z")


_FORWARD = [(_compile(theirs), ours) for theirs, ours in RULES]
_BACKWARD = [(_compile(ours), theirs) for theirs, ours in RULES]


class KeyMapError(KeyError):
    """A key that no rule maps; the message names it."""


def _apply(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def to_ours(key: str) -> tuple[str, str]:
    """(part, our key) of one of the authors' keys; part is ``"head"`` or ``"vlm"``."""
    if key.startswith(VLM_PREFIX):
        return "vlm", key[len(VLM_PREFIX):]
    if key.startswith(HEAD_PREFIX):
        ours = _apply(key[len(HEAD_PREFIX):], _FORWARD)
        if ours is not None:
            return "head", ours
    raise KeyMapError(f"unexpected key {key!r}: it is not a key of the authors' Qwen_MMDiT "
                      f"(no rule under {HEAD_PREFIX!r} or {VLM_PREFIX!r} maps it)")


def to_theirs(part: str, key: str) -> str:
    """The authors' name of one of our keys (inverse of :func:`to_ours`)."""
    if part == "vlm":
        return VLM_PREFIX + key
    theirs = _apply(key, _BACKWARD)
    if theirs is None:
        raise KeyMapError(f"our key {key!r} has no name in the authors' layout")
    return HEAD_PREFIX + theirs
