"""Model runtime for deployment: the checkpoint and its encoders, with validated physical-unit calls.

ROS-free. The model host owns the one :class:`ModelRuntime` of a robot (the model, the DINOv3
observation encoder, the language encoder), shared by the policy and the forward-dynamics judge; the
frame buffer that feeds it is in :mod:`.observations`.

Loading errors are :class:`RuntimeLoadError` with a message that names the path and what is wrong,
so a node can print it and exit non-zero at start-up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from lda_policy.model import CheckpointError, LDAModel, Observation, load_language_encoder


class RuntimeLoadError(RuntimeError):
    """A checkpoint or encoder that cannot be loaded; the message names the path."""


# ---------------------------------------------------------------------------------------------- model


class ModelRuntime:
    """LDAModel + DINOv3 + language encoder on one device, with validated physical-unit calls.

    ``checkpoint``: directory written by ``LDAModel.save_pretrained``; ``dino_path``: a local DINOv3
    directory (``from_pretrained`` format); ``language``: ``"minilm"`` (default, bundled) or
    ``"qwen3vl"`` with ``language_path``.
    """

    def __init__(self, checkpoint: str | Path, dino_path: str | Path, language: str = "minilm",
                 language_path: str | Path | None = None, device: str = "cpu", num_steps: int | None = None) -> None:
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
        try:
            self.language = load_language_encoder(language, language_path, device=self.device)
        except (ImportError, OSError, ValueError) as err:
            raise RuntimeLoadError(f"cannot load the {language} language encoder "
                                   f"({language_path or 'bundled'}): {err}") from None
        if self.language.dim != self.config.lang_dim:
            raise RuntimeLoadError(f"the {language} language encoder gives {self.language.dim}-d tokens, the "
                                   f"checkpoint '{checkpoint}' expects lang_dim={self.config.lang_dim}")
        self._language_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

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

    # -- model calls ---------------------------------------------------------------------------------
    def observation(self, embodiment: str, history_latents: torch.Tensor, instruction: str,
                    state: np.ndarray | None, history_actions: np.ndarray | None) -> Observation:
        tokens, mask = self.encode_instruction(instruction)
        return Observation(
            embodiment=embodiment,
            history_latents=history_latents,
            language=tokens,
            language_mask=mask,
            state=None if state is None else torch.as_tensor(state, dtype=torch.float32)[None],
            history_actions=None if history_actions is None
            else torch.as_tensor(history_actions, dtype=torch.float32)[None],
        )

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
