"""Fine-tuning the VLM's last N decoder layers with the model (paper, appendix A), end to end: the
frozen VLM is cut before them, the latent cache holds their inputs (hidden states + multimodal RoPE ids),
the model trains its own copy of them (own LR group), the checkpoint stores them in safetensors, and
deployment runs the cut VLM then the checkpoint's layers, computing what training computed. Uses a
random-weight Qwen3-VL with 4 decoder layers, the first 2 taking deepstack features."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub

import numpy as np
import pytest
import torch
from lda_common.config import ConfigError
from lda_policy.model import PRESETS, LDAModel, Qwen3VLEncoder, read_config, write_random_qwen3vl_checkpoint
from lda_policy.model.vlm_tail import VLMTail, vlm_text_spec
from lda_testing.datasets import record_dataset
from lda_train.config import DatasetConfig
from lda_train.data import BatchPlan, SourceDataset
from lda_train.latent_cache import CachedLatents, CacheSpec, CacheStale, LatentCache, decode_frames, ensure_cache

from conftest import make_config

TINY = PRESETS["lda-tiny"]
SIZE = 64  # VLM image side (2 x 2 merged patches of 32 px)
TAIL = 2  # of 4 decoder layers; layers 0 and 1 take deepstack features


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    # 384 wide: lda-tiny's lang_dim
    return write_random_qwen3vl_checkpoint(tmp_path_factory.mktemp("qwen3vl4") / "vlm", hidden_size=384,
                                           num_layers=2, num_text_layers=4, deepstack_layers=2)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return record_dataset(tmp_path_factory.mktemp("tail_data") / "ds", ["high", "low", "high"], length=12, seed=5)


def _source(root) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root)), 0, TINY.time, 0.2, seed=0)


def _encoder(qwen_dir, layers=TAIL) -> Qwen3VLEncoder:
    return Qwen3VLEncoder(qwen_dir, image_size=SIZE, use_image=True, finetune_layers=layers)


def _spec(cache_root, dino_dir, qwen_dir, layers=TAIL) -> CacheSpec:
    return CacheSpec(cache_root=cache_root, dino_path=str(dino_dir), language="qwen3vl", language_path=str(qwen_dir),
                     grid=TINY.latent_grid, dtype="float32", shard_frames=16, vlm_image=True, vlm_image_size=SIZE,
                     vlm_batch=4, vlm_finetune_layers=layers)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(n)]


def test_the_vlm_cut_before_its_last_layers_then_those_layers_is_the_whole_vlm(qwen_dir):
    whole = _encoder(qwen_dir, 0)
    texts = ["pick up the red cube and place it in the bowl", "open drawer"]  # different lengths: padding
    full = whole.encode(texts, _images(2))
    for layers in (1, 2):
        cut = _encoder(qwen_dir, layers)
        inputs = cut.encode(texts, _images(2))
        assert inputs.positions.shape == (2, 3, inputs.tokens.shape[1])
        # image tokens sit on a 2-D grid: the height/width RoPE ids are not the text positions
        assert not torch.equal(inputs.positions[:, 1], inputs.positions[:, 0])
        tail = VLMTail(cut.text_spec, layers)
        tail.load_from_vlm(qwen_dir)
        with torch.no_grad():
            out = tail(inputs.tokens.clone(), inputs.positions.clone(), inputs.mask.clone())
        m = full.mask
        torch.testing.assert_close(out[m], full.tokens[m], atol=1e-5, rtol=1e-5)
        # the cut VLM's own output is something else (the last layers did not run)
        assert (inputs.tokens[m] - full.tokens[m]).abs().max() > 1e-2
        assert len(cut.model.model.language_model.layers) == 4 - layers
    # the frozen VLM never trains
    assert not any(p.requires_grad for p in whole.model.parameters())


def test_a_tail_reaching_into_the_deepstack_layers_is_refused(qwen_dir, dino_dir):
    from lda_train.config import load_config

    with pytest.raises(ValueError, match=r"4 decoder layers.*at most the last 2.*deepstack"):
        _encoder(qwen_dir, 3)
    base = ["encoders.language=qwen3vl", f"encoders.language_path={qwen_dir}"]
    with pytest.raises(ConfigError, match=r"encoders\.vlm_finetune_layers.*at most the last 2.*deepstack"):
        load_config(None, base + ["encoders.vlm_finetune_layers=3"])
    with pytest.raises(ConfigError, match="encoders.language=qwen3vl"):
        load_config(None, ["encoders.vlm_finetune_layers=1"])
    with pytest.raises(ConfigError, match="vlm_image=true"):
        load_config(None, base + ["encoders.vlm_finetune_layers=1", "encoders.vlm_image=false"])
    assert load_config(None, base + ["encoders.vlm_finetune_layers=2"]).encoders.vlm_finetune_layers == 2
    assert load_config(None, []).encoders.vlm_finetune_layers == 0  # off by default


def test_cache_holds_the_tails_inputs_and_is_never_shared_with_another_n(small_dataset, dino_dir, qwen_dir, tmp_path):
    from lda_policy.model import DinoV3Encoder

    src = _source(small_dataset)
    spec = _spec(tmp_path / "cache", dino_dir, qwen_dir)
    cache = ensure_cache(src, spec, lambda: DinoV3Encoder(dino_dir), lambda: _encoder(qwen_dir), progress=False)
    assert len(cache.vlm) == 3 and cache.vlm[2].shape == (src.num_frames, 3, cache.vlm[0].shape[1])
    assert cache.manifest["vlm"]["finetune_layers"] == TAIL
    assert cache.manifest["vlm"]["condition"]["vlm_text"]["num_layers"] == 4
    again = LatentCache.load(cache.directory, cache.fingerprint, src.num_frames)
    for a, b in zip(again.vlm, cache.vlm, strict=True):
        assert torch.equal(a, b)
    # a row's cached inputs = a fresh encode of its frame + instruction by the cut VLM
    rows = np.array([0, 7, src.num_frames - 1])
    plan = BatchPlan(np.zeros(len(rows), np.int64), rows, np.zeros(len(rows), np.int64))
    hidden, mask, positions = CachedLatents([src], [cache]).condition(plan)
    frames = decode_frames(src, rows)
    enc = _encoder(qwen_dir)
    for i, r in enumerate(rows):
        fresh = enc.encode([src.task_text[int(src.task_index[r])]], [frames[i]])
        n = int(fresh.mask.sum())
        assert int(mask[i].sum()) == n
        assert torch.equal(positions[i, :, :n], fresh.positions[0][:, fresh.mask[0]])
        torch.testing.assert_close(hidden[i, :n], fresh.tokens[0][fresh.mask[0]], atol=1e-5, rtol=1e-5)
    # N is part of the fingerprint: N = 0 and N = 1 caches are other caches
    fps = {cache.fingerprint, _spec(spec.cache_root, dino_dir, qwen_dir, 0).fingerprint(src)[0],
           _spec(spec.cache_root, dino_dir, qwen_dir, 1).fingerprint(src)[0]}
    assert len(fps) == 3
    with pytest.raises(CacheStale):
        ensure_cache(src, _spec(spec.cache_root, dino_dir, qwen_dir, 0), lambda: None, lambda: None,
                     rebuild="never", progress=False)


@pytest.fixture(scope="module")
def tail_run(small_dataset, dino_dir, qwen_dir, tmp_path_factory):
    """A 5-step run fine-tuning the last 2 VLM layers (float32 cache, evaluation on): (trainer, run dir).
    The MM-DiT's zero-initialised decoders and cross-attention output pass no gradient to the language
    tokens in the first 3 steps, so 5 steps are needed to see the tail move."""
    from lda_train.trainer import Trainer

    base = tmp_path_factory.mktemp("tail_run")
    cfg, _, _ = make_config([small_dataset], dino_dir, base / "cache", base / "run",
                            extra=["encoders.language=qwen3vl", f"encoders.language_path={qwen_dir}",
                                   f"encoders.vlm_image_size={SIZE}", f"encoders.vlm_finetune_layers={TAIL}",
                                   "encoders.vlm_batch_size=4", "cache.dtype=float32", "optim.vlm_lr_scale=0.5",
                                   "train.steps=5", "train.batch_size=4", "eval.max_samples=4", "eval.batch_size=4"])
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    return trainer, base / "run"


def test_training_moves_the_tail_in_its_own_lr_group_and_the_checkpoint_restores_it(tail_run, qwen_dir, tmp_path):
    trainer, run = tail_run
    model = trainer.model
    start = VLMTail(vlm_text_spec(qwen_dir), TAIL)
    start.load_from_vlm(qwen_dir)
    tail = model.vlm_tail.state_dict()
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, tail[k].cpu())]
    assert len(changed) == len(tail)  # every tail weight (layers + final norm) was trained
    assert model.parameter_counts()["vlm_tail"] == sum(v.numel() for v in tail.values())
    # its own optimiser groups at optim.vlm_lr_scale of the LR, saved with the training state
    state = json.loads((run / "checkpoints" / "step_000005" / "training_state.json").read_text())
    scales = sorted({g["lr_scale"] for g in state["param_groups"]})
    assert scales == [0.5, 1.0]
    lrs = {g["lr_scale"]: g["lr"] for g in state["param_groups"]}
    assert lrs[0.5] == pytest.approx(0.5 * lrs[1.0])
    # the checkpoint records N and the VLM's shape, and restores exactly the trained weights
    cond = read_config(run / "model").condition
    assert cond.finetune_layers == TAIL and cond.vlm_text == vlm_text_spec(qwen_dir)
    assert "last 2 VLM layer(s) fine-tuned" in cond.describe()
    loaded = LDAModel.from_pretrained(run / "model")
    for k, v in tail.items():
        assert torch.equal(loaded.vlm_tail.state_dict()[k], v.cpu()), k
    again = LDAModel.from_pretrained(loaded.save_pretrained(tmp_path / "again"))
    for k, v in tail.items():
        assert torch.equal(again.vlm_tail.state_dict()[k], v.cpu()), k


def test_with_a_frozen_vlm_no_vlm_weight_is_in_the_model_or_the_optimiser(qwen_dir):
    from lda_policy.model.config import LanguageCondition
    from lda_train.build import make_optimizer
    from lda_train.config import load_config

    model = LDAModel.from_preset("lda-tiny", condition=LanguageCondition(encoder="qwen3vl", image=True))
    assert model.vlm_tail is None and model.parameter_counts()["vlm_tail"] == 0
    assert not any(k.startswith("vlm_tail") for k in model.state_dict())
    groups = make_optimizer(model, load_config(None, [])).param_groups
    assert len(groups) == 2 and {g["lr_scale"] for g in groups} == {1.0}


def test_deployment_computes_the_condition_training_computed(tail_run, small_dataset, dino_dir, qwen_dir):
    from lda_policy.deploy.runtime import ModelRuntime

    trainer, run = tail_run
    rt = ModelRuntime(run / "model", dino_dir, language="qwen3vl", language_path=qwen_dir)
    src = trainer.sources[0]
    cache = trainer.data.latents.caches[0]
    for row in (0, 9):
        frame = decode_frames(src, np.array([row]))[0]  # float (3, H, W), the cache's input
        image = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # the same frame as a camera gives it
        text = src.task_text[int(src.task_index[row])]
        tokens, mask = rt.encode_condition(text, image)
        n = int(cache.vlm[1][row].sum())
        assert int(mask.sum()) == n
        with torch.no_grad():
            trained = trainer.model.apply_vlm_tail(cache.vlm[0][row:row + 1, :n], cache.vlm[2][row:row + 1, :, :n],
                                                   cache.vlm[1][row:row + 1, :n])
        torch.testing.assert_close(tokens, trained.cpu(), atol=1e-5, rtol=1e-5)
    assert rt.vlm_encodes == 2


def test_a_vlm_of_another_shape_is_refused_for_the_tail(tail_run, dino_dir, tmp_path):
    from lda_policy.deploy.runtime import ModelRuntime, RuntimeLoadError

    _, run = tail_run
    five = write_random_qwen3vl_checkpoint(tmp_path / "vlm5", hidden_size=384, num_layers=2, num_text_layers=5,
                                           deepstack_layers=2)
    with pytest.raises(RuntimeLoadError, match=r"shaped differently.*num_layers: checkpoint 4 vs VLM 5"):
        ModelRuntime(run / "model", dino_dir, language="qwen3vl", language_path=five)
    with pytest.raises(RuntimeLoadError, match="pass language_path"):
        ModelRuntime(run / "model", dino_dir, language="qwen3vl")
