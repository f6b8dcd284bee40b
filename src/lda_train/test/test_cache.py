"""The latent cache: built once, equal to running DINO on LeRobot's decoded frames, invalidated by a
changed dataset or encoder, and a corrupt or partial cache is detected and rebuilt, never used."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from lda_policy.model import PRESETS, DinoV3Encoder, load_language_encoder, pool_latents
from lda_testing.datasets import record_dataset
from lda_train.config import DatasetConfig
from lda_train.data import BatchPlan, SourceDataset
from lda_train.latent_cache import (
    CacheCorrupt,
    CacheMissing,
    CacheSpec,
    CacheStale,
    FrameWindowDataset,
    LatentCache,
    ensure_cache,
    plan_keys,
)

from conftest import REPO

TINY = PRESETS["lda-tiny"]


def _source(root) -> SourceDataset:
    return SourceDataset(DatasetConfig(root=str(root)), 0, TINY.time, 0.2, seed=0)


class Encoders:
    """Factories that count how often the frozen encoders had to be loaded (= the cache was built)."""

    def __init__(self, dino_dir):
        self.dino_dir = dino_dir
        self.builds = 0

    def dino(self):
        self.builds += 1
        return DinoV3Encoder(self.dino_dir)

    def language(self):
        return load_language_encoder("minilm")

    def ensure(self, source, spec, **kw):
        return ensure_cache(source, spec, self.dino, self.language, progress=False, **kw)


def _spec(cache_root, dino_dir, **kw) -> CacheSpec:
    return CacheSpec(cache_root=Path(cache_root), dino_path=str(dino_dir), language="minilm", language_path=None,
                     grid=TINY.latent_grid, shard_frames=kw.pop("shard_frames", 64), encoder_batch=32, **kw)


def test_cache_matches_dino_on_lerobot_frames_and_is_reused(mixed_dataset, dino_dir, tmp_path):
    src = _source(mixed_dataset)
    enc = Encoders(dino_dir)
    spec = _spec(tmp_path / "cache", dino_dir)
    cache = enc.ensure(src, spec)
    assert enc.builds == 1
    assert tuple(cache.latents.shape) == (src.num_frames, *TINY.latent_grid, 384)
    assert len(cache.manifest["shards"]) == -(-src.num_frames // 64)  # several shards, all verified
    assert set(cache.language.entries) == set(src.tasks)
    # the latents of a sample's frames equal DINO on the frames LeRobotDataset decodes for the
    # model's delta_timestamps (the path training without the cache takes)
    rows = np.array([0, 11, 23, 30, 100, src.num_frames - 1])
    plan = BatchPlan(np.zeros(len(rows), np.int64), rows, np.zeros(len(rows), np.int64))
    frames = FrameWindowDataset([src], list(TINY.time.obs_offsets_s) + list(TINY.time.future_offsets_s))
    images = torch.stack([frames[k] for k in plan_keys(plan)])
    dino = DinoV3Encoder(dino_dir)
    online = pool_latents(dino.encode(images.flatten(0, 1)), TINY.latent_grid)
    online = online.view(len(rows), -1, *cache.latents.shape[1:])
    w = src.window_indices(rows)
    cached = cache.latents[torch.from_numpy(np.concatenate([w["obs"], w["future"]], axis=1))].float()
    torch.testing.assert_close(cached, online, atol=2e-2, rtol=1e-2)  # float16 storage
    # the second time it is only verified and loaded: no encoder is run
    again = ensure_cache(src, spec, lambda: pytest.fail("rebuilt a valid cache"), lambda: None, progress=False)
    assert again.directory == cache.directory
    assert torch.equal(again.latents, cache.latents)


def test_changed_dataset_or_encoder_invalidates_the_cache(dino_dir, tmp_path):
    root = record_dataset(tmp_path / "small", ["high", "low", "high"], length=12, seed=3)
    enc = Encoders(dino_dir)
    spec = _spec(tmp_path / "cache", dino_dir)
    first = enc.ensure(_source(root), spec)
    # one more episode recorded into the dataset -> new fingerprint -> rebuilt, old entry removed
    record_dataset(root, ["high"], length=16, seed=9)
    src = _source(root)
    with pytest.raises(CacheMissing):
        LatentCache.load(first.directory.parent / spec.fingerprint(src)[0][:24])
    second = enc.ensure(src, spec)
    assert enc.builds == 2
    assert second.fingerprint != first.fingerprint
    assert second.latents.shape[0] == first.latents.shape[0] + 16
    assert not first.directory.exists()
    # an edited value in the frame data (same number of frames) changes the fingerprint too
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_file = sorted((root / "data").rglob("*.parquet"))[0]
    table = pq.read_table(data_file)
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False))
    actions[0, 0] += 0.5
    col = table.schema.get_field_index("action")
    table = table.set_column(col, "action", pa.array(list(actions), type=table.schema.field("action").type))
    pq.write_table(table, data_file)
    assert spec.fingerprint(_source(root))[0] != second.fingerprint
    enc.ensure(_source(root), spec)
    assert enc.builds == 3
    # relabelling episodes (the recorder's quality sidecar) does not touch what the cache holds
    labels = json.loads((root / "meta" / "lda_episodes.json").read_text())
    labels["episodes"][0]["quality"] = "low"
    fp = spec.fingerprint(_source(root))[0]
    (root / "meta" / "lda_episodes.json").write_text(json.dumps(labels))
    assert spec.fingerprint(_source(root))[0] == fp
    # a different DINO checkpoint (other weights, same layout) -> a stale cache, refused with rebuild=never
    from lda_policy.model import write_random_dinov3_checkpoint

    other = write_random_dinov3_checkpoint(tmp_path / "dino2", hidden_size=384, num_layers=1, num_heads=6, seed=5)
    spec2 = _spec(tmp_path / "cache", other)
    src = _source(root)
    with pytest.raises(CacheStale, match="different dataset contents or encoders"):
        ensure_cache(src, spec2, lambda: None, lambda: None, rebuild="never", progress=False)
    third = Encoders(other).ensure(src, spec2)
    assert third.fingerprint != second.fingerprint
    assert not torch.equal(third.latents[:4], second.latents[:4])


@pytest.fixture(scope="module")
def built(mixed_dataset, dino_dir, tmp_path_factory):
    """A valid cache of the mixed dataset (built once for the damage tests)."""
    spec = _spec(tmp_path_factory.mktemp("built") / "cache", dino_dir)
    src = _source(mixed_dataset)
    return src, spec, Encoders(dino_dir).ensure(src, spec)


def _damaged_copy(built, tmp_path, damage):
    import shutil

    src, spec, good = built
    spec = _spec(tmp_path / "cache", spec.dino_path)
    shutil.copytree(good.directory.parent, spec.dataset_dir(src))
    directory = spec.dataset_dir(src) / good.directory.name
    shard = directory / good.manifest["shards"][1]["file"]
    if damage == "flip_byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x40
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "drop_shard":
        shard.unlink()
    elif damage == "drop_manifest":
        (directory / "manifest.json").unlink()
    elif damage == "bad_manifest":
        (directory / "manifest.json").write_text("{not json")
    elif damage == "wrong_shape":
        from safetensors.torch import save_file

        save_file({"latents": torch.zeros(3, 2, 2, 384, dtype=torch.float16)}, str(shard))
    return src, spec, directory


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_shard", "drop_manifest", "bad_manifest",
                                    "wrong_shape"])
def test_corrupt_or_partial_cache_is_detected(built, tmp_path, damage):
    src, spec, directory = _damaged_copy(built, tmp_path, damage)
    fingerprint = built[2].fingerprint
    with pytest.raises(CacheCorrupt):
        LatentCache.load(directory, fingerprint, src.num_frames)
    with pytest.raises(CacheCorrupt):
        ensure_cache(src, spec, lambda: None, lambda: None, rebuild="never", progress=False)


def test_corrupt_cache_is_rebuilt_not_used(built, dino_dir, tmp_path):
    src, spec, directory = _damaged_copy(built, tmp_path, "flip_byte")
    enc = Encoders(dino_dir)
    rebuilt = enc.ensure(src, spec)
    assert enc.builds == 1 and rebuilt.directory == directory
    assert torch.equal(rebuilt.latents, built[2].latents)
    LatentCache.load(directory, built[2].fingerprint, src.num_frames)  # verifies


def test_killed_build_leaves_nothing_that_looks_valid(mixed_dataset, dino_dir, tmp_path):
    src = _source(mixed_dataset)
    spec = _spec(tmp_path / "cache", dino_dir)

    class Boom(RuntimeError):
        pass

    class DyingDino(DinoV3Encoder):
        def __init__(self):
            super().__init__(dino_dir)
            self.calls = 0

        def encode(self, frames):
            self.calls += 1
            if self.calls == 3:
                raise Boom("killed mid-build")
            return super().encode(frames)

    with pytest.raises(Boom):
        ensure_cache(src, spec, DyingDino, lambda: load_language_encoder("minilm"), progress=False)
    dataset_dir = spec.dataset_dir(src)
    assert not any(p.name.startswith(".tmp") for p in dataset_dir.iterdir())
    with pytest.raises(CacheMissing):
        ensure_cache(src, spec, lambda: None, lambda: None, rebuild="never", progress=False)


def test_cache_cli_builds_then_verifies(mixed_dataset, dino_dir, tmp_path, capsys):
    from lda_train.cli import cache_main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{preset: lda-tiny}}\nencoders: {{dino_path: {dino_dir}}}\n"
                   f"cache: {{dir: {tmp_path / 'cache'}}}\ndata:\n  datasets:\n    - {{root: {mixed_dataset}}}\n")
    # the installed command, as a user runs it
    run = subprocess.run(["lda-cache-latents", "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report[0]["frames"] == 192 and report[0]["latent_shape"] == [192, 2, 2, 384]
    assert report[0]["built_seconds"] is not None
    assert "building it" in run.stderr
    # the same entry point in this process: verify only, then a bad override
    assert cache_main(["--config", str(cfg), "--verify-only"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["fingerprint"] == report[0]["fingerprint"]
    assert cache_main(["--config", str(cfg), "cache.dtype=float8"]) == 2
    assert "cache.dtype: expected one of" in capsys.readouterr().err
    assert cache_main(["--config", str(cfg), "--verify-only", f"cache.dir={tmp_path / 'empty'}"]) == 1
    assert "cache.rebuild is 'never'" in capsys.readouterr().err


def test_training_without_the_cache_sees_the_same_batches(mixed_dataset, dino_dir, cache_root, tmp_path):
    """cache.enabled=false: LeRobot decodes the frames, DINO runs every step; the batches equal the
    cached ones (up to float16 storage), and a short run trains from them."""
    from lda_train.trainer import Trainer

    from conftest import make_config

    batches = {}
    for enabled in ("true", "false"):
        cfg, _, _ = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / f"run_{enabled}",
                                extra=[f"cache.enabled={enabled}", "train.steps=1", "eval.enabled=false"])
        torch.manual_seed(0)
        trainer = Trainer(cfg, progress=False)
        assert trainer.data.cached == (enabled == "true")
        plan = trainer.sampler.batch(0, 6)
        batches[enabled] = trainer.data.batch(plan)
        if enabled == "false":
            trainer.train()
            assert (tmp_path / "run_false" / "model" / "model.safetensors").is_file()
    cached, online = batches["true"], batches["false"]
    for key in cached:
        if key.endswith("latents"):
            torch.testing.assert_close(cached[key], online[key], atol=2e-2, rtol=1e-2)
        elif key == "language":  # MiniLM run once per task string vs. once per run: padding differs
            torch.testing.assert_close(cached[key], online[key], atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(cached[key], online[key]), key
