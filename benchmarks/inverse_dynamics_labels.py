#!/usr/bin/env python3
"""How good are inverse-dynamics labels? ``lda-label-actions`` measured where the truth is known.

    source scripts/env.sh
    make demo                                                   # a recording, a checkpoint, a training run
    python benchmarks/inverse_dynamics_labels.py --demo out/demo                   # label quality only (minutes)
    python benchmarks/inverse_dynamics_labels.py --demo out/demo --train-compare   # + two trainings
    python benchmarks/inverse_dynamics_labels.py --smoke --out /tmp/labels.json    # a minute: a tiny demo of its own

1. **Label quality.** The demo's held-out ``high`` episodes (never trained on) have teleoperated actions.
   Their actions are dropped and predicted again by the checkpoint's inverse dynamics
   (:class:`lda_train.label_actions.ActionLabeller`, one and two passes); the mean |label - truth| per
   action dimension is reported next to predict-the-mean (the mean action of the trained ``high``
   episodes) and next to the policy's own first action at each step (given the true history actions).
2. **Do the labels help training?** (``--train-compare``) The demo's ``actionless`` episodes are labelled
   into a new dataset, where they become ``low``; the demo's training config then runs twice with the same
   seed and steps, on the original dataset and on the labelled one, and the held-out figures of both are
   reported (the ``high`` held-out split is the same in both; the check is part of the run).

Writes ``benchmarks/results/inverse_dynamics_labels.json`` and prints tables. ``--smoke`` (run by
``tests/test_benchmarks_smoke.py``) builds a demo-shaped directory of its own (a recorded test dataset with
high and actionless episodes, a random one-layer DINOv3 and checkpoint) and runs both parts, with 2-step
trainings.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def heldout_high(summary: dict, dataset: str) -> list[int]:
    for d in summary["datasets"]:
        if d["name"] == Path(dataset).name or Path(d["root"]).resolve() == Path(dataset).resolve():
            return sorted(d["heldout_episodes"])
    raise SystemExit(f"inverse_dynamics_labels: {dataset} is not in the run's data_summary.json")


@torch.no_grad()
def policy_first_actions(labeller, i: int, latents: torch.Tensor) -> np.ndarray:
    """The policy's first action at every step of episode ``i`` (true history actions), (n - 1, A)."""
    src, s = labeller.source, labeller.settings
    ep = src.episodes[i]
    n = ep.end - ep.start
    obs_idx = np.clip(np.arange(n)[:, None] + src.offsets.obs[None, :], 0, n - 1)
    hist_idx = np.clip(np.arange(n)[:, None] + src.offsets.history[None, :], 0, n - 1)
    text = src.task_text[int(src.task_index[ep.start])]
    tokens, mask = labeller.runtime.encode_instruction(text)
    state = torch.as_tensor(src.state[ep.start:ep.end])
    truth = src.action[ep.start:ep.end]
    out = []
    for lo in range(0, n - 1, s.batch_size):
        rows = np.arange(lo, min(lo + s.batch_size, n - 1))
        history = truth[hist_idx[rows]] if len(src.offsets.history) else None
        obs = labeller._observation(latents[obs_idx[rows]], tokens, mask, state, rows, history)
        chunk = labeller.runtime.model.policy(obs, num_steps=s.num_steps, seed=s.seed + lo, noise_scale=0.0)
        out.append(chunk[:, 0].double().cpu().numpy())
    return np.concatenate(out)


def label_quality(args, runtime) -> dict:
    from lda_common.schema import Quality
    from lda_train.label_actions import ActionLabeller, LabelSettings

    summary = json.loads((args.demo / "train" / "data_summary.json").read_text())
    held = heldout_high(summary, str(args.demo / "dataset"))
    one = ActionLabeller(runtime, args.demo / "dataset", LabelSettings(passes=1, seed=args.seed))
    two = ActionLabeller(runtime, args.demo / "dataset", LabelSettings(passes=2, seed=args.seed))
    src = one.source
    eps = [i for i, e in enumerate(src.episodes) if e.index in held and e.role == Quality.HIGH]
    trained = [e for e in src.episodes if e.index not in held and e.role == Quality.HIGH]
    rows = np.concatenate([np.arange(e.start, e.end) for e in trained])
    rows = rows[src.frame_action_valid[rows]]
    mean_action = src.action[rows].mean(axis=0)
    errs = {"label_1_pass": [], "label_2_passes": [], "policy_first_action": [], "predict_the_mean": []}
    t0 = time.monotonic()
    for i in eps:
        ep = src.episodes[i]
        latents = one.episode_latents(i)
        valid = src.frame_action_valid[ep.start:ep.end - 1]
        truth = src.action[ep.start:ep.end - 1][valid]
        errs["label_1_pass"].append(np.abs(one.predict(i, latents)[:-1][valid] - truth))
        errs["label_2_passes"].append(np.abs(two.predict(i, latents)[:-1][valid] - truth))
        errs["policy_first_action"].append(np.abs(policy_first_actions(one, i, latents)[valid] - truth))
        errs["predict_the_mean"].append(np.abs(mean_action[None] - truth))
        print(f"[labels] episode {ep.index}: {len(truth)} steps ({time.monotonic() - t0:.0f} s so far)", flush=True)
    names = src.features["action"]["names"]
    per_dim = {k: dict(zip(names, np.concatenate(v).mean(axis=0).round(6).tolist(), strict=True))
               for k, v in errs.items()}
    mean = {k: float(np.concatenate(v).mean()) for k, v in errs.items()}
    return {"heldout_high_episodes": [src.episodes[i].index for i in eps],
            "steps": int(sum(len(v) for v in errs["predict_the_mean"])), "l1_mean": mean, "l1_per_dimension": per_dim,
            "seconds": round(time.monotonic() - t0, 1)}


def train_compare(args, runtime) -> dict:
    from lda_bringup.demo import TRAIN_SETTINGS
    from lda_common.schema import episodes_with_quality
    from lda_train.label_actions import ActionLabeller, LabelSettings

    work = args.work
    labelled = work / "dataset_labelled"
    summary = ActionLabeller(runtime, args.demo / "dataset", LabelSettings(seed=args.seed)).write(
        labelled, checkpoint=args.demo / "checkpoint")
    print(f"[labels] labelled episodes {summary['labelled_episodes']} into {labelled}", flush=True)
    runs = {}
    for name, root in (("without_labels", args.demo / "dataset"), ("with_labels", labelled)):
        out = work / f"train_{name}"
        steps = args.steps  # the demo's own overrides (lda_bringup.demo), on another dataset
        cmd = ["lda-train", "--config", str(REPO / "config" / "train" / "demo_cpu.yaml"), f"output_dir={out}",
               f"data.datasets.0.root={root}", f"encoders.dino_path={args.demo / 'dinov3-random'}",
               f"cache.dir={args.demo / 'latent_cache'}", f"seed={args.seed}", f"train.steps={steps}",
               f"train.checkpoint_every={steps}", f"train.eval_every={max(steps // 4, 1)}",
               f"optim.warmup_steps={max(steps // 10, 1)}", *TRAIN_SETTINGS, "--no-progress"]
        t0 = time.monotonic()
        if not (out / "eval" / "latest.json").is_file():
            subprocess.run(cmd, check=True)
        ev = json.loads((out / "eval" / "latest.json").read_text())
        data = json.loads((out / "data_summary.json").read_text())
        high = set(episodes_with_quality(root, "high"))
        runs[name] = {"policy_action_l1": ev["policy"]["action_l1"],
                      "policy_baseline_mean_action_l1": ev["policy"]["baseline_mean_action_l1"],
                      "inverse_dynamics_action_l1": ev.get("inverse_dynamics", {}).get("action_l1"),
                      "forward_dynamics_latent_mse": ev.get("forward_dynamics", {}).get("latent_mse"),
                      "heldout_high": sorted(high & set(data["datasets"][0]["heldout_episodes"])),
                      "episodes_by_role": data["datasets"][0]["train_episodes_by_role"],
                      "wall_s": round(time.monotonic() - t0, 1), "command": " ".join(cmd)}
    same = runs["with_labels"]["heldout_high"] == runs["without_labels"]["heldout_high"]
    return {"labelled_episodes": summary["labelled_episodes"], "steps": args.steps, "runs": runs,
            "same_heldout_high_episodes": same}


def smoke_demo(root: Path) -> Path:
    """A directory laid out as ``make demo``'s out/demo at test sizes: a recorded test dataset, a random
    one-layer DINOv3, a random-weight checkpoint, and train/data_summary.json naming one held-out episode."""
    from lda_testing.datasets import record_dataset, robot_config
    from lda_testing.deploy import make_checkpoint

    record_dataset(root / "dataset", ["high"] * 5 + ["actionless"] * 2, length=12, seed=3)
    (root / "robot.yaml").write_text(json.dumps(robot_config().to_dict()))
    model = make_checkpoint(root / "model", root / "robot.yaml", calibrate=False)
    shutil.copytree(model["checkpoint"], root / "checkpoint")
    shutil.copytree(model["dino_path"], root / "dinov3-random")
    (root / "train").mkdir()
    summary = {"datasets": [{"name": "dataset", "root": str(root / "dataset"), "heldout_episodes": [0]}]}
    (root / "train" / "data_summary.json").write_text(json.dumps(summary))
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=REPO / "out" / "demo", help="a finished make demo's out/demo")
    ap.add_argument("--train-compare", action="store_true", help="also train with and without the labels")
    ap.add_argument("--steps", type=int, default=1200, help="training steps of each run (the demo's 1200)")
    ap.add_argument("--work", type=Path, default=None, help="where the labelled dataset and the runs go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "inverse_dynamics_labels.json")
    ap.add_argument("--smoke", action="store_true", help="a tiny demo of its own, both parts (needs --out)")
    args = ap.parse_args()
    if args.smoke:
        if args.out.resolve().parent == RESULTS.resolve():
            ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
        args.demo = smoke_demo(Path(tempfile.mkdtemp(prefix="id_labels_smoke_")))
        args.train_compare, args.steps = True, 2
    args.demo = args.demo.resolve()
    args.work = (args.work or args.demo / "label_study").resolve()
    from lda_train.label_actions import load_runtime

    runtime = load_runtime(args.demo / "checkpoint", args.demo / "dinov3-random")
    result = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} torch threads)",
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=REPO).stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "demo": str(args.demo),
              "label_quality": label_quality(args, runtime)}
    q = result["label_quality"]
    print(f"\nheld-out high episodes {q['heldout_high_episodes']}, {q['steps']} steps: mean |action - truth|")
    for k, v in q["l1_mean"].items():
        print(f"  {k:22s} {v:.5f}")
    if args.train_compare:
        result["train_compare"] = train_compare(args, runtime)
        print("\nheld-out after training        policy L1   (mean)    inverse L1  fwd MSE")
        for name, r in result["train_compare"]["runs"].items():
            cells = [r[k] for k in ("policy_action_l1", "policy_baseline_mean_action_l1",
                                    "inverse_dynamics_action_l1", "forward_dynamics_latent_mse")]
            a, b, c, d = ("n/a" if v is None else f"{v:.5f}" for v in cells)
            print(f"  {name:28s} {a:9s}  ({b})  {c:9s}   {d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
