#!/usr/bin/env python3
"""Test-time chunk selection in the closed loop: success and chunk latency for k = 1 and k > 1 candidates.

    source scripts/env.sh
    python benchmarks/chunk_selection.py                          # the demo's checkpoint (make demo first)
    python benchmarks/chunk_selection.py --ks 1 4 8 --episodes 20 --checkpoints out/demo/checkpoint out/seed1/checkpoint
    python benchmarks/chunk_selection.py --smoke --out /tmp/x.json  # random checkpoint, seconds (make test runs it)

For each checkpoint (several training seeds on one recording) and each k, ``launch/sim_demo.launch.yaml``
runs the real deployment (simulator, model host with
``selection.k`` = k, safety gate, evaluation node) for ``--episodes`` episodes on the same unseen seeds
(1000, 1001, ...), the policy's flow stochastic (``noise_scale`` 1) for every k, the simulator at the demo's
0.3x real time. While it runs, this script listens to ``/lda/proposed_chunk`` and keeps each chunk's
``inference_time`` (the host's time from the observation to the proposal: DINO, policy, and for k > 1 the
batched forward dynamics, the forecast and the scoring) and its selection score and spread.

Writes ``benchmarks/results/chunk_selection.json``: ``summary`` has one entry per k over all checkpoints
(``k``, ``episodes``, ``successes``, ``chunk_latency_ms``: the median over every chunk), ``runs`` one entry
per checkpoint and k (the same keys, the per-episode records, the score statistics); prints a table.
Resumable: each run is kept in ``--work`` and not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SMOKE = {"ks": [1, 2], "episodes": 1, "max_steps": 20}


class ChunkListener:
    """Keeps (inference_time, candidates, score, spread) of every proposal on /lda/proposed_chunk."""

    def __init__(self) -> None:
        import rclpy
        from lda_common.messages import Topics
        from lda_policy.ros_io import COMMAND_QOS
        from rclpy.executors import SingleThreadedExecutor

        from lda_msgs.msg import ActionChunk

        rclpy.init()
        self.node = rclpy.create_node("chunk_selection_benchmark")
        self.rows: list[tuple[float, int, float, float]] = []
        self.node.create_subscription(ActionChunk, Topics.PROPOSED_CHUNK, self._on_chunk, COMMAND_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_chunk(self, msg) -> None:
        self.rows.append((msg.inference_time, msg.candidates, msg.selection_score, msg.selection_score_spread))

    def take(self) -> list[tuple[float, int, float, float]]:
        rows, self.rows = self.rows, []
        return rows

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown()


def closed_loop(index: int, checkpoint: Path, k: int, args: argparse.Namespace, listener: ChunkListener) -> dict:
    """One checkpoint's closed loop with k candidates (kept in ``--work``; a finished one is read back)."""
    name = f"c{index}_k{k}"
    out = args.work / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    results = args.work / f"{name}_eval.json"
    log = args.work / f"{name}.log"
    cmd = ["lda-launch", "launch/sim_demo.launch.yaml", f"checkpoint:={checkpoint}",
           f"dino_path:={args.dino_path}", f"episodes:={args.episodes}", f"max_steps:={args.max_steps}",
           f"seed:={args.seed}", "noise_scale:=1.0", f"real_time_factor:={args.real_time_factor}",
           f"selection_k:={k}", f"label:=k{k}",
           f"results_path:={results}"]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    listener.take()
    start = time.monotonic()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    chunks = listener.take()
    if rc != 0 or not results.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"chunk_selection: the closed loop of {checkpoint} for k={k} failed (exit {rc}); "
                         f"see {log}:\n{tail}")
    evaluation = json.loads(results.read_text())
    latency = np.array([c[0] for c in chunks], dtype=np.float64)
    scores = np.array([c[2] for c in chunks], dtype=np.float64)
    spreads = np.array([c[3] for c in chunks], dtype=np.float64)
    entry = {
        "checkpoint": str(checkpoint), "k": k, "episodes": evaluation["episodes"], "successes": evaluation["successes"],
        "success_rate": evaluation["success_rate"],
        "chunk_latency_ms": float(np.median(latency) * 1e3) if latency.size else float("nan"),
        "chunk_latency_p90_ms": float(np.quantile(latency, 0.9) * 1e3) if latency.size else float("nan"),
        "chunks": int(latency.size), "candidates_seen": sorted({int(c[1]) for c in chunks}),
        "selection_score_median": _median(scores), "selection_spread_median": _median(spreads),
        "episodes_with_stop": sum(1 for e in evaluation["per_episode"] if e["stop_statuses"] > 0),
        "wall_s": round(time.monotonic() - start, 1), "per_episode": evaluation["per_episode"],
        "latencies_ms": [round(float(x) * 1e3, 1) for x in latency],
    }
    out.write_text(json.dumps(entry, indent=2))
    return entry


def summarise(k: int, runs: list[dict]) -> dict:
    """One k over every checkpoint: episodes and successes summed, latency over every chunk."""
    latency = np.array([x for r in runs for x in r["latencies_ms"]], dtype=np.float64)
    episodes, successes = sum(r["episodes"] for r in runs), sum(r["successes"] for r in runs)
    return {"k": k, "episodes": episodes, "successes": successes, "success_rate": successes / max(episodes, 1),
            "successes_per_checkpoint": [r["successes"] for r in runs],
            "chunk_latency_ms": float(np.median(latency)) if latency.size else float("nan"),
            "chunk_latency_p90_ms": float(np.quantile(latency, 0.9)) if latency.size else float("nan"),
            "chunks": int(latency.size), "candidates_seen": sorted({c for r in runs for c in r["candidates_seen"]}),
            "selection_spread_median": _median(np.array([r["selection_spread_median"] for r in runs
                                                         if r["selection_spread_median"] is not None], dtype=float)),
            "episodes_with_stop": sum(r["episodes_with_stop"] for r in runs)}


def _median(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def smoke_inputs(scratch: Path) -> tuple[Path, Path]:
    """A random-weight checkpoint for the simulated Panda (calibrated on synthetic scenes) and its DINOv3."""
    from lda_testing.deploy import make_checkpoint

    paths = make_checkpoint(scratch / "model", REPO / "config/robots/sim_panda.yaml", instruction="lift the red cube")
    return paths["checkpoint"], paths["dino_path"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", type=Path, nargs="+", default=[REPO / "out/demo/checkpoint"],
                    help="checkpoints of one recording (e.g. training seeds); every k runs on each")
    ap.add_argument("--dino-path", type=Path, default=REPO / "out/demo/dinov3-random")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8], help="candidates per replan to compare")
    ap.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per k (same seeds for every k)")
    ap.add_argument("--max-steps", type=int, default=60, help="control steps per episode (the demo's)")
    ap.add_argument("--seed", type=int, default=1000, help="first unseen sim seed (the demo's)")
    ap.add_argument("--real-time-factor", type=float, default=0.3, help="the demo's closed-loop setting")
    ap.add_argument("--work", type=Path, default=REPO / "out/chunk_selection", help="per-k runs (resumable)")
    ap.add_argument("--out", type=Path, default=RESULTS / "chunk_selection.json")
    ap.add_argument("--smoke", action="store_true", help="random checkpoint, k 1 and 2, one 20-step episode")
    args = ap.parse_args(argv)
    scratch = None
    if args.smoke:
        if args.out.resolve().parent == RESULTS.resolve():
            ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
        scratch = Path(tempfile.mkdtemp(prefix="chunk_selection_smoke_"))
        checkpoint, args.dino_path = smoke_inputs(scratch)
        args.checkpoints = [checkpoint]
        args.work = scratch / "runs"
        args.ks, args.episodes, args.max_steps = SMOKE["ks"], SMOKE["episodes"], SMOKE["max_steps"]
    for path, what in [*((c, "checkpoint") for c in args.checkpoints), (args.dino_path, "DINOv3 directory")]:
        if not path.is_dir():
            ap.error(f"{what} '{path}' does not exist (run `make demo` first, or pass --checkpoints/--dino-path)")
    args.work.mkdir(parents=True, exist_ok=True)
    listener = ChunkListener()
    try:
        runs = [closed_loop(i, c, k, args, listener) for i, c in enumerate(args.checkpoints) for k in args.ks]
    finally:
        listener.close()
    report = {
        "benchmark": "chunk_selection", "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "settings": {"checkpoints": [str(c) for c in args.checkpoints], "episodes": args.episodes,
                     "max_steps": args.max_steps,
                     "seeds": [args.seed, args.seed + args.episodes - 1], "noise_scale": 1.0,
                     "real_time_factor": args.real_time_factor, "score": "forecast"},
        "summary": [summarise(k, [r for r in runs if r["k"] == k]) for k in args.ks],
        "runs": runs,
    }
    entries = report["summary"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    base = next((e for e in entries if e["k"] == 1), None)
    print(f"\n{'k':>3} | {'success':>9} | {'chunk latency median [ms]':>26} | {'x k=1':>6} | {'score spread':>12} | "
          f"{'episodes with STOP':>18}")
    for e in entries:
        ratio = e["chunk_latency_ms"] / base["chunk_latency_ms"] if base and base["chunk_latency_ms"] else float("nan")
        spread = e["selection_spread_median"]
        print(f"{e['k']:>3} | {e['successes']:>3}/{e['episodes']:<5} | {e['chunk_latency_ms']:>26.0f} | "
              f"{ratio:>6.2f} | {'-' if spread is None else f'{spread:.3f}':>12} | {e['episodes_with_stop']:>18}")
    print(f"written to {args.out}")
    wrong = [e["k"] for e in entries if e["candidates_seen"] != [e["k"]]]
    if wrong:  # every proposal of a run must carry that run's k (the launch argument reached the host)
        print(f"chunk_selection: the proposals of k={wrong} did not carry that many candidates", file=sys.stderr)
        return 1
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
