#!/usr/bin/env python3
"""CPU of each executable with no work, and while its inputs flow at their nominal rates (issue #26: no idle spin).

    source scripts/env.sh
    python benchmarks/node_cpu.py                          # 20 s per case -> benchmarks/results/node_cpu.json
    python benchmarks/node_cpu.py --smoke --out /tmp/x.json  # three cases, 2 s each (make test runs it)

Each case starts the real executable on the test fixtures (lda_testing.executables: the test robot, a random
``lda-tiny`` checkpoint, a 64 x 48 camera), waits until it is ready, brings it into the state, then reads the
CPU time of its whole process tree from /proc over ``--seconds``. "flowing" is this process publishing the
robot's streams at 10 Hz (camera, EEF pose, finger state) for the nodes that take them; the sim steps at
10 Hz in real time. A node with no work must stay under 5 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IDLE_LIMIT_PERCENT = 5.0
SMOKE_CASES = ["model_host_node:idle", "safety_gate_node:flowing", "scripted_teleop_node:waiting for the sim"]


def measure(proc, seconds: float) -> float:
    """Percent of one core used by ``proc``'s process tree over ``seconds``."""
    from lda_testing.executables import cpu_seconds
    from lda_testing.processes import tree_pids

    pids = tree_pids(proc.token)
    before, start = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pids) - before) / (time.monotonic() - start)


def cases(model: dict, tmp: Path, ns: str):
    """(executable, state, command, ready text, needs the synthetic robot's streams, work to do)."""
    from lda_testing import executables as X

    def sub(name: str) -> Path:
        (tmp / name).mkdir(exist_ok=True)
        return tmp / name

    yield "model_host_node", "idle", X.model_host(model, sub("h1")), "proposing on", False, False
    yield "model_host_node", "flowing", X.model_host(model, sub("h2")), "proposing on", True, True
    yield "safety_gate_node", "idle", X.safety_gate(model, sub("g1")), "gating ", False, False
    yield "safety_gate_node", "flowing", X.safety_gate(model, sub("g2")), "gating ", True, False
    rec = X.recorder(sub("r1"), ns, robot_config=model["robot_config"])
    yield "teleop_recorder", "idle", rec, "recorder ready", False, False
    rec = X.recorder(sub("r2"), ns, robot_config=model["robot_config"])
    yield "teleop_recorder", "flowing", rec, "recorder ready", True, False
    yield "sim_node", "stepping", X.sim(ns, realtime=True), "sim_node ready", False, True
    yield ("scripted_teleop_node", "waiting for the sim", X.scripted_teleop(f"{ns}/none"), "scripted teleop:", False,
           False)
    yield "evaluation_node", "waiting for sim/reset", X.evaluation(f"{ns}/none"), "waiting for service", False, False
    yield ("dynamics_replay_node", "done (exit_when_done false)", X.dynamics_replay(model, sub("d1"), rate=0.0,
           exit_when_done=False), "replayed", False, False)


def run(args) -> list[dict]:
    from lda_testing.ros import NodeProcess, ros_node

    from lda_testing import deploy as T

    tmp = Path(tempfile.mkdtemp(prefix="node_cpu_"))
    model = T.cached_checkpoint(tmp / "model")
    rows = []
    with ros_node("node_cpu_robot") as node:
        for name, state, cmd, ready, streams, working in cases(model, tmp, f"/cpu{os.getpid()}"):
            if args.only and f"{name}:{state}" not in args.only:
                continue
            robot = T.SyntheticRobot(node, model["robot_config"]) if streams else None
            try:
                with NodeProcess(cmd) as proc:
                    if not proc.wait_for_output(ready, 180):
                        raise SystemExit(f"{name} did not get ready:\n{proc.output[-3000:]}")
                    time.sleep(args.settle)
                    percent = measure(proc, args.seconds)
            finally:
                if robot is not None:
                    robot.stop()
            row = {"executable": name, "state": state, "cpu_percent": round(percent, 2), "has_work": working,
                   "seconds": args.seconds}
            if not working:
                row["under_idle_limit"] = percent < IDLE_LIMIT_PERCENT
            rows.append(row)
            print(f"[bench] {name:<22} {state:<30} {percent:6.1f} % of a core", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per case [s]")
    p.add_argument("--settle", type=float, default=3.0, help="wait after ready before measuring [s]")
    p.add_argument("--only", nargs="*", default=[], help="cases as executable:state (default: all)")
    p.add_argument("--out", default=str(RESULTS / "node_cpu.json"))
    p.add_argument("--smoke", action="store_true", help="seconds-long check; needs --out outside benchmarks/results")
    args = p.parse_args(argv)
    if args.smoke:
        p.set_defaults(seconds=2.0, settle=1.0, only=SMOKE_CASES)
        args = p.parse_args(argv)
        if Path(args.out).resolve().is_relative_to(RESULTS):
            p.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    rows = run(args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "benchmark": "node_cpu",
        "command": "python benchmarks/node_cpu.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()[0]},
        "idle_limit_percent": IDLE_LIMIT_PERCENT,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'executable':<22} {'state':<30} {'CPU % of a core':>15}  idle limit")
    for r in rows:
        verdict = "" if r["has_work"] else ("ok" if r["under_idle_limit"] else f"OVER {IDLE_LIMIT_PERCENT:g} %")
        print(f"{r['executable']:<22} {r['state']:<30} {r['cpu_percent']:>15.1f}  {verdict}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
