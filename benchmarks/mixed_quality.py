"""The paper's Table IV on the simulator: does low-quality data help when each piece of data keeps its role?

    python benchmarks/mixed_quality.py                         # on the demo's recording (run `make demo` first)
    python benchmarks/mixed_quality.py --seeds 0 1 2 --steps 1200 --episodes 10 --jobs 2
    python benchmarks/mixed_quality.py --smoke --out /tmp/mixed_quality.json   # ~2 min: own tiny recording, 2 steps

Same data, same compute (optimiser steps x batch), three trainings per seed:

(a) ``policy_high``      policy objective only, on the ``high`` episodes;
(b) ``policy_high_low``  policy objective only, on ``high`` + ``low`` episodes, both treated as demonstrations;
(c) ``lda_role_aware``   all four objectives, role-aware: high -> all, low -> dynamics + forecasting,
                         actionless -> forecasting.

Each is scored by its held-out policy action L1 (from ``lda-train``'s evaluation, with the
predict-the-mean baseline) and by closed-loop success on the simulator (model host and safety gate), on
the same unseen seeds. Figures are written to ``benchmarks/results/mixed_quality.json`` and printed as
a table with the mean and spread over seeds. It reuses the demo's dataset, latent cache and encoder, and
trains with the demo's settings (``lda_bringup.demo.TRAIN_SETTINGS``). ``--jobs N`` runs N trainings and
closed loops at once, each on its own ROS_DOMAIN_ID. A finished run is not repeated (delete its folder
under ``--work`` to redo it).

``--smoke`` (run by ``tests/test_benchmarks_smoke.py``) needs no ``make demo``: in a temporary directory it
writes a one-layer random DINOv3, records 3 high + 1 low + 1 actionless simulator episodes with
``launch/sim_record.launch.yaml`` (the demo's ``encoder`` and ``record`` phases; the first training builds
the latent cache, or ``lda-cache-latents`` does with ``--jobs`` above 1), then runs all three
variants for one seed: 2 training steps, a calibration from every 25th control tick and one 5-step
closed-loop episode each (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lda_bringup.demo import DEMO_ROBOTS, EVAL_SETTINGS, FULL, TRAIN_SETTINGS, calibration_command

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# --smoke: every phase of every variant at the smallest sizes; arguments given on the command line still win.
SMOKE = {"seeds": [0], "steps": 2, "episodes": 1, "max_steps": 5, "jobs": 1, "calibrate_every": 25}
# The smoke's own recording: 3 expert episodes (2 are held out, as in every run), one low, one actionless.
# From seed 1 the low-quality operator's episode (sim seed 4) takes ~45 steps; from seed 0 it took ~140.
SMOKE_RECORDING = ("n_high:=3", "n_low:=1", "n_actionless:=1", "seed:=1")

VARIANTS = {
    "policy_high": ["data.datasets.0.role=quality", "data.task_weights.policy=1.0",
                    "data.task_weights.forward_dynamics=0.0", "data.task_weights.inverse_dynamics=0.0",
                    "data.task_weights.forecast=0.0"],
    "policy_high_low": ["data.datasets.0.role=high", "data.task_weights.policy=1.0",
                        "data.task_weights.forward_dynamics=0.0", "data.task_weights.inverse_dynamics=0.0",
                        "data.task_weights.forecast=0.0"],
    "lda_role_aware": ["data.datasets.0.role=quality"],
}


def run(cmd: list[str], log: Path, domain_id: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    with log.open("a") as f:
        rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"mixed_quality: '{' '.join(map(str, cmd[:3]))} ...' failed (exit {rc}); see {log}; "
                         f"it ends:\n{tail}")


def heldout_episodes(dataset: Path, count: int = 2) -> list[int]:
    from lda_common.schema import episodes_with_quality

    high = episodes_with_quality(dataset, "high")
    if len(high) <= count:
        raise SystemExit(f"mixed_quality: {dataset} has {len(high)} high episodes; need more than {count}")
    return high[-count:]


def one_run(variant: str, seed: int, args: argparse.Namespace, domain_id: int) -> dict:
    run_dir = args.work / f"{variant}_seed{seed}"
    log = run_dir / "log.txt"
    overrides = [f"output_dir={run_dir / 'train'}", f"data.datasets.0.root={args.dataset}",
                 f"cache.dir={args.cache_dir}", f"encoders.dino_path={args.dino_path}", f"seed={seed}",
                 f"train.steps={args.steps}", *TRAIN_SETTINGS, f"train.checkpoint_every={args.steps}",
                 "train.eval_every=0",
                 f"optim.warmup_steps={max(args.steps // 10, 1)}",
                 # The same held-out episodes for every variant: expert ones, where action L1 means something.
                 f"data.datasets.0.heldout_episodes={json.dumps(heldout_episodes(args.dataset))}",
                 *VARIANTS[variant]]
    start = time.monotonic()
    if not (run_dir / "train" / "model").is_dir():
        run(["lda-train", "--config", "config/train/demo_cpu.yaml", *overrides], log, domain_id)
    train_s = time.monotonic() - start
    evaluation = json.loads((run_dir / "train" / "eval" / "latest.json").read_text())
    checkpoint = run_dir / "train" / "model"
    if not (checkpoint / "safety_calibration.json").is_file():  # on every bag, as the demo does
        bags = args.dataset.parent / f"{args.dataset.name}_bags"
        every = ["--every", str(args.calibrate_every)] if args.calibrate_every else []
        panda = DEMO_ROBOTS["sim_panda"]
        run([*calibration_command(checkpoint, args.dino_path, bags, REPO / "config/robots/sim_panda.yaml",
                                  panda.instruction(REPO)), *every], log, domain_id)
    results = run_dir / "closed_loop.json"
    if not results.is_file() and args.episodes > 0:
        run(["lda-launch", "launch/sim_demo.launch.yaml", f"checkpoint:={checkpoint}",
             f"dino_path:={args.dino_path}", f"episodes:={args.episodes}", f"max_steps:={args.max_steps}",
             "seed:=1000", *EVAL_SETTINGS, f"label:={variant}", f"results_path:={results}"], log, domain_id)
    closed = json.loads(results.read_text()) if results.is_file() else {}
    policy = evaluation.get("policy", {})
    return {"variant": variant, "seed": seed, "heldout_action_l1": policy.get("action_l1"),
            "predict_mean_action_l1": policy.get("baseline_mean_action_l1"),
            "success_rate": closed.get("success_rate"), "episodes": closed.get("episodes"),
            "train_wall_s": round(train_s, 1)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        for key in ("heldout_action_l1", "success_rate"):
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                out.setdefault(variant, {})[key] = {
                    "mean": statistics.fmean(values), "min": min(values), "max": max(values),
                    "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def smoke_inputs(args: argparse.Namespace, scratch: Path, domain_id: int) -> None:
    """What ``make demo`` leaves for the benchmark, in ``scratch``: an encoder, a recording with its bags and,
    for runs at once, the latent cache."""
    log = scratch / "inputs.log"
    start = time.monotonic()
    if args.dino_path == scratch / "dinov3-random":
        from lda_policy.model import write_random_dinov3_checkpoint

        write_random_dinov3_checkpoint(args.dino_path, num_layers=1)  # ViT-S/16 width and patch grid
    if args.dataset == scratch / "dataset":
        run(["lda-launch", "launch/sim_record.launch.yaml", f"dataset:={args.dataset}", *SMOKE_RECORDING], log,
            domain_id)
    if args.jobs > 1:  # as the demo does, before the runs: runs at once must not build one cache side by side
        run(["lda-cache-latents", "--config", "config/train/demo_cpu.yaml", f"output_dir={scratch / 'cache_run'}",
             f"data.datasets.0.root={args.dataset}", f"cache.dir={args.cache_dir}",
             f"encoders.dino_path={args.dino_path}", *TRAIN_SETTINGS], log, domain_id)
    print(f"[smoke] inputs in {scratch} ready ({time.monotonic() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=REPO / "out/demo/dataset")
    ap.add_argument("--dino-path", type=Path, default=REPO / "out/demo/dinov3-random")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "out/demo/latent_cache")
    ap.add_argument("--work", type=Path, default=REPO / "out/mixed_quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=1200, help="optimiser steps per training (batch 16)")
    ap.add_argument("--episodes", type=int, default=10, help="closed-loop episodes per run (0: skip)")
    ap.add_argument("--max-steps", type=int, default=FULL.eval_max_steps,
                    help="control steps per closed-loop episode (the demo's)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each trains on one CPU thread)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--calibrate-every", type=int, default=None,
                    help="calibrate_safety --every: predict from every n-th control tick (default: its own)")
    ap.add_argument("--out", type=Path, default=RESULTS / "mixed_quality.json")
    ap.add_argument("--smoke", action="store_true",
                    help="minutes-long check of every phase on its own tiny recording; needs --out outside "
                         "benchmarks/results")
    args = ap.parse_args(argv)
    scratch = None
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="lda_mixed_quality_smoke_"))
        ap.set_defaults(**SMOKE, dataset=scratch / "dataset", dino_path=scratch / "dinov3-random",
                        cache_dir=scratch / "latent_cache", work=scratch / "runs")
        args = ap.parse_args(argv)
        if args.out.resolve().is_relative_to(RESULTS):
            shutil.rmtree(scratch)
            ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    try:
        return benchmark(args, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def benchmark(args: argparse.Namespace, scratch: Path | None) -> int:
    if scratch is not None:
        smoke_inputs(args, scratch, domain_id=50 + os.getpid() % 50)
    if not (args.dataset / "meta" / "info.json").is_file():
        print(f"mixed_quality: no dataset at {args.dataset}; run `make demo` first or pass --dataset",
              file=sys.stderr)
        return 2
    runs = [(v, s) for s in args.seeds for v in args.variants]
    # One DDS domain per concurrent job, so parallel closed loops never hear each other's topics.
    domains: queue.Queue[int] = queue.Queue()
    for k in range(max(args.jobs, 1)):
        domains.put(50 + (os.getpid() + k) % 50)
    started = time.monotonic()
    finished = itertools.count(1)

    def job(i: int) -> dict:
        variant, seed = runs[i]
        start = time.monotonic()
        domain = domains.get()
        try:
            row = one_run(variant, seed, args, domain_id=domain)
        finally:
            domains.put(domain)
        done = next(finished)
        eta = (time.monotonic() - started) / done * (len(runs) - done)
        print(f"[{done}/{len(runs)}] {variant} seed {seed}: held-out action L1 {row['heldout_action_l1']}, "
              f"success {row['success_rate']} ({time.monotonic() - start:.0f} s; ETA {eta / 60:.0f} min)",
              flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        rows = list(pool.map(job, range(len(runs))))
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "runs": rows,
                                    "summary": summary}, indent=2) + "\n")
    print(f"\n{'variant':<18} {'held-out action L1 (mean, min..max)':<38} {'closed-loop success (mean, min..max)'}")
    for variant, s in summary.items():
        l1, sr = s.get("heldout_action_l1"), s.get("success_rate")
        l1_txt = f"{l1['mean']:.4f} ({l1['min']:.4f}..{l1['max']:.4f})" if l1 else "n/a"
        sr_txt = f"{sr['mean']:.2f} ({sr['min']:.2f}..{sr['max']:.2f}), n={sr['n']}" if sr else "n/a"
        print(f"{variant:<18} {l1_txt:<38} {sr_txt}")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
