"""Qwen3-VL conditioned on the current camera frame + the instruction (paper, appendix A), end to end:
the latent cache holds each frame's VLM condition (fingerprinted with the VLM, image size and prompt),
training reads it, the checkpoint records the condition, and deployment computes it the same way or
refuses to load. Uses a small random-weight Qwen3-VL in the real on-disk format."""

import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub

import numpy as np
import pytest
import torch
from lda_common.config import ConfigError
from lda_policy.model import PRESETS, Qwen3VLEncoder, read_config, write_random_qwen3vl_checkpoint
from lda_policy.model.config import prompt_hash
from lda_testing.datasets import record_dataset
from lda_train.config import DatasetConfig
from lda_train.data import BatchPlan, SourceDataset
from lda_train.latent_cache import (
    CachedLatents,
    CacheSpec,
    CacheStale,
    LatentCache,
    decode_frames,
    ensure_cache,
)

from conftest import make_config

TINY = PRESETS["lda-tiny"]
SIZE = 64  # VLM image side: 2 x 2 merged patches of 32 px, so a CPU test stays quick
PROMPT = "Robot task: {instruction}"


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    # 384 wide: the width lda-tiny's language projection takes (its lang_dim), 2 layers
    return write_random_qwen3vl_checkpoint(tmp_path_factory.mktemp("qwen3vl") / "vlm", hidden_size=384)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return record_dataset(tmp_path_factory.mktemp("vlm_data") / "ds", ["high", "low", "high"], length=12, seed=4)


def _source(root) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root)), 0, TINY.time, 0.2, seed=0)


def _spec(cache_root, dino_dir, qwen_dir, prompt=PROMPT, **kw) -> CacheSpec:
    return CacheSpec(cache_root=cache_root, dino_path=str(dino_dir), language="qwen3vl", language_path=str(qwen_dir),
                     grid=TINY.latent_grid, shard_frames=16, vlm_image=True, vlm_image_size=SIZE, vlm_prompt=prompt,
                     vlm_batch=4, **kw)


def _encoder(qwen_dir, prompt=PROMPT) -> Qwen3VLEncoder:
    return Qwen3VLEncoder(qwen_dir, image_size=SIZE, prompt=prompt, use_image=True)


def _ensure(source, spec, dino_dir, qwen_dir, prompt=PROMPT, **kw):
    from lda_policy.model import DinoV3Encoder

    return ensure_cache(source, spec, lambda: DinoV3Encoder(dino_dir), lambda: _encoder(qwen_dir, prompt),
                        progress=False, **kw)


def test_cache_holds_each_frames_vlm_condition_and_the_batch_reads_it(small_dataset, dino_dir, qwen_dir, tmp_path):
    src = _source(small_dataset)
    cache = _ensure(src, _spec(tmp_path / "cache", dino_dir, qwen_dir), dino_dir, qwen_dir)
    assert cache.vlm is not None and cache.vlm[0].shape[0] == src.num_frames
    assert len(cache.manifest["shards"]) > 1  # rows of several shards (different token lengths) are merged
    assert cache.manifest["vlm"]["condition"]["prompt_hash"] == prompt_hash(PROMPT)
    again = LatentCache.load(cache.directory, cache.fingerprint, src.num_frames)
    torch.testing.assert_close(again.vlm[0], cache.vlm[0])
    # the batch's condition of a sample = a fresh encode of its current frame (t = 0) + its instruction
    rows = np.array([0, 5, 13, src.num_frames - 1])
    plan = BatchPlan(np.zeros(len(rows), np.int64), rows, np.zeros(len(rows), np.int64))
    tokens, mask = CachedLatents([src], [cache]).condition(plan)
    encoder = _encoder(qwen_dir)
    frames = decode_frames(src, rows)
    for i, r in enumerate(rows):
        text = src.task_text[int(src.task_index[r])]
        fresh = encoder.encode([text], [frames[i]])
        n = int(fresh.mask.sum())
        assert int(mask[i].sum()) == n and mask[i, :n].all()
        torch.testing.assert_close(tokens[i, :n], fresh.tokens[0][fresh.mask[0]], atol=2e-2, rtol=1e-2)  # float16
    # the VLM saw the image: two frames of one episode with the same instruction differ
    assert src.task_index[0] == src.task_index[5]
    assert (tokens[0, :n] - tokens[1, :n]).abs().max() > 1e-2


def test_condition_changes_with_the_image_not_only_the_text(qwen_dir):
    encoder = _encoder(qwen_dir)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(2))
    ea, eb = encoder.encode(["pick up the red cube"], [a]), encoder.encode(["pick up the red cube"], [b])
    assert ea.tokens.shape == eb.tokens.shape
    assert (ea.tokens - eb.tokens).abs().max() > 1e-2
    torch.testing.assert_close(encoder.encode(["pick up the red cube"], [a.copy()]).tokens, ea.tokens)
    # LeRobot's float (3, H, W) layout of the same frame gives the same condition as ROS's uint8 (H, W, 3)
    chw = torch.from_numpy(a).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(encoder.encode(["pick up the red cube"], [chw]).tokens, ea.tokens)
    with pytest.raises(ValueError, match="exactly once"):
        Qwen3VLEncoder(qwen_dir, prompt="no placeholder")
    with pytest.raises(ValueError, match="multiple of 32"):
        Qwen3VLEncoder(qwen_dir, image_size=100)


def test_a_cache_for_another_prompt_or_vlm_is_refused_and_rebuilt(small_dataset, dino_dir, qwen_dir, tmp_path):
    src = _source(small_dataset)
    root = tmp_path / "cache"
    first = _ensure(src, _spec(root, dino_dir, qwen_dir), dino_dir, qwen_dir)
    other_prompt = _spec(root, dino_dir, qwen_dir, prompt="Do this: {instruction}")
    assert other_prompt.fingerprint(src)[0] != first.fingerprint
    with pytest.raises(CacheStale):
        LatentCache.load(first.directory, other_prompt.fingerprint(src)[0])
    with pytest.raises(CacheStale, match="different dataset contents or encoders"):
        ensure_cache(src, other_prompt, lambda: None, lambda: None, rebuild="never", progress=False)
    rebuilt = _ensure(src, other_prompt, dino_dir, qwen_dir, prompt="Do this: {instruction}")
    assert rebuilt.fingerprint != first.fingerprint and not first.directory.exists()
    assert not torch.equal(rebuilt.vlm[0], first.vlm[0])
    # another VLM directory (other weights), another image size, or text only: each a new fingerprint
    other_vlm = write_random_qwen3vl_checkpoint(tmp_path / "vlm2", hidden_size=384, seed=7)
    base = _spec(root, dino_dir, qwen_dir)
    fps = {first.fingerprint, rebuilt.fingerprint, _spec(root, dino_dir, other_vlm).fingerprint(src)[0],
           replace(base, vlm_image_size=96).fingerprint(src)[0], replace(base, vlm_image=False).fingerprint(src)[0]}
    assert len(fps) == 5
    # minilm caches do not depend on the VLM settings (their fingerprints are what they were)
    minilm = CacheSpec(cache_root=root, dino_path=str(dino_dir), language="minilm", language_path=None,
                       grid=TINY.latent_grid)
    assert "vlm" not in minilm.settings(src) and not minilm.per_frame_vlm
    assert replace(minilm, vlm_prompt="x {instruction}", vlm_image=True).fingerprint(src) == minilm.fingerprint(src)


def test_config_refuses_bad_vlm_settings(tmp_path):
    from lda_train.config import load_config

    with pytest.raises(ConfigError, match="vlm_prompt"):
        load_config(None, ["encoders.vlm_prompt=do it"])
    with pytest.raises(ConfigError, match="vlm_image_size"):
        load_config(None, ["encoders.vlm_image_size=100"])
    assert load_config(None, []).encoders.language == "minilm"  # the CPU default stays


@pytest.fixture(scope="module")
def vlm_run(small_dataset, dino_dir, qwen_dir, tmp_path_factory):
    """A 2-step training run conditioned on Qwen3-VL with the image; its final model directory."""
    from lda_train.trainer import Trainer

    base = tmp_path_factory.mktemp("vlm_run")
    cfg, _, _ = make_config([small_dataset], dino_dir, base / "cache", base / "run",
                            extra=["encoders.language=qwen3vl", f"encoders.language_path={qwen_dir}",
                                   f"encoders.vlm_image_size={SIZE}", f"encoders.vlm_prompt='{PROMPT}'",
                                   "train.steps=2", "eval.enabled=false", "train.batch_size=4"])
    trainer = Trainer(cfg, progress=False)
    batch = trainer.data.batch(trainer.sampler.batch(0, 4))
    assert batch["language"].shape[-1] == 384 and batch["language_mask"].any(dim=1).all()
    trainer.train()
    return base / "run" / "model"


def test_checkpoint_records_the_condition_and_deployment_matches_it(vlm_run, dino_dir, qwen_dir):
    from lda_policy.deploy.runtime import ModelRuntime, RuntimeLoadError

    cond = read_config(vlm_run).condition
    assert (cond.encoder, cond.image, cond.image_size, cond.prompt, cond.prompt_hash) == \
        ("qwen3vl", True, SIZE, PROMPT, prompt_hash(PROMPT))
    with pytest.raises(RuntimeLoadError, match=r"qwen3vl with the 64 px camera frame.*language='minilm'"):
        ModelRuntime(vlm_run, dino_dir, language="minilm")
    with pytest.raises(RuntimeLoadError, match=r"prompt 'Robot task: \{instruction\}'.*'Go: \{instruction\}'"):
        ModelRuntime(vlm_run, dino_dir, language="qwen3vl", language_path=qwen_dir, prompt="Go: {instruction}")
    rt = ModelRuntime(vlm_run, dino_dir, language="qwen3vl", language_path=qwen_dir)
    robot = rt.config.embodiments[0]
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    history = torch.zeros(1, TINY.num_obs_frames, *TINY.latent_grid, 384)
    args = (robot.name, history, "pick up the block", np.zeros(robot.state_dim),
            np.zeros((TINY.time.history_action_steps, robot.action_dim)))
    with pytest.raises(ValueError, match="conditioned on the camera image"):
        rt.observation(*args)
    oa, ob = rt.observation(*args, image=a), rt.observation(*args, image=b)
    assert rt.vlm_encodes == 2  # once per observation (= per replan), never cached per text
    assert (oa.language - ob.language).abs().max() > 1e-2
    # the same condition the cache stored for training: this encoder, image and prompt
    fresh = _encoder(qwen_dir).encode(["pick up the block"], [a])
    torch.testing.assert_close(oa.language, fresh.tokens)
    assert rt.policy(oa, seed=0).shape == (TINY.time.chunk_size, robot.action_dim)


def test_minilm_checkpoint_records_text_only_and_ignores_images(dino_dir, tmp_path):
    from lda_policy.deploy.runtime import ModelRuntime, RuntimeLoadError
    from lda_policy.model import LDAModel
    from lda_policy.model.config import LanguageCondition

    model = LDAModel.from_preset("lda-tiny", condition=LanguageCondition(encoder="minilm"))
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    assert read_config(ckpt).condition.encoder == "minilm"
    with pytest.raises(RuntimeLoadError, match=r"minilm \(text only\).*language='qwen3vl'"):
        ModelRuntime(ckpt, dino_dir, language="qwen3vl", language_path=tmp_path)
    rt = ModelRuntime(ckpt, dino_dir)
    spec = rt.config.embodiments[0]
    args = (spec.name, torch.zeros(1, TINY.num_obs_frames, *TINY.latent_grid, 384), "open the drawer",
            np.zeros(spec.state_dim), np.zeros((TINY.time.history_action_steps, spec.action_dim)))
    plain = rt.observation(*args)
    with_image = rt.observation(*args, image=np.zeros((64, 64, 3), np.uint8))
    assert torch.equal(plain.language, with_image.language) and rt.vlm_encodes == 0
    # a checkpoint from before the condition was recorded still loads with minilm (dims checked as before)
    old = LDAModel.from_preset("lda-tiny").save_pretrained(tmp_path / "old")
    assert read_config(old).condition.encoder == ""
    assert ModelRuntime(old, dino_dir).language.dim == 384
