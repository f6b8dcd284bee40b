"""Runs an imported upstream model on a golden fixture (the layout of ``upstream_golden/``: inputs, recorded
random draws and outputs of the authors' code) and reports the largest absolute difference per output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .head import FlowDraws, UpstreamLDA
from .vision import encode_frames

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class GoldenResult:
    name: str  # the fixture's name of the output
    max_abs_diff: float

    def ok(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.max_abs_diff <= tolerance  # NaN is never ok


class Fixture:
    """The three files of a golden fixture directory."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        missing = [n for n in ("inputs.safetensors", "outputs.safetensors", "golden.json")
                   if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a golden fixture directory: missing {missing}")
        self.inputs = load_file(str(directory / "inputs.safetensors"))
        self.outputs = load_file(str(directory / "outputs.safetensors"))
        self.golden = json.loads((directory / "golden.json").read_text())
        self.results: list[GoldenResult] = []

    def compare(self, name: str, value: torch.Tensor | float) -> None:
        expected = self.outputs[name] if name in self.outputs else torch.tensor(self._scalar(name))
        value = torch.as_tensor(value).detach().double().reshape(expected.shape)
        self.results.append(GoldenResult(name, float((value - expected.double()).abs().max())))

    def _scalar(self, name: str) -> float:
        return float(self.golden["scalars_batch_sampler_tree"][name])


def _batch(inputs: dict[str, torch.Tensor], prefix: str, index: list[int] | None = None) -> dict[str, torch.Tensor]:
    keys = {"vl_embs": "vl_embs", "text_mask": "vl_attention_mask", "curr_images": "curr_images_u8_BVTHWC",
            "future_images": "future_images_u8_BVTHWC", "state": "state", "history_actions": "history_actions",
            "actions": "actions", "action_mask": "action_mask", "embodiment": "embodiment_id"}
    batch = {ours: inputs[f"{prefix}.{theirs}"] for ours, theirs in keys.items()}
    batch["embodiment"] = batch["embodiment"].long()
    return {k: v[index] for k, v in batch.items()} if index is not None else batch


def _draws(inputs: dict[str, torch.Tensor], prefix: str) -> FlowDraws:
    return FlowDraws(inputs[f"{prefix}.draw.beta_action_group"], inputs[f"{prefix}.draw.action_noise"],
                     inputs[f"{prefix}.draw.beta_obs_group"], inputs[f"{prefix}.draw.obs_noise"])


def _training(model: UpstreamLDA, fx: Fixture) -> None:
    batches = fx.golden["batches"]
    out = model.training_losses(_batch(fx.inputs, "fwd"), list(batches["canonical_tasks"]),
                                _draws(fx.inputs, "fwd_canon"))
    for key in ("loss", "action_loss", "dynamics_loss"):
        fx.compare(f"fwd_canon.out.{key}", out[key])
    for key in ("policy_loss", "inverse_dynamics_loss", "forward_dynamics_loss", "video_gen_loss"):
        fx.compare(f"fwd_canon.derived.{key}", out[key])
    fx.compare("fwd_canon.pred.action_velocity", out["pred_action_velocity"])
    fx.compare("fwd_canon.pred.obs_velocity", out["pred_obs_velocity"])
    perm = list(batches["shuffled_perm_of_canonical"])
    out = model.training_losses(_batch(fx.inputs, "fwd", perm), list(batches["shuffled_tasks"]),
                                _draws(fx.inputs, "fwd_shuffled"))
    for key in ("loss", "action_loss", "dynamics_loss"):
        fx.compare(f"fwd_shuffled.out.{key}", out[key])


def _inference(model: UpstreamLDA, fx: Fixture) -> None:
    i = fx.inputs
    dino = encode_frames(model.vision_encoder, i["fwd.curr_images_u8_BVTHWC"], model.config.dino.image_size)
    fx.compare("fwd_canon.dino_out.last_hidden_state.call0", dino)
    args = (i["pred.vl_embs"], i["pred.vl_attention_mask"], i["pred.curr_images_u8_BVTHWC"], i["pred.state"],
            i["pred.embodiment_id"].long())
    fx.compare("predict_hist.normalized_actions", model.predict_action(
        *args, history_actions=i["pred.history_actions"], noise=i["predict_hist.draw.initial_noise"]))
    fx.compare("predict_nohist.normalized_actions", model.predict_action(
        *args, history_actions=None, noise=i["predict_nohist.draw.initial_noise"]))
    fx.compare("videogen.pred_dino_tokens", model.video_gen(
        *args, history_actions=i["pred.history_actions"], noise=i["videogen.draw.initial_noise"]))


def _float64(model: UpstreamLDA, fx: Fixture) -> None:
    """The same scenarios in float64 against the fixture's float64 replay (``f64.*``): the float32 parts
    upstream keeps (sinusoids, joint-attention softmax) are float32 here too, so this agrees to ~1e-12."""
    import copy

    model = copy.deepcopy(model).double()
    i = {k: (v.double() if v.is_floating_point() or k.endswith("u8_BVTHWC") else v) for k, v in fx.inputs.items()}
    batch = _batch(i, "fwd")
    out = model.training_losses(batch, list(fx.golden["batches"]["canonical_tasks"]), _draws(i, "fwd_canon"))
    for key in ("loss", "action_loss", "dynamics_loss"):
        fx.compare(f"f64.fwd_canon.out.{key}", out[key])
    fx.compare("f64.fwd_canon.dino_out.last_hidden_state.call0",
               encode_frames(model.vision_encoder, i["fwd.curr_images_u8_BVTHWC"], model.config.dino.image_size))
    args = (i["pred.vl_embs"], i["pred.vl_attention_mask"], i["pred.curr_images_u8_BVTHWC"], i["pred.state"],
            i["pred.embodiment_id"].long())
    fx.compare("f64.predict_hist.normalized_actions", model.predict_action(
        *args, history_actions=i["pred.history_actions"], noise=i["predict_hist.draw.initial_noise"]))
    fx.compare("f64.predict_nohist.normalized_actions", model.predict_action(
        *args, history_actions=None, noise=i["predict_nohist.draw.initial_noise"]))
    fx.compare("f64.videogen.pred_dino_tokens", model.video_gen(
        *args, history_actions=i["pred.history_actions"], noise=i["videogen.draw.initial_noise"]))


def _framework(model: UpstreamLDA, vlm: Any, fx: Fixture) -> None:
    """The whole Qwen_MMDiT: VLM features from the pre-tokenised inputs, then the head (training + predict)."""
    from .vlm import vlm_features

    i = fx.inputs
    qwen = {k: i[f"framework.qwen.{k}"] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    vl_embs = vlm_features(vlm, qwen).to(model.registers.dtype)
    fx.compare("framework.vlm_hidden_states_last_prenorm", vl_embs)
    mask = qwen["attention_mask"].to(vl_embs.dtype)
    repeats = int(fx.golden["notes_batch_sampler_tree"].get("framework.repeated_diffusion_steps", 4))
    tasks = list(fx.golden["notes_batch_sampler_tree"]["framework.tasks"])

    def tile(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(repeats, *([1] * (x.dim() - 1)))

    batch = {"vl_embs": vl_embs, "text_mask": mask, "curr_images": i["framework.images_u8_BVTHWC"],
             "future_images": i["framework.future_images_u8_BVTHWC"], "state": i["framework.state_fp16"].float(),
             "history_actions": i["framework.history_actions_fp16"].float(),
             "actions": i["framework.actions_fp16"].float(), "action_mask": i["framework.action_mask"].float(),
             "embodiment": i["framework.embodiment_id"].long()}
    out = model.training_losses({k: tile(v) for k, v in batch.items()}, tasks * repeats,
                                _draws(i, "framework_fwd"))
    for key in ("loss", "action_loss", "dynamics_loss"):
        fx.compare(f"framework_fwd.out.{key}", out[key])
    fx.compare("framework_predict.normalized_actions", model.predict_action(
        vl_embs, mask, batch["curr_images"], batch["state"], batch["embodiment"],
        history_actions=batch["history_actions"], noise=i["framework_predict.draw.initial_noise"]))


def verify_golden(model: UpstreamLDA, directory: str | Path, vlm: Any = None,
                  progress: Callable[[str], None] | None = None, float64: bool = False) -> list[GoldenResult]:
    """Every comparable output of the fixture; the whole-framework scenarios only when ``vlm`` is given,
    the float64 replay (``f64.*``) only with ``float64``."""
    fx = Fixture(directory)
    model.eval()
    steps: list[tuple[str, Callable[[], None]]] = [("training forward", lambda: _training(model, fx)),
                                                   ("inference", lambda: _inference(model, fx))]
    if float64:
        steps.append(("float64 replay", lambda: _float64(model, fx)))
    if vlm is not None:
        steps.append(("framework (Qwen3-VL + head)", lambda: _framework(model, vlm, fx)))
    for what, step in steps:
        if progress:
            progress(f"running {what}")
        with torch.no_grad():
            step()
    return fx.results
