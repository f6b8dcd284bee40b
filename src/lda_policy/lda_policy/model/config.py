"""Typed configuration of the LDA model: tasks, data roles, embodiments, time layout and presets.

Everything here is plain Python (no torch) so data loaders and training scripts can read the
layout of a checkpoint without building the network.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from lda_common.schema import Quality

#: Patch grid of DINOv3 ViT-S/16 at 224x224 px (224 / 16 = 14 patches per side).
DINO_GRID: tuple[int, int] = (14, 14)
#: Channel width of DINOv3 ViT-S/16 patch tokens.
DINO_DIM: int = 384


class Task(enum.IntEnum):
    """The four objectives one LDA model is trained on; the value is the task id used in batches."""

    POLICY = 0  # p(actions | obs, language)
    FORWARD_DYNAMICS = 1  # p(future latents | obs, actions, language)
    INVERSE_DYNAMICS = 2  # p(actions | obs, future latents, language)
    FORECAST = 3  # p(future latents | obs, language)


TASKS: tuple[Task, ...] = tuple(Task)


_ROLE_TASKS: dict[Quality, tuple[Task, ...]] = {
    Quality.HIGH: TASKS,
    Quality.LOW: (Task.FORWARD_DYNAMICS, Task.INVERSE_DYNAMICS, Task.FORECAST),
    Quality.ACTIONLESS: (Task.FORECAST,),
}


def allowed_tasks(role: Quality | str | int) -> tuple[Task, ...]:
    """Tasks a sample of the given quality (data role) may train (paper section III-B).

    ``role`` is a :class:`Quality`, its id (0, 1, 2) or its label (``"high"``, ``"low"``,
    ``"actionless"``, case-insensitive). Raises ``ValueError`` for anything else.
    """
    return _ROLE_TASKS[Quality.parse(role)]


@dataclass(frozen=True)
class EmbodimentSpec:
    """One robot (or human hand set-up) the model can control.

    Actions and proprio states of all embodiments are zero-padded to ``LDAConfig.max_action_dim``
    and ``LDAConfig.max_state_dim``; the first ``action_dim`` / ``state_dim`` entries are real.
    Each embodiment gets its own action encoder, state encoder and action decoder slot.
    """

    name: str  # unique key used in observations, datasets and checkpoints
    action_dim: int  # width of one action vector (hand-centric: per hand 6-DoF delta pose + fingers)
    state_dim: int  # width of the proprio state vector
    description: str = ""  # free text for humans (action layout, units)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"embodiment name {self.name!r} must be non-empty [A-Za-z0-9_-]")
        if self.action_dim < 1 or self.state_dim < 1:
            raise ValueError(f"embodiment {self.name!r}: action_dim and state_dim must be >= 1")


@dataclass(frozen=True)
class TimeLayout:
    """Which time steps one training sample holds, relative to the current time t = 0 (seconds).

    The data loader builds LeRobot ``delta_timestamps`` from this (see :meth:`delta_timestamps`).
    Actions run at ``control_hz``; images are sparser (the released LDA code spaces them 0.5 s).
    """

    control_hz: float = 10.0  # action / proprio rate
    chunk_size: int = 16  # actions predicted per chunk, at offsets 0, 1/hz, ..., (chunk-1)/hz
    history_action_steps: int = 2  # past actions given as clean context, at -n/hz ... -1/hz
    obs_offsets_s: tuple[float, ...] = (-0.5, 0.0)  # history frames encoded by DINO (clean context)
    future_offsets_s: tuple[float, ...] = (0.5, 1.0, 1.5)  # frames predicted by dynamics/forecasting

    def __post_init__(self) -> None:
        if self.control_hz <= 0 or self.chunk_size < 1 or self.history_action_steps < 0:
            raise ValueError("TimeLayout needs control_hz > 0, chunk_size >= 1, history_action_steps >= 0")
        if not self.obs_offsets_s or not self.future_offsets_s:
            raise ValueError("TimeLayout needs at least one observation and one future frame offset")
        if list(self.obs_offsets_s) != sorted(self.obs_offsets_s) or self.obs_offsets_s[-1] != 0.0:
            raise ValueError("obs_offsets_s must be increasing and end at 0.0 (the current frame)")
        if list(self.future_offsets_s) != sorted(self.future_offsets_s) or self.future_offsets_s[0] <= 0:
            raise ValueError("future_offsets_s must be increasing and > 0")

    @property
    def history_action_offsets_s(self) -> tuple[float, ...]:
        """Offsets of the clean history actions, oldest first."""
        n = self.history_action_steps
        return tuple(round(-k / self.control_hz, 6) for k in range(n, 0, -1))

    @property
    def action_offsets_s(self) -> tuple[float, ...]:
        """Offsets of the predicted action chunk (the first is the action at t = 0)."""
        return tuple(round(k / self.control_hz, 6) for k in range(self.chunk_size))

    def delta_timestamps(
        self, image_keys: list[str] | tuple[str, ...], state_key: str = "observation.state",
        action_key: str = "action",
    ) -> dict[str, list[float]]:
        """LeRobot ``delta_timestamps`` for one sample.

        ``action`` holds ``history_action_steps`` history actions followed by ``chunk_size`` chunk
        actions; each image key holds the observation frames followed by the future frames; the
        state is read at t = 0 only.
        """
        frames = list(self.obs_offsets_s) + list(self.future_offsets_s)
        out = {key: list(frames) for key in image_keys}
        out[state_key] = [0.0]
        out[action_key] = list(self.history_action_offsets_s) + list(self.action_offsets_s)
        return out


@dataclass(frozen=True)
class FlowConfig:
    """Flow-matching schedule (GR00T/LDA convention: t = 1 is clean data, t = 0 pure noise)."""

    beta_alpha: float = 1.5  # training time t = t_max * (1 - s), s ~ Beta(beta_alpha, beta_beta):
    beta_beta: float = 1.0  # puts more weight on noisy times, as in GR00T
    t_max: float = 0.999  # keeps t < 1 so the target never degenerates
    num_inference_steps: int = 4  # default Euler steps at inference
    timestep_scale: float = 1000.0  # t is embedded as sinusoid(t * timestep_scale)


#: Default VLM user-turn text: the instruction alone (``{instruction}`` is replaced by the task string).
DEFAULT_VLM_PROMPT = "{instruction}"


def prompt_hash(prompt: str) -> str:
    """Short SHA-256 of a VLM prompt template (recorded in checkpoints and latent-cache fingerprints)."""
    import hashlib

    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VLMTextSpec:
    """The shape of a Qwen3-VL language model (its ``text_config``), recorded in a checkpoint whose last
    VLM decoder layers were fine-tuned: the model builds those layers from it, and deployment refuses a
    VLM directory whose language model differs."""

    num_layers: int  # decoder layers of the whole VLM language model (the tail is the last N of them)
    deepstack_layers: int  # first decoder layers that add deepstack visual features (never in the tail)
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    attention_bias: bool
    rope_theta: float
    mrope_section: tuple[int, int, int]  # multimodal RoPE: frequencies per (time, height, width)

    def max_finetune_layers(self, image: bool) -> int:
        """Most trailing layers that may be fine-tuned: with the image, none of the deepstack layers
        (their input needs the vision tower's features, which the cache does not hold)."""
        return self.num_layers - (self.deepstack_layers if image else 0)


@dataclass(frozen=True)
class LanguageCondition:
    """What the model's language/VLM tokens were computed from in training (stored in the checkpoint).

    Deployment must compute the condition the same way: the runtime refuses a different encoder kind
    or prompt, and feeds the VLM the current camera frame when ``image`` is set.
    """

    encoder: str = ""  # "minilm" | "qwen3vl"; "" = not recorded (checkpoints written before this field)
    image: bool = False  # the VLM saw the current camera frame (t = 0) with the instruction
    image_size: int = 0  # side of the square the frame is resized to before the VLM processor (0: no image)
    prompt: str = ""  # VLM user-turn template ("{instruction}" is replaced); "" for minilm
    prompt_hash: str = ""  # prompt_hash(prompt)
    finetune_layers: int = 0  # last VLM decoder layers (+ final norm) trained with the model (LDAModel.vlm_tail)
    vlm_text: VLMTextSpec | None = None  # the VLM language model's shape, recorded when finetune_layers > 0

    def describe(self) -> str:
        if not self.encoder:
            return "an unrecorded language encoder"
        if self.encoder == "minilm":
            return "minilm (text only)"
        what = f"qwen3vl with the {self.image_size} px camera frame" if self.image else "qwen3vl (text only)"
        tail = f", last {self.finetune_layers} VLM layer(s) fine-tuned" if self.finetune_layers else ""
        return f"{what}, prompt {self.prompt!r} (hash {self.prompt_hash}){tail}"


@dataclass(frozen=True)
class LDAConfig:
    """Architecture, data layout and embodiments of one LDA model (stored in the checkpoint)."""

    name: str  # preset the architecture came from (e.g. "lda-1b")
    hidden_size: int  # MM-DiT width (both streams)
    num_layers: int  # MM-DiT blocks
    num_heads: int  # attention heads (joint self-attention and cross-attention)
    mlp_ratio: float = 4.0  # FFN width / hidden_size
    num_registers: int = 4  # learnable register tokens prepended to the visual stream
    latent_dim: int = DINO_DIM  # channels of a DINO patch token
    latent_grid: tuple[int, int] = DINO_GRID  # patch grid the model works on (pooled from 14x14)
    lang_dim: int = 2560  # width of the language/VLM tokens (Qwen3-VL-4B: 2560, MiniLM: 384)
    max_action_dim: int = 48  # padded action width (bimanual dexterous 2 x 21 fits)
    max_state_dim: int = 64  # padded proprio width
    max_embodiments: int = 8  # embodiment slots (encoder/decoder weight sets) in the network
    embodiments: tuple[EmbodimentSpec, ...] = ()  # occupy slots 0..len-1 in order
    time: TimeLayout = field(default_factory=TimeLayout)
    flow: FlowConfig = field(default_factory=FlowConfig)
    action_loss_weight: float = 1.0
    visual_loss_weight: float = 1.0
    condition: LanguageCondition = field(default_factory=LanguageCondition)  # how language tokens were made

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("head dimension must be even")
        if self.hidden_size % 4:
            raise ValueError("hidden_size must be divisible by 4 (2-D sin-cos positions)")
        if not 1 <= self.latent_grid[0] <= DINO_GRID[0] or not 1 <= self.latent_grid[1] <= DINO_GRID[1]:
            raise ValueError(f"latent_grid {self.latent_grid} must lie within the DINO grid {DINO_GRID}")
        if len(self.embodiments) > self.max_embodiments:
            raise ValueError(f"{len(self.embodiments)} embodiments exceed max_embodiments={self.max_embodiments}")
        names = [e.name for e in self.embodiments]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate embodiment names in {names}")
        for e in self.embodiments:
            if e.action_dim > self.max_action_dim or e.state_dim > self.max_state_dim:
                raise ValueError(
                    f"embodiment {e.name!r} ({e.action_dim}-d actions, {e.state_dim}-d state) exceeds "
                    f"max_action_dim={self.max_action_dim} / max_state_dim={self.max_state_dim}"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_grid[0] * self.latent_grid[1]

    @property
    def num_obs_frames(self) -> int:
        return len(self.time.obs_offsets_s)

    @property
    def num_future_frames(self) -> int:
        return len(self.time.future_offsets_s)

    def embodiment_index(self, name: str) -> int:
        """Slot of embodiment ``name``; ``KeyError`` naming the known ones otherwise."""
        for i, e in enumerate(self.embodiments):
            if e.name == name:
                return i
        raise KeyError(f"unknown embodiment {name!r}; this model knows {[e.name for e in self.embodiments]}")

    def architecture(self) -> dict[str, Any]:
        """Fields that fix the weight shapes; two configs with equal architecture share checkpoints."""
        keys = ("hidden_size", "num_layers", "num_heads", "mlp_ratio", "num_registers", "latent_dim",
                "latent_grid", "lang_dim", "max_action_dim", "max_state_dim", "max_embodiments")
        arch = {k: getattr(self, k) for k in keys}
        arch["history_action_steps"] = self.time.history_action_steps
        arch["chunk_size"] = self.time.chunk_size
        arch["num_obs_frames"] = self.num_obs_frames
        arch["num_future_frames"] = self.num_future_frames
        return arch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict; ``lda_common.config.parse(LDAConfig, d)`` reads it back, validated."""
        return dataclasses.asdict(self)



#: Example hand-centric embodiments every preset starts with; pass ``embodiments=`` to
#: :meth:`LDAModel.from_preset` to use your own.
DEFAULT_EMBODIMENTS: tuple[EmbodimentSpec, ...] = (
    EmbodimentSpec("single_gripper", 7, 8,
                   "delta EEF pose (xyz + axis-angle) + gripper width; state: EEF xyz + quat + width"),
    EmbodimentSpec("bimanual_gripper", 14, 16, "two single_gripper hands, left then right"),
    EmbodimentSpec("bimanual_dexhand", 42, 48,
                   "per hand: delta wrist pose (6) + 5 fingertip keypoints in the wrist frame (15)"),
)


def _preset(name: str, **kw: Any) -> LDAConfig:
    return LDAConfig(name=name, embodiments=DEFAULT_EMBODIMENTS, **kw)


#: Named architectures. ``lda-1b`` follows the paper (Table V); ``lda-0.5b`` is about a third of it;
#: the small presets pool the DINO grid (fewer tokens) and take MiniLM (384-d) language tokens so
#: they train on a CPU. They stay 384 wide: a token narrower than the 384-d latent it denoises cannot
#: carry the noise through (at width 128 the visual loss of the synthetic test stalled at 0.74 of 1.05).
PRESETS: dict[str, LDAConfig] = {
    "lda-1b": _preset("lda-1b", hidden_size=1536, num_layers=16, num_heads=32),
    "lda-0.5b": _preset("lda-0.5b", hidden_size=1024, num_layers=12, num_heads=16),
    "lda-small": _preset("lda-small", hidden_size=384, num_layers=4, num_heads=6,
                         latent_grid=(4, 4), lang_dim=384),  # 384: all-MiniLM-L6-v2
    "lda-tiny": _preset("lda-tiny", hidden_size=384, num_layers=2, num_heads=6,
                        latent_grid=(2, 2), lang_dim=384),
}
