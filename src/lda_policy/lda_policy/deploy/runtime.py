"""Model runtime for deployment: the checkpoint and its encoders, with validated physical-unit calls.

ROS-free. The model host owns the one :class:`ModelRuntime` of a robot (the model, the DINOv3
observation encoder, the language encoder), shared by the policy and the forward-dynamics judge; the
frame buffer that feeds it is in :mod:`.observations`.

Loading errors are :class:`RuntimeLoadError` with a message that names the path and what is wrong,
so a node can print it and exit non-zero at start-up.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from lda_policy.model import CheckpointError, LDAModel, Observation, load_language_encoder
from lda_policy.model.config import DEFAULT_VLM_PROMPT, prompt_hash


class RuntimeLoadError(RuntimeError):
    """A checkpoint or encoder that cannot be loaded; the message names the path."""


# ---------------------------------------------------------------------------------------------- model


class ModelRuntime:
    """LDAModel + DINOv3 + language encoder on one device, with validated physical-unit calls.

    ``checkpoint``: directory written by ``LDAModel.save_pretrained``; ``dino_path``: a local DINOv3
    directory (``from_pretrained`` format); ``language``: ``"minilm"`` (default, bundled) or
    ``"qwen3vl"`` with ``language_path``. The checkpoint records how its language condition was made
    (``config.condition``): a different encoder kind, or a ``prompt`` other than the recorded one, is
    refused at load; an image-conditioned checkpoint runs the VLM on the current frame at every replan
    (bf16 on CUDA) and :meth:`observation` then needs the ``image``. A checkpoint that fine-tuned the
    VLM's last N layers runs the frozen VLM at ``language_path`` up to layer L - N and then its own layers
    (the VLM's language model must have the recorded shape, else the load is refused).
    """

    def __init__(self, checkpoint: str | Path, dino_path: str | Path, language: str = "minilm",
                 language_path: str | Path | None = None, device: str = "cpu", num_steps: int | None = None,
                 prompt: str | None = None) -> None:
        from lda_policy.model import DinoV3Encoder

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeLoadError(f"device '{device}' requested but CUDA is not available")
        checkpoint = Path(checkpoint).expanduser()
        if not str(checkpoint) or not checkpoint.is_dir():
            raise RuntimeLoadError(f"checkpoint directory '{checkpoint}' does not exist")
        try:
            self.model = LDAModel.from_pretrained(checkpoint, device=self.device).eval()
        except (CheckpointError, OSError, ValueError, KeyError) as err:
            raise RuntimeLoadError(f"cannot load checkpoint '{checkpoint}': {err}") from None
        self.checkpoint = checkpoint
        self.config = self.model.config
        self.num_steps = num_steps or self.config.flow.num_inference_steps
        dino_path = Path(dino_path).expanduser()
        if not (dino_path / "config.json").is_file():
            raise RuntimeLoadError(f"DINOv3 encoder directory '{dino_path}' has no config.json (pass the local "
                                   "directory of a DINOv3 ViT saved with save_pretrained as dino_path)")
        try:
            self.dino = DinoV3Encoder(dino_path, device=self.device)
        except (OSError, ValueError) as err:
            raise RuntimeLoadError(f"cannot load the DINOv3 encoder from '{dino_path}': {err}") from None
        if self.dino.dim != self.config.latent_dim:
            raise RuntimeLoadError(f"DINOv3 at '{dino_path}' gives {self.dino.dim}-d patches, the checkpoint "
                                   f"'{checkpoint}' expects {self.config.latent_dim}-d latents")
        cond = self.condition = self.config.condition
        if cond.encoder and cond.encoder != language:
            raise RuntimeLoadError(f"checkpoint '{checkpoint}' was trained with the language condition "
                                   f"{cond.describe()}, but this runtime was given language={language!r}; deploy it "
                                   f"with language={cond.encoder!r} (and its directory) or use a checkpoint trained "
                                   f"with {language}")
        if prompt is not None and cond.encoder == "qwen3vl" and prompt_hash(prompt) != cond.prompt_hash:
            raise RuntimeLoadError(f"checkpoint '{checkpoint}' was trained with the VLM prompt {cond.prompt!r} "
                                   f"(hash {cond.prompt_hash}), but this runtime was given the prompt {prompt!r} "
                                   f"(hash {prompt_hash(prompt)}); leave the prompt unset to use the checkpoint's")
        if cond.finetune_layers:
            self._check_vlm_shape(language_path)
        try:
            self.language = load_language_encoder(
                language, language_path, device=self.device, image_size=cond.image_size or 224,
                prompt=cond.prompt or prompt or DEFAULT_VLM_PROMPT, use_image=cond.image,
                finetune_layers=cond.finetune_layers)
        except (ImportError, OSError, ValueError) as err:
            raise RuntimeLoadError(f"cannot load the {language} language encoder "
                                   f"({language_path or 'bundled'}): {err}") from None
        if self.language.dim != self.config.lang_dim:
            raise RuntimeLoadError(f"the {language} language encoder gives {self.language.dim}-d tokens, the "
                                   f"checkpoint '{checkpoint}' expects lang_dim={self.config.lang_dim}")
        self._language_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.vlm_encodes = 0  # image-conditioned VLM runs so far (one per replan) and their time
        self.vlm_time_s = 0.0

    def _check_vlm_shape(self, language_path: str | Path | None) -> None:
        """A checkpoint with fine-tuned VLM layers runs them after the frozen VLM at ``language_path``,
        which must be the VLM they were cut from: same language model shape (weights are not compared)."""
        from lda_policy.model.vlm_tail import vlm_text_spec

        cond = self.condition
        if language_path is None:
            raise RuntimeLoadError(f"checkpoint '{self.checkpoint}' fine-tuned the last {cond.finetune_layers} "
                                   "VLM layer(s): pass language_path, the Qwen3-VL directory it was trained with")
        try:
            found = vlm_text_spec(language_path)
        except ValueError as err:
            raise RuntimeLoadError(str(err)) from None
        want = cond.vlm_text
        diff = [f"{f}: checkpoint {getattr(want, f)!r} vs VLM {getattr(found, f)!r}"
                for f in want.__dataclass_fields__ if getattr(want, f) != getattr(found, f)]
        if diff:
            raise RuntimeLoadError(f"checkpoint '{self.checkpoint}' fine-tuned the last {cond.finetune_layers} "
                                   f"layer(s) of a VLM shaped differently from the one at '{language_path}' ("
                                   + "; ".join(diff) + "); deploy it with the Qwen3-VL directory it was trained with")

    # -- encoders ------------------------------------------------------------------------------------
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """One uint8 (H, W, 3) RGB image -> DINO latents (gh, gw, C) pooled to the model grid (CPU)."""
        return self.dino.encode_frames(np.ascontiguousarray(image)[None], self.config.latent_grid)[0]

    def encode_instruction(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Language tokens (1, L, D) and mask (1, L) of an instruction, cached per text."""
        if text not in self._language_cache:
            emb = self.language.encode([text])
            if len(self._language_cache) > 32:
                self._language_cache.clear()
            self._language_cache[text] = (emb.tokens.float(), emb.mask)
        return self._language_cache[text]

    def encode_condition(self, text: str, image: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's language condition (1, L, D) + mask (1, L): with an image-conditioned checkpoint the
        VLM on the current camera frame (uint8 (H, W, 3)) and the instruction, run every call; otherwise the
        per-text cached instruction tokens (``image`` is ignored)."""
        if not self.language.use_image:
            return self.encode_instruction(text)
        if image is None:
            raise ValueError(f"checkpoint '{self.checkpoint}' is conditioned on the camera image "
                             f"({self.condition.describe()}), but no image was passed with the observation")
        t0 = time.perf_counter()
        emb = self.language.encode([text], [np.ascontiguousarray(image)])
        tokens = emb.tokens
        if self.model.vlm_tail is not None:  # the checkpoint's fine-tuned last VLM layers
            with torch.inference_mode():
                tokens = self.model.apply_vlm_tail(tokens, emb.positions, emb.mask)
        self.vlm_time_s += time.perf_counter() - t0
        self.vlm_encodes += 1
        if not torch.isfinite(tokens).all():
            raise ValueError("NaN/inf in the VLM condition of the current camera frame")
        return tokens.float(), emb.mask

    # -- model calls ---------------------------------------------------------------------------------
    def observation(self, embodiment: str, history_latents: torch.Tensor, instruction: str,
                    state: np.ndarray | None, history_actions: np.ndarray | None,
                    image: np.ndarray | None = None) -> Observation:
        """The batch-1 model input; ``image``: the raw current camera frame (uint8 (H, W, 3)), needed when
        the checkpoint is image-conditioned (Qwen3-VL), ignored otherwise."""
        tokens, mask = self.encode_condition(instruction, image)
        return Observation(
            embodiment=embodiment,
            history_latents=history_latents,
            language=tokens,
            language_mask=mask,
            state=None if state is None else torch.as_tensor(state, dtype=torch.float32)[None],
            history_actions=None if history_actions is None
            else torch.as_tensor(history_actions, dtype=torch.float32)[None],
        )

    def action_range(self, embodiment: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The 1-99 % range of ``embodiment``'s training actions (normalization.json); None if it has none."""
        return self.model.normalizer.action_range(embodiment)

    def policy(self, obs: Observation, seed: int | None = None, noise_scale: float = 1.0) -> np.ndarray:
        """Action chunk (chunk_size, action_dim) float64, physical units."""
        return self.policy_candidates(obs, 1, seed, noise_scale)[0]

    def policy_candidates(self, obs: Observation, k: int, seed: int | None = None,
                          noise_scale: float = 1.0) -> np.ndarray:
        """``k`` action chunks (k, chunk_size, action_dim) float64 from the batch-1 observation ``obs`` in one
        batched call, each from its own starting noise (row 0 is what :meth:`policy` gives with ``seed``)."""
        out = self.model.policy(repeat_observation(obs, k), num_steps=self.num_steps, seed=seed,
                                noise_scale=noise_scale)
        return out.double().cpu().numpy()

    def forward_dynamics(self, obs: Observation, actions: np.ndarray, seed: int = 0, num_steps: int | None = None,
                         samples: int = 1) -> torch.Tensor:
        """Predicted future latents (num_future_frames, gh, gw, C): the mean of ``samples`` flow samples
        (seeded together by ``seed``) from the batch-1 observation ``obs``."""
        return self.forward_dynamics_candidates(obs, np.asarray(actions)[None], seed, num_steps, samples)[0]

    def forward_dynamics_candidates(self, obs: Observation, actions: np.ndarray, seed: int = 0,
                                    num_steps: int | None = None, samples: int = 1) -> torch.Tensor:
        """:meth:`forward_dynamics` of K chunks ``actions`` (K, chunk_size, action_dim) in one batched call:
        (K, num_future_frames, gh, gw, C). Every chunk starts from the same ``samples`` noises (drawn from
        ``seed``), so chunk k's prediction is what :meth:`forward_dynamics` gives for it alone."""
        a = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
        k = a.shape[0]
        noise = self._future_noise(seed, samples).repeat(k, 1, 1, 1)  # (k * samples, F, P, C), chunk-major
        a = a.repeat_interleave(samples, dim=0)
        out = self.model.forward_dynamics(repeat_observation(obs, k * samples), a,
                                          num_steps=num_steps or self.num_steps, noise=noise)
        return out.float().view(k, samples, *out.shape[1:]).mean(dim=1).cpu()

    def forecast(self, obs: Observation, seed: int = 0, num_steps: int | None = None,
                 samples: int = 1) -> torch.Tensor:
        """The visual forecast (num_future_frames, gh, gw, C) without actions: the mean of ``samples`` flow
        samples from the same noises as :meth:`forward_dynamics` with this ``seed``."""
        out = self.model.forecast(repeat_observation(obs, samples), num_steps=num_steps or self.num_steps,
                                  noise=self._future_noise(seed, samples))
        return out.float().mean(dim=0).cpu()

    def _future_noise(self, seed: int, samples: int) -> torch.Tensor:
        c = self.config
        shape = (samples, c.num_future_frames, c.tokens_per_frame, c.latent_dim)
        return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))

    @property
    def latent_mid(self) -> torch.Tensor:
        return self.model.normalizer.latent_mid

    @property
    def latent_half(self) -> torch.Tensor:
        return self.model.normalizer.latent_half


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """A batch-1 tensor repeated to n rows."""
    return x.expand(n, *x.shape[1:]).contiguous()


def repeat_observation(obs: Observation, n: int) -> Observation:
    """A batch-1 observation repeated to n rows (itself for n = 1)."""
    if n == 1:
        return obs
    return dataclasses.replace(obs, **{k: repeat_rows(v, n) for k, v in vars(obs).items()
                                       if isinstance(v, torch.Tensor)})


def set_torch_threads(threads: int) -> None:
    """Limit intra-op threads (0 leaves torch's default); two model processes on few cores otherwise thrash."""
    if threads > 0:
        torch.set_num_threads(int(threads))
