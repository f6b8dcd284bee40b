"""The paper's Table IV on the simulator: does low-quality data help when each piece of data keeps its role?

    python benchmarks/mixed_quality_study.py                         # on the demo's recording (run `make demo` first)
    python benchmarks/mixed_quality_study.py --seeds 0 1 2 --steps 1200 --episodes 10 --jobs 2
    python benchmarks/mixed_quality_study.py --compute policy_samples --steps 1200   # equal policy samples instead
    python benchmarks/mixed_quality_study.py --smoke --out /tmp/mq.json   # ~2.5 min: own tiny recording, 2 steps

    # the study: how it depends on the number of expert episodes, on one recording of its own
    python benchmarks/mixed_quality_study.py --record 32 20 12 --n-high 6 12 24 --heldout 4 --seeds 0 1 \
        --steps 600 --episodes 8 --jobs 2 --plot docs/results/mixed_quality_study.png

Same data, four trainings per seed:

(a) ``policy_high``      policy objective only, on the ``high`` episodes;
(b) ``policy_high_low``  policy objective only, on ``high`` + ``low`` episodes, both treated as demonstrations;
(c) ``lda_high_only``    all four objectives, on the ``high`` episodes only (``data.role_weights`` low and
                         actionless at 0): the paper's own baseline in Table IV, LDA without the extra data;
(d) ``lda_role_aware``   all four objectives, role-aware: high -> all, low -> dynamics + forecasting,
                         actionless -> forecasting.

(c) against (d) separates the data from the objectives: both train the same four objectives, (d) also
sees the ``low`` and ``actionless`` episodes in their roles.

Same compute, by one of two definitions (``--compute``, recorded in the JSON as ``compute.definition``):

- ``steps`` (the default): every variant runs ``--steps`` optimiser steps of the same batch (16), so the
  same number of samples. The LDA variants then spend part of their batch on dynamics and forecasting:
  their policy sees a fraction of the policy samples of (a) and (b).
- ``policy_samples``: every variant gets the same number of *policy-objective* samples,
  ``--steps`` x batch (what (a) and (b), whose every sample is a policy sample, get from ``--steps``);
  the LDA variants get their dynamics and forecasting samples on top, i.e. more steps. A variant's steps
  are ``ceil(--steps / p)``, where ``p`` is the expected policy share of a sample under that variant's
  config: the sampler's exact expectation over its draws (``lda_train.trainer.expected_sample_shares``:
  the datasets, the held-out split, ``task_weights`` and ``role_weights``; 1.0 for (a) and (b)). The
  number actually drawn is random around it (binomial: within a few per cent at these sizes); each run
  records what its sampler drew (``effective_samples``, per objective and per role, from ``lda-train``'s
  evaluation JSON) next to the target.

Whatever the definition, the JSON holds each variant's steps under both (``compute.steps``,
``compute.policy_samples_steps``) and its expected shares.

The study (``--n-high``): every run trains on the first N of the ``high`` episodes that are not held out
(``data.datasets.0.train_episodes``), with every ``low`` and ``actionless`` episode of the recording (in
their roles for (d), as demonstrations for (b), unused by (a) and (c)); the held-out ``high`` episodes
(``--heldout``, the last ones) and the closed-loop seeds are the same for every run. ``--record HIGH LOW
ACTIONLESS`` records that pool once under ``--work`` (the scripted operator on the simulator, through the
recorder; an expert episode that fails is saved as ``low``) with a random DINOv3 and one latent cache,
reused by every run. Each record of the JSON carries ``variant``, ``n_high``, ``seed``, ``heldout_l1`` and
``success_rate``; the JSON is rewritten after every finished run, and ``--plot`` draws success and L1
against ``n_high``, one line per variant, the mean over seeds with min..max bars.

Each run is scored by its held-out policy action L1 (from ``lda-train``'s evaluation, with the
predict-the-mean baseline, on the same held-out ``high`` episodes for every variant) and by closed-loop
success on the simulator on the same unseen seeds. The judge: every variant runs with the safety
monitor *off* (``judge: monitor_off`` in the JSON). The model host gets a parameter file
(``host_params:=``, written under ``--work``) with ``require_calibration: false`` and
``warn_surprise``/``stop_surprise`` at 1e9: no calibration is made and surprise never STOPs the robot, so
the success measures the policy alone. (With the monitor on, the policy-only variants ran under a
forward-dynamics head that was never trained: one re-run had 3 of 10 ``policy_high_low`` episodes with
51-60 STOP statuses each.) The safety gate's hard limits and heartbeats stay on for every variant, and each
run still records its episodes' ``stop_statuses``.

Figures are written to ``benchmarks/results/mixed_quality_study.json`` (``runs``: one record per run;
``summary``: per variant and n_high, the mean, min, max and stdev over seeds) and printed as a table. (Its
forerunner, ``mixed_quality.py``, wrote ``mixed_quality.json``: the demo's recording, three variants.)
Without ``--record`` it reuses the demo's dataset, latent cache and encoder; it always trains with the
demo's settings (``lda_bringup.demo.TRAIN_SETTINGS``), on one torch thread per training. ``--jobs N`` runs N
trainings and closed loops at once, each on its own ROS_DOMAIN_ID. A finished run is not repeated (its
folder under ``--work`` is named by variant, n_high, seed and steps; delete it to redo it).

``--smoke`` (run by ``tests/test_benchmarks_smoke.py``) needs no ``make demo``: in a temporary directory it
writes a one-layer random DINOv3, records 3 high + 1 low + 1 actionless simulator episodes with
``launch/sim_record.launch.yaml`` (the demo's ``encoder`` and ``record`` phases; the first training builds
the latent cache, or ``lda-cache-latents`` does with ``--jobs`` above 1), then runs all four
variants for one seed on the study's path (``--n-high 1``: one of the high episodes, every low and
actionless one; the plot into the temporary directory): 2 training steps and one 5-step closed-loop
episode each (3 min 8 s on 2 cores, the recording included).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from lda_bringup.demo import EVAL_SETTINGS, FULL, TRAIN_SETTINGS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# --smoke: every phase of every variant at the smallest sizes, on the study's path (a subset of one high
# episode, and the plot); arguments given on the command line still win.
SMOKE = {"seeds": [0], "steps": 2, "episodes": 1, "max_steps": 5, "jobs": 1, "n_high": [1]}
# The smoke's own recording: 3 expert episodes (2 are held out, as in every run), one low, one actionless.
# From seed 1 the low-quality operator's episode (sim seed 4) takes ~45 steps; from seed 0 it took ~140.
SMOKE_RECORDING = ("n_high:=3", "n_low:=1", "n_actionless:=1", "seed:=1")
RECORDING_DONE = "recording.json"  # written beside a --record dataset once all its episodes are saved

VARIANTS = {
    "policy_high": ["data.datasets.0.role=quality", "data.task_weights.policy=1.0",
                    "data.task_weights.forward_dynamics=0.0", "data.task_weights.inverse_dynamics=0.0",
                    "data.task_weights.forecast=0.0"],
    "policy_high_low": ["data.datasets.0.role=high", "data.task_weights.policy=1.0",
                        "data.task_weights.forward_dynamics=0.0", "data.task_weights.inverse_dynamics=0.0",
                        "data.task_weights.forecast=0.0"],
    "lda_high_only": ["data.datasets.0.role=quality", "data.role_weights.low=0.0", "data.role_weights.actionless=0.0"],
    "lda_role_aware": ["data.datasets.0.role=quality"],
}
COMPUTE = ("steps", "policy_samples")
TRAIN_CONFIG = "config/train/demo_cpu.yaml"
# One torch thread per training: with --jobs 2 on 2 cores, two threads each would wait for each other.
# (The recorded study ran so; the demo itself trains on every core, as it runs alone.)
ONE_THREAD = "train.num_threads=1"
# The judge of every variant's closed loop: the monitor off (see the module docstring).
JUDGE = {"mode": "monitor_off", "host_params": {"require_calibration": False, "warn_surprise": 1.0e9,
                                                "stop_surprise": 1.0e9}}


def run(cmd: list[str], log: Path, domain_id: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    with log.open("a") as f:
        rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"mixed_quality: '{' '.join(map(str, cmd[:3]))} ...' failed (exit {rc}); see {log}; "
                         f"it ends:\n{tail}")


def split_high(dataset: Path, heldout: int) -> tuple[list[int], list[int]]:
    """The ``high`` episodes for training (in recording order) and the last ``heldout`` ones, held out."""
    from lda_common.schema import episodes_with_quality

    high = episodes_with_quality(dataset, "high")
    if len(high) <= heldout:
        raise SystemExit(f"mixed_quality: {dataset} has {len(high)} high episodes; need more than {heldout}")
    return high[:-heldout], high[-heldout:]


def train_episodes(dataset: Path, n_high: int, heldout: int) -> list[int]:
    """The first ``n_high`` training ``high`` episodes and every ``low`` and ``actionless`` one."""
    from lda_common.schema import episodes_with_quality

    pool, _ = split_high(dataset, heldout)
    if n_high > len(pool):
        raise SystemExit(f"mixed_quality: --n-high {n_high} needs {n_high} high episodes besides the {heldout} "
                         f"held out; {dataset} has {len(pool)} (record more with --record)")
    return sorted(pool[:n_high] + episodes_with_quality(dataset, "low", "actionless"))


def train_overrides(variant: str, args: argparse.Namespace, n_high: int | None = None) -> list[str]:
    """The variant's lda-train overrides on top of config/train/demo_cpu.yaml, before steps and seed."""
    subset = ([] if n_high is None else
              [f"data.datasets.0.train_episodes={json.dumps(train_episodes(args.dataset, n_high, args.heldout))}"])
    return [f"data.datasets.0.root={args.dataset}", f"cache.dir={args.cache_dir}",
            f"encoders.dino_path={args.dino_path}", *TRAIN_SETTINGS, ONE_THREAD,
            # The same held-out episodes for every variant: expert ones, where action L1 means something.
            f"data.datasets.0.heldout_episodes={json.dumps(split_high(args.dataset, args.heldout)[1])}",
            *subset, *VARIANTS[variant]]


@functools.cache
def _plan(variant: str, n_high: int | None, dataset: Path, cache_dir: Path, dino_path: Path, heldout: int) -> dict:
    """The variant's batch size and expected shares per objective and role (the sampler's expectation)."""
    from lda_train.config import load_config
    from lda_train.trainer import expected_sample_shares

    ns = argparse.Namespace(dataset=dataset, cache_dir=cache_dir, dino_path=dino_path, heldout=heldout)
    cfg = load_config(REPO / TRAIN_CONFIG, train_overrides(variant, ns, n_high))
    return {"batch_size": cfg.train.batch_size, "expected_share": expected_sample_shares(cfg)}


def plan(variant: str, args: argparse.Namespace, n_high: int | None = None) -> dict:
    """Steps of ``variant`` under both definitions of same compute, and the one this run uses.

    ``policy_samples``: ``ceil(--steps / p)`` steps, p the expected policy share of a sample, so that
    steps x batch x p reaches ``--steps`` x batch policy samples (what a policy-only variant gets)."""
    info = _plan(variant, n_high, args.dataset, args.cache_dir, args.dino_path, args.heldout)
    share = info["expected_share"]["objective"]["policy"]
    if share <= 0:
        raise SystemExit(f"mixed_quality: variant {variant} draws no policy samples; it cannot be compared")
    by = {"steps": args.steps, "policy_samples": math.ceil(args.steps / share - 1e-9)}
    return {**info, "policy_share": share, "steps_by_compute": by, "steps": by[args.compute],
            "policy_samples_target": args.steps * info["batch_size"]}


def host_params(args: argparse.Namespace) -> Path:
    """The model host's parameters for every closed loop: the shipped file with the monitor off."""
    params = yaml.safe_load((REPO / "config/deploy/model_host.yaml").read_text())
    params["/**"]["ros__parameters"].update(JUDGE["host_params"])
    path = args.work / "host_monitor_off.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def one_run(variant: str, seed: int, n_high: int | None, args: argparse.Namespace, domain_id: int) -> dict:
    p = plan(variant, args, n_high)
    steps = p["steps"]
    subset = "" if n_high is None else f"_high{n_high}"
    run_dir = args.work / f"{variant}{subset}_seed{seed}_{steps}steps"
    log = run_dir / "log.txt"
    overrides = [f"output_dir={run_dir / 'train'}", *train_overrides(variant, args, n_high), f"seed={seed}",
                 f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.eval_every=0",
                 f"optim.warmup_steps={max(steps // 10, 1)}"]
    train_s = None  # a run trained earlier is reused, not timed
    if not (run_dir / "train" / "model").is_dir():
        from lda_train.checkpoints import list_checkpoints

        # killed after its last checkpoint but before the export: continue it rather than be refused
        resume = ["--resume"] if list_checkpoints(run_dir / "train") else []
        start = time.monotonic()
        run(["lda-train", "--config", TRAIN_CONFIG, *resume, *overrides], log, domain_id)
        train_s = round(time.monotonic() - start, 1)
    evaluation = json.loads((run_dir / "train" / "eval" / "latest.json").read_text())
    checkpoint = run_dir / "train" / "model"
    results = run_dir / "closed_loop.json"
    if not results.is_file() and args.episodes > 0:
        run(["lda-launch", "launch/sim_demo.launch.yaml", f"checkpoint:={checkpoint}",
             f"dino_path:={args.dino_path}", f"host_params:={args.host_params}", f"episodes:={args.episodes}",
             f"max_steps:={args.max_steps}", "seed:=1000", *EVAL_SETTINGS, f"label:={variant}",
             f"results_path:={results}"], log, domain_id)
    closed = json.loads(results.read_text()) if results.is_file() else {}
    policy = evaluation.get("policy", {})
    drawn = evaluation.get("effective_samples") or {}
    trained_high = n_high if n_high is not None else len(split_high(args.dataset, args.heldout)[0])
    return {"variant": variant, "n_high": trained_high, "seed": seed, "heldout_l1": policy.get("action_l1"),
            "predict_mean_action_l1": policy.get("baseline_mean_action_l1"),
            "success_rate": closed.get("success_rate"), "episodes": closed.get("episodes"),
            "stop_statuses": sum(e.get("stop_statuses", 0) for e in closed.get("per_episode", [])) if closed else None,
            "train_wall_s": train_s, "compute": args.compute, "steps": steps,
            "batch_size": p["batch_size"], "policy_share_expected": p["policy_share"],
            "policy_samples": drawn.get("objective", {}).get("policy"), "effective_samples": drawn,
            "judge": JUDGE["mode"]}


def summarise(rows: list[dict]) -> dict:
    """``{variant: {n_high: {figure: mean, min, max, stdev, n}}}`` over the training seeds."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault(r["variant"], {}).setdefault(str(r["n_high"]), []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for variant, by_n in groups.items():
        for n_high, mine in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            stats = out.setdefault(variant, {}).setdefault(n_high, {})
            for key in ("heldout_l1", "success_rate", "policy_samples", "steps"):
                values = [r[key] for r in mine if r[key] is not None]
                if values:
                    stats[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                                  "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def prepare_inputs(args: argparse.Namespace, scratch: Path, recording: tuple[str, ...], domain_id: int) -> None:
    """What ``make demo`` leaves for the benchmark, in ``scratch``: an encoder, a recording and, for runs at
    once, the latent cache. Done once: a finished recording is marked by ``recording.json`` beside it."""
    log = scratch / "inputs.log"
    start = time.monotonic()
    done = scratch / RECORDING_DONE
    if done.is_file():
        return
    scratch.mkdir(parents=True, exist_ok=True)
    if args.dino_path == scratch / "dinov3-random" and not (args.dino_path / "config.json").is_file():
        from lda_policy.model import write_random_dinov3_checkpoint

        write_random_dinov3_checkpoint(args.dino_path, num_layers=1)  # ViT-S/16 width and patch grid
    if args.dataset == scratch / "dataset":
        if args.dataset.exists():  # a killed recording: appending to it would change the pool
            raise SystemExit(f"mixed_quality: {args.dataset} is an unfinished recording (no {done.name} beside "
                             f"it); delete {args.dataset} to record again")
        print(f"[inputs] recording {' '.join(recording)} into {args.dataset} (log: {log})", flush=True)
        run(["lda-launch", "launch/sim_record.launch.yaml", f"dataset:={args.dataset}", *recording], log,
            domain_id)
    if args.jobs > 1:  # as the demo does, before the runs: runs at once must not build one cache side by side
        run(["lda-cache-latents", "--config", "config/train/demo_cpu.yaml", f"output_dir={scratch / 'cache_run'}",
             f"data.datasets.0.root={args.dataset}", f"cache.dir={args.cache_dir}",
             f"encoders.dino_path={args.dino_path}", *TRAIN_SETTINGS, ONE_THREAD], log, domain_id)
    done.write_text(json.dumps({"recording": list(recording), "wall_s": round(time.monotonic() - start, 1)}) + "\n")
    print(f"[inputs] in {scratch} ready ({time.monotonic() - start:.0f} s)", flush=True)


def plot(rows: list[dict], path: Path) -> None:
    """Closed-loop success and held-out action L1 against n_high: one line per variant, the mean over seeds
    with min..max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax, label in (("success_rate", axes[0], "closed-loop success rate"),
                           ("heldout_l1", axes[1], "held-out policy action L1")):
        for k, variant in enumerate(v for v in VARIANTS if any(r["variant"] == v for r in rows)):
            by_n: dict[int, list[float]] = {}
            for r in rows:
                if r["variant"] == variant and r[key] is not None:
                    by_n.setdefault(r["n_high"], []).append(r[key])
            xs = sorted(by_n)
            mean = [statistics.fmean(by_n[x]) for x in xs]
            err = [[m - min(by_n[x]) for x, m in zip(xs, mean, strict=True)],
                   [max(by_n[x]) - m for x, m in zip(xs, mean, strict=True)]]
            # a small sideways shift per variant keeps overlapping bars readable
            ax.errorbar([x * (1 + 0.025 * (k - 1.5)) for x in xs], mean, yerr=err, marker="o", capsize=3,
                        label=variant)
        ax.set_xscale("log", base=2)
        xs_all = sorted({r["n_high"] for r in rows})
        ax.set_xticks(xs_all, [str(x) for x in xs_all])
        ax.set_xlabel("high (expert) episodes trained on")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    seeds = sorted({r["seed"] for r in rows})
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mixed-quality study: mean over training seeds {seeds}, bars min..max")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=REPO / "out/demo/dataset")
    ap.add_argument("--dino-path", type=Path, default=REPO / "out/demo/dinov3-random")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "out/demo/latent_cache")
    ap.add_argument("--work", type=Path, default=REPO / "out/mixed_quality")
    ap.add_argument("--record", type=int, nargs=3, metavar=("HIGH", "LOW", "ACTIONLESS"),
                    help="record this pool once under --work/recording (with its own encoder and latent cache) "
                         "instead of using the demo's; a failed expert episode is saved as low")
    ap.add_argument("--n-high", type=int, nargs="+", metavar="N",
                    help="the study: train on the first N high episodes (each N a set of runs); default: all "
                         "that are not held out")
    ap.add_argument("--heldout", type=int, default=2, help="the last K high episodes are held out for the L1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=1200,
                    help="optimiser steps per training (batch 16); with --compute policy_samples: the steps of a "
                         "policy-only variant, whose policy samples every variant gets")
    ap.add_argument("--compute", choices=COMPUTE, default="steps",
                    help="same compute as equal optimiser steps x batch (steps) or as equal policy-objective "
                         "samples, the LDA variants' dynamics and forecasting on top (policy_samples)")
    ap.add_argument("--episodes", type=int, default=10, help="closed-loop episodes per run (0: skip)")
    ap.add_argument("--max-steps", type=int, default=FULL.eval_max_steps,
                    help="control steps per closed-loop episode (the demo's)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each trains on one CPU thread)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=RESULTS / "mixed_quality_study.json")
    ap.add_argument("--plot", type=Path, help="also draw success and L1 against --n-high into this PNG")
    ap.add_argument("--smoke", action="store_true",
                    help="minutes-long check of every phase on its own tiny recording; needs --out outside "
                         "benchmarks/results")
    args = ap.parse_args(argv)
    scratch, recording = None, None
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="lda_mixed_quality_smoke_"))
        ap.set_defaults(**SMOKE, dataset=scratch / "dataset", dino_path=scratch / "dinov3-random",
                        cache_dir=scratch / "latent_cache", work=scratch / "runs", plot=scratch / "study.png")
        args = ap.parse_args(argv)
        recording = SMOKE_RECORDING
        if args.out.resolve().is_relative_to(RESULTS):
            shutil.rmtree(scratch)
            ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    elif args.record:
        high, low, actionless = args.record
        inputs = args.work / "recording"
        ap.set_defaults(dataset=inputs / "dataset", dino_path=inputs / "dinov3-random",
                        cache_dir=inputs / "latent_cache")
        args = ap.parse_args(argv)
        recording = (f"n_high:={high}", f"n_low:={low}", f"n_actionless:={actionless}", "seed:=0",
                     "write_bag:=false")
    try:
        if recording is not None:
            prepare_inputs(args, args.dataset.parent, recording, domain_id=50 + os.getpid() % 50)
        return benchmark(args)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def benchmark(args: argparse.Namespace) -> int:
    if not (args.dataset / "meta" / "info.json").is_file():
        print(f"mixed_quality: no dataset at {args.dataset}; run `make demo` first, pass --dataset or --record",
              file=sys.stderr)
        return 2
    args.host_params = host_params(args)
    n_highs = args.n_high or [None]
    # before the runs: a variant without policy samples, or an n_high the recording lacks, fails early
    plans = {(v, n): plan(v, args, n) for n in n_highs for v in args.variants}
    for (v, n), p in plans.items():
        print(f"[plan] {v}{'' if n is None else f' n_high {n}'}: expected policy share {p['policy_share']:.3f}, "
              f"{p['steps']} steps (steps: {p['steps_by_compute']['steps']}, "
              f"policy_samples: {p['steps_by_compute']['policy_samples']})", flush=True)
    # seed by seed: a study cut short still has every variant and n_high on its first seeds
    runs = [(v, s, n) for s in args.seeds for n in n_highs for v in args.variants]
    # One DDS domain per concurrent job, so parallel closed loops never hear each other's topics.
    domains: queue.Queue[int] = queue.Queue()
    for k in range(max(args.jobs, 1)):
        domains.put(50 + (os.getpid() + k) % 50)
    started = time.monotonic()
    finished = itertools.count(1)
    rows: dict[int, dict] = {}  # by position in `runs`
    lock = threading.Lock()

    def job(i: int) -> None:
        variant, seed, n_high = runs[i]
        start = time.monotonic()
        domain = domains.get()
        try:
            row = one_run(variant, seed, n_high, args, domain_id=domain)
        finally:
            domains.put(domain)
        with lock:  # the JSON after every run: an interrupted study keeps what it measured
            rows[i] = row
            write_results(args, plans, [rows[k] for k in sorted(rows)])
            done = next(finished)
        eta = (time.monotonic() - started) / done * (len(runs) - done)
        print(f"[{done}/{len(runs)}] {variant} n_high {row['n_high']} seed {seed}: held-out action L1 "
              f"{row['heldout_l1']}, success {row['success_rate']} ({time.monotonic() - start:.0f} s; "
              f"ETA {eta / 60:.0f} min)", flush=True)

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(job, range(len(runs))))
    summary = write_results(args, plans, [rows[k] for k in sorted(rows)])
    if args.plot:
        plot(list(rows.values()), args.plot)
        print(f"plot: {args.plot} ({args.plot.stat().st_size} bytes)")
    print(f"\nsame compute: {args.compute}; judge: {JUDGE['mode']}")
    print(f"\n{'variant':<16} {'n_high':>6} {'steps':>6} {'policy samples':>14} "
          f"{'held-out action L1 (mean, min..max)':<38} {'closed-loop success (mean, min..max)'}")
    for n_high in sorted({n for by_n in summary.values() for n in by_n}, key=int):
        for variant, by_n in summary.items():
            s = by_n.get(n_high)
            if s is None:
                continue
            l1, sr, ps, st = (s.get(k) for k in ("heldout_l1", "success_rate", "policy_samples", "steps"))
            l1_txt = f"{l1['mean']:.4f} ({l1['min']:.4f}..{l1['max']:.4f})" if l1 else "n/a"
            sr_txt = f"{sr['mean']:.2f} ({sr['min']:.2f}..{sr['max']:.2f}), n={sr['n']}" if sr else "n/a"
            ps_txt = f"{ps['mean']:.0f}" if ps else "n/a"
            print(f"{variant:<16} {n_high:>6} {st['mean']:>6.0f} {ps_txt:>14} {l1_txt:<38} {sr_txt}")
    print(f"\nwritten to {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def write_results(args: argparse.Namespace, plans: dict, rows: list[dict]) -> dict:
    summary = summarise(rows)

    every_high = len(split_high(args.dataset, args.heldout)[0])

    def per_run_kind(figure) -> dict:  # {variant: {n_high: figure}}, as the summary
        out: dict[str, dict] = {}
        for (v, n), p in plans.items():
            out.setdefault(v, {})[str(every_high if n is None else n)] = figure(p)
        return out

    compute = {"definition": args.compute,
               "policy_samples_target": args.steps * next(iter(plans.values()))["batch_size"] if plans else None,
               "steps": per_run_kind(lambda p: p["steps_by_compute"]["steps"]),
               "policy_samples_steps": per_run_kind(lambda p: p["steps_by_compute"]["policy_samples"]),
               "expected_share": per_run_kind(lambda p: p["expected_share"])}
    judge = {**JUDGE, "why": "the same judge for every variant: the policy-only variants' forward-dynamics head "
                             "is never trained, so a monitor would judge them with noise"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "compute": compute,
                               "judge": judge, "runs": rows, "summary": summary}, indent=2) + "\n")
    tmp.replace(args.out)
    return summary


if __name__ == "__main__":
    sys.exit(main())
