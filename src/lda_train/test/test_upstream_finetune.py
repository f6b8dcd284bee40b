"""lda-train on an imported authors' checkpoint (issue #28, item 4): a tiny checkpoint in the authors' layout
(real-format random Qwen3-VL) imported with lda-import-upstream, fine-tuned on a recorded LeRobot dataset with
high, low and actionless episodes; the role rules hold on real batches; the result is an upstream checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lda_common.schema import Quality
from lda_testing.datasets import record_dataset
from lda_testing.upstream import write_tiny_upstream_checkpoint
from lda_train.cli import cache_main, train_main
from lda_train.config import load_config
from lda_train.upstream_data import vlm_inputs

EQUAL = {"policy": 0.25, "forward_dynamics": 0.25, "inverse_dynamics": 0.25, "forecast": 0.25}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """(imported checkpoint, processor directory)."""
    return write_tiny_upstream_checkpoint(tmp_path_factory.mktemp("upstream_ckpt"))


def write_config(path: Path, checkpoint, processor, datasets, output_dir, **sections) -> Path:
    cfg = {"output_dir": str(output_dir), "model": {"checkpoint": str(checkpoint), "preset": None},
           "data": {"datasets": [{"root": str(d)} for d in datasets], "heldout_fraction": 0.2, "task_weights": EQUAL},
           "upstream": {"processor": str(processor), "image_size": 64},
           "optim": {"lr": 1e-3, "warmup_steps": 1}, "eval": {"max_samples": 8, "batch_size": 8},
           "train": {"steps": 3, "batch_size": 8, "log_every": 1, "num_threads": 1, "checkpoint_every": 2}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_role_rules_on_real_batches(upstream, mixed_dataset, tmp_path):
    """Low-quality samples never enter the policy task; actionless ones only video_gen; high ones all four."""
    from lda_train.upstream_trainer import UpstreamTrainer

    checkpoint, processor = upstream
    cfg = load_config(write_config(tmp_path / "c.yaml", checkpoint, processor, [mixed_dataset], tmp_path / "out"))
    trainer = UpstreamTrainer(cfg)
    seen: dict[int, set[str]] = {int(r): set() for r in Quality}
    for step in range(12):
        batch = trainer.data.batch(trainer.sampler.batch(step, 16))
        for role, task in zip(batch.roles, batch.tasks, strict=True):
            seen[int(role)].add(task)
        low = batch.roles == Quality.LOW
        assert not any(t == "policy" for t, is_low in zip(batch.tasks, low, strict=True) if is_low)
        actionless = batch.roles == Quality.ACTIONLESS
        assert all(t == "video_gen" for t, a in zip(batch.tasks, actionless, strict=True) if a)
        # actionless samples carry no action: nothing of theirs is a loss target
        assert not batch.tensors["action_mask"][torch.from_numpy(actionless)].any()
        assert batch.tensors["actions"].abs().max() <= 1.0 + 1e-6  # min-max normalised with the run's statistics
        assert batch.tensors["actions"].shape[1:] == (16, 138) and batch.tensors["state"].shape[1:] == (2, 58)
        assert batch.tensors["curr_images"].shape[1:] == (2, 64, 64, 3)  # t - 0.5 s and t
        assert not batch.tensors["action_mask"][..., 7:].any()  # the test arm's 7 dims, padding masked
    assert seen[Quality.HIGH] == {"policy", "inverse_dynamics", "forward_dynamics", "video_gen"}
    assert seen[Quality.LOW] == {"inverse_dynamics", "forward_dynamics", "video_gen"}
    assert seen[Quality.ACTIONLESS] == {"video_gen"}
    assert trainer.slots == {"test_arm": 31}  # a free slot: the highest, never the authors' GR-1 slot 24

    # frames decoded per batch by lerobot (upstream.preload_frames=false) are the preloaded ones
    from lda_train.latent_cache import FrameWindowDataset, plan_keys

    plan = trainer.sampler.batch(99, 6)
    offsets = [-0.5, 0.0, 0.5]
    decoded = torch.stack([FrameWindowDataset(trainer.sources, offsets)[k] for k in plan_keys(plan)])
    online, preloaded = trainer.data.batch(plan, decoded), trainer.data.batch(plan)
    for key in ("curr_images", "future_images"):
        assert torch.equal(online.tensors[key], preloaded.tensors[key])


def test_finetune_writes_an_upstream_checkpoint_and_resumes(upstream, mixed_dataset, tmp_path, capsys):
    from lda_policy.model.upstream.checkpoint import load_upstream, read_normalization
    from lda_policy.model.upstream.policy import UpstreamPolicy

    checkpoint, processor = upstream
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", checkpoint, processor, [mixed_dataset], out)
    assert train_main(["--config", str(cfg_path), "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert all(r[f"loss/{t}"] is None or np.isfinite(r[f"loss/{t}"]) for r in log
               for t in ("policy", "inverse_dynamics", "forward_dynamics", "video_gen"))
    text = capsys.readouterr().out
    assert "samples/s eta" in text and "final model" in text
    evaluation = json.loads((out / "eval" / "step_000003.json").read_text())
    assert all(v is None or np.isfinite(v) for v in evaluation["per_task"].values())
    policy_eval = evaluation["policy"]  # held-out policy samples: physical-unit L1 and the predict-the-mean one
    assert policy_eval["samples"] > 0 and policy_eval["action_l1"] > 0 and policy_eval["baseline_mean_action_l1"] > 0

    base, tuned = load_upstream(checkpoint), load_upstream(out / "model")
    before, after = base.state_dict(), tuned.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("dit.") for k in changed) and any(k.startswith("action_decoder.") for k in changed)
    assert not any(k.startswith("vision_encoder.") for k in changed)  # DINOv3 stays frozen
    stats = read_normalization(out / "model")
    assert list(stats) == ["test_arm"] and stats["test_arm"]["embodiment_id"] == 31
    assert len(stats["test_arm"]["action"]["min"]) == 7
    assert json.loads((out / "model" / "config.json").read_text())["source"]["fine_tuned_from"] == str(checkpoint)

    policy = UpstreamPolicy(out / "model", processor)  # the deployed path reads it back, physical units
    frames = np.random.default_rng(0).integers(0, 256, (1, 2, 64, 64, 3), dtype=np.uint8)
    acted = policy.act(frames, ["reach the goal"], np.zeros((1, 2, 58)), [31], noise=torch.zeros(1, 16, 138))
    assert acted["actions"].shape == (1, 16, 7) and np.isfinite(acted["actions"]).all()
    two = np.concatenate([frames, frames[:, ::-1]])
    texts = ["reach the goal", "move the gripper to the marker"]
    trained_on = vlm_inputs(policy.processor, policy.model.config.vlm_prompt, two, texts)
    deployed = policy.vlm_inputs(two, texts)  # the VLM sees in training what it sees deployed
    assert set(trained_on) == set(deployed)
    assert all(torch.equal(trained_on[k], deployed[k]) for k in deployed)

    # the run refuses to start over its own checkpoints, and --resume continues from the newest one
    assert train_main(["--config", str(cfg_path), "--no-progress"]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert train_main(["--config", str(cfg_path), "--resume", "--no-progress", "upstream.state=raw"]) == 1
    assert "upstream.state" in capsys.readouterr().err
    assert train_main(["--config", str(cfg_path), "--resume", "--no-progress", "train.steps=4"]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "step_000003" in text and "step 4/4" in text


def test_dataset_sizes_the_checkpoint_cannot_take_are_refused_by_name():
    from types import SimpleNamespace

    from lda_policy.model.upstream import UpstreamConfig
    from lda_train.data import DataError
    from lda_train.upstream_data import assign_slots, check_dimensions

    config = UpstreamConfig(num_heads=2, head_dim=16, num_layers=1, hidden_size=32, dit_output_dim=32, text_dim=32)

    def source(action_dim, state_dim, name="arm"):
        return SimpleNamespace(action_dim=action_dim, state_dim=state_dim, has_action=True, embodiment=name,
                               where=f"data.datasets.0 ({name!r})")

    with pytest.raises(DataError, match="140-d actions exceed the checkpoint's 138-d"):
        check_dimensions([source(140, 8)], config, "sincos")
    with pytest.raises(DataError, match=r"64-d, above the checkpoint's 58-d state.*upstream.state=raw"):
        check_dimensions([source(28, 32)], config, "sincos")
    check_dimensions([source(28, 32)], config, "raw")  # 32 raw values fit
    with pytest.raises(DataError, match="upstream.embodiment_slots.arm: slot 32 is out of range"):
        assign_slots([source(7, 8)], 32, {"arm": 32})
    assert assign_slots([source(7, 8, "gr1_humanoid"), source(7, 8)], 32, {}) == {"gr1_humanoid": 24, "arm": 31}
    with pytest.raises(DataError, match="share a slot"):
        assign_slots([source(7, 8), source(7, 8, "other")], 32, {"arm": 5, "other": 5})


def test_bad_configs_are_refused_by_name(upstream, mixed_dataset, tmp_path, capsys):
    checkpoint, processor = upstream

    def run(*overrides, name="c"):
        cfg = write_config(tmp_path / f"{name}.yaml", checkpoint, processor, [mixed_dataset], tmp_path / f"o_{name}")
        code = train_main(["--config", str(cfg), "--no-progress", *overrides])
        return code, capsys.readouterr().err

    code, err = run("upstream.embodiment_slots={test_arm: 40}", name="slot")
    assert code == 1 and "upstream.embodiment_slots.test_arm: slot 40 is out of range" in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text(json.dumps({"format": "something-else"}))
    code, err = run(f"model.checkpoint={junk}", name="junk")
    assert code == 1 and "neither an LDA checkpoint" in err and "lda-import-upstream" in err
    code, err = run(f"model.checkpoint={tmp_path / 'nowhere'}", name="nowhere")
    assert code == 1 and "nowhere is not a directory" in err
    code, err = run("upstream.processor=null", name="noproc")
    assert code == 1 and "upstream.processor is not set" in err
    cfg = write_config(tmp_path / "cache.yaml", checkpoint, processor, [mixed_dataset], tmp_path / "o_cache")
    assert cache_main(["--config", str(cfg)]) == 1  # its model runs DINOv3 itself: no latent cache
    assert "needs no latent cache" in capsys.readouterr().err


def test_loss_goes_down_on_a_tiny_overfit_set(upstream, tmp_path):
    """Two high-quality episodes, 20 steps: the loss with fixed draws on the training samples falls
    (measured 1.71 -> 1.17 after 30 steps, lr 3e-3)."""
    from lda_train.upstream_trainer import UpstreamTrainer, fixed_losses

    checkpoint, processor = upstream
    data = record_dataset(tmp_path / "two", ["high", "high"], length=20, seed=3)
    cfg = load_config(write_config(tmp_path / "c.yaml", checkpoint, processor, [data], tmp_path / "out",
                                   data={"heldout_fraction": 0.0},
                                   optim={"lr": 3e-3, "min_lr": 1e-3, "warmup_steps": 2},
                                   train={"steps": 20, "checkpoint_every": 1000, "log_every": 10},
                                   eval={"enabled": False}))
    trainer = UpstreamTrainer(cfg)
    probe = trainer.sampler.batch(10_000, 16)
    before = fixed_losses(trainer, probe, 16, seed=0)["loss"]
    trainer.train()
    after = fixed_losses(trainer, probe, 16, seed=0)["loss"]
    print(f"fixed-draw loss on the training samples: {before:.4f} -> {after:.4f}")
    assert after < 0.85 * before


def test_vlm_finetune_trains_and_writes_the_vlm(upstream, mixed_dataset, tmp_path):
    """upstream.vlm=finetune: the VLM trains with the action model (as the authors do) and is written back;
    the batch tiled twice (the authors' repeated_diffusion_steps); frames decoded per batch."""
    from lda_policy.model.upstream.checkpoint import read_upstream_config
    from lda_policy.model.upstream.vlm import load_vlm

    checkpoint, processor = upstream
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", checkpoint, processor, [mixed_dataset], out,
                       upstream={"vlm": "finetune", "repeated_diffusion_steps": 2, "preload_frames": False},
                       train={"steps": 1},
                       eval={"enabled": False})
    assert train_main(["--config", str(cfg), "--no-progress"]) == 0
    spec = read_upstream_config(checkpoint).vlm
    before, after = load_vlm(checkpoint, spec).state_dict(), load_vlm(out / "model", spec).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(".layers.1." in k for k in changed)  # the last decoder layer moved
    assert not (out / "model" / "vlm.safetensors").samefile(checkpoint / "vlm.safetensors")


def test_an_interrupted_run_resumes_on_the_same_curve(upstream, mixed_dataset, tmp_path, monkeypatch):
    """Batches, noise, times, dropout, weights and AdamW state are restored: the resumed losses are the
    uninterrupted run's, bit for bit."""
    from lda_train import upstream_trainer

    checkpoint, processor = upstream
    common = {"train": {"steps": 4, "checkpoint_every": 2}, "eval": {"enabled": False}}

    def losses(name: str, resume: bool = False) -> list[float]:
        cfg = load_config(write_config(tmp_path / f"{name}.yaml", checkpoint, processor, [mixed_dataset],
                                       tmp_path / name, **common))
        upstream_trainer.UpstreamTrainer(cfg, resume=resume).train()
        return [json.loads(line)["loss"] for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]

    whole = losses("whole")
    step = upstream_trainer.UpstreamTrainer._step

    def interrupted(self, i, *args):
        if i == 2:
            raise KeyboardInterrupt
        return step(self, i, *args)

    monkeypatch.setattr(upstream_trainer.UpstreamTrainer, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        losses("cut")
    monkeypatch.setattr(upstream_trainer.UpstreamTrainer, "_step", step)
    assert losses("cut", resume=True) == whole
