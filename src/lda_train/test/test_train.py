"""lda-train end to end: killed and resumed runs continue the same loss curve; two torchrun CPU
processes compute what one process computes on the same global batch; outputs (checkpoint layout,
evaluation JSON/PNG/TensorBoard) are there and loadable."""

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from lda_train.build import TrainError
from lda_train.trainer import Trainer, run_training
from safetensors.torch import load_file

from conftest import REPO, make_config


class Proc:
    """A child process whose merged output is collected line by line (no ROS needed)."""

    def __init__(self, cmd, cwd):
        import threading

        self.lines = []
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.reader = threading.Thread(target=lambda: self.lines.extend(line for line in self.proc.stdout),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text, timeout):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if text in self.output:
                return True
            time.sleep(0.01)
        return text in self.output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=5)


COMMON = ["train.num_threads=1", "train.deterministic=true", "eval.enabled=false"]


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]  # a resumed run re-logs steps after its checkpoint: last wins
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_killed_run_resumes_on_the_same_curve(mixed_dataset, dino_dir, cache_root, tmp_path):
    steps = ["train.steps=16", "train.checkpoint_every=4", "train.keep_checkpoints=2"]
    cfg, cfg_path, overrides = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / "killed",
                                           extra=COMMON + steps)
    cmd = ["lda-train", "--config", str(cfg_path), *overrides]
    with Proc(cmd, cwd=str(REPO)) as run:
        assert run.wait_for_output("(step 8)", timeout=240), run.output[-3000:]
        run.proc.send_signal(signal.SIGKILL)
        rc = run.proc.wait(timeout=30)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts[-1] in ("step_000008", "step_000012") and "step_000016" not in ckpts
    killed_at = int(ckpts[-1].split("_")[1])

    # the uninterrupted reference, in this process (same code path as the command)
    ref_cfg, _, _ = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / "reference", extra=COMMON + steps)
    run_training(ref_cfg, progress=False)

    # --resume, with evaluation switched on for the end (evaluation settings may change on resume)
    resume = subprocess.run([*cmd, "--resume", "eval.enabled=true"], capture_output=True, text=True, timeout=300,
                            cwd=REPO)
    assert resume.returncode == 0, resume.stdout[-2000:] + resume.stderr[-3000:]
    assert f"resumed from {tmp_path / 'killed' / 'checkpoints' / ckpts[-1]} (step {killed_at})" in resume.stdout
    got, want = _losses(tmp_path / "killed"), _losses(tmp_path / "reference")
    assert sorted(got) == sorted(want) == list(range(1, 17))
    np.testing.assert_allclose([got[s] for s in range(1, 17)], [want[s] for s in range(1, 17)], rtol=1e-5)
    assert want[16] < want[1]  # and it learns
    assert _close(_weights(tmp_path / "killed" / "model"), _weights(tmp_path / "reference" / "model"), 1e-5) < 1e-5

    # outputs of the resumed run
    out = tmp_path / "killed"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        ["step_000012", "step_000016"]  # keep_checkpoints=2
    ckpt = out / "checkpoints" / "step_000016"
    assert {p.name for p in ckpt.iterdir()} >= {"model", "optimizer.safetensors", "rng.safetensors",
                                              "training_state.json", "config.yaml"}
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt")], "pickle written"
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    from lda_policy.model import LDAModel

    model = LDAModel.from_pretrained(out / "model")
    assert "test_arm" in model.normalizer.to_dict()["embodiments"]
    result = json.loads((out / "eval" / "latest.json").read_text())
    assert result["step"] == 16
    pol = result["policy"]
    assert pol["samples"] > 0 and pol["action_l1"] > 0 and pol["baseline_mean_action_l1"] > 0
    # The arm and the fingers apart, weighted by their columns: together they give the overall figure.
    a_dim = model.config.embodiments[model.config.embodiment_index("test_arm")].action_dim  # one hand
    cols = {"pose": 6, "finger": a_dim - 6}
    assert set(cols) == {"pose", "finger"} and all(pol[f"{g}_l1"] > 0 for g in cols)
    assert pol["pose_ratio_to_baseline"] == pytest.approx(pol["pose_l1"] / pol["baseline_mean_pose_l1"])
    total = sum(pol[f"{g}_l1"] * n for g, n in cols.items()) / sum(cols.values())
    assert total == pytest.approx(pol["action_l1"], rel=1e-4)
    for head in ("forward_dynamics", "inverse_dynamics", "forecast"):
        assert result[head]["samples"] > 0, head
    fd = result["forward_dynamics"]
    assert 0 < fd["latent_mse"] and -1 <= fd["latent_cosine"] <= 1 and "baseline_copy_mse" in fd
    assert (out / "eval" / "curves.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "eval/policy/action_l1" in tags and "eval/forward_dynamics/latent_cosine" in tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_processes_match_one_process(mixed_dataset, dino_dir, cache_root, tmp_path):
    """DDP and FSDP over two gloo processes (micro-batch 4 each) vs. one process accumulating 2 x 4."""
    extra = COMMON + ["train.steps=3", "train.batch_size=8", "train.micro_batch_size=4", "train.checkpoint_every=3",
                      "optim.ema=true"]
    one_cfg, _, _ = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / "one", extra=extra)
    run_training(one_cfg, progress=False)  # 1 process x 2 accumulated micro-batches x 4
    want = _losses(tmp_path / "one")
    step3 = "checkpoints/step_000003"
    lda_train = shutil.which("lda-train")
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        cfg, cfg_path, overrides = make_config([mixed_dataset], dino_dir, cache_root, out,
                                               extra=[*extra, f"train.strategy={strategy}"])
        cmd = ["torchrun", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", lda_train, "--config", str(cfg_path), *overrides]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        assert "2 process(es) x 1 micro-batch(es) x 4" in run.stdout
        got = _losses(out)
        assert sorted(got) == [1, 2, 3]
        np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)], rtol=1e-5)
        for sub in ("model", "ema"):
            assert _close(_weights(out / step3 / sub), _weights(tmp_path / "one" / step3 / sub), 1e-5) < 1e-5, \
                (strategy, sub)
    # and the update was not trivial: the weights moved from their (seeded) initial values
    from lda_policy.model import LDAModel

    torch.manual_seed(0)
    initial = LDAModel(LDAModel.from_pretrained(tmp_path / "one" / "model").config).state_dict()
    assert _close(_weights(tmp_path / "one" / step3 / "model"), initial, 0) > 1e-4


def test_run_directory_guards(mixed_dataset, dino_dir, cache_root, tmp_path):
    from lda_train.config import dump_config

    cfg, _, _ = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / "guard")
    with pytest.raises(TrainError, match="no complete checkpoint"):
        Trainer(cfg, resume=True, progress=False)
    ckpt = tmp_path / "guard" / "checkpoints" / "step_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "training_state.json").write_text("{}")
    (tmp_path / "guard" / "checkpoints" / ".tmp-step_000008-123").mkdir()  # a killed save: ignored
    with pytest.raises(TrainError, match="already holds checkpoints"):
        Trainer(cfg, progress=False)
    other, _, _ = make_config([mixed_dataset], dino_dir, cache_root, tmp_path / "guard", extra=["seed=5"])
    (ckpt / "config.yaml").write_text(dump_config(other))
    with pytest.raises(TrainError, match=r"config differs from the run being continued in \['seed'\]"):
        Trainer(cfg, resume=True, progress=False)
