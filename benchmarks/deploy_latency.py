#!/usr/bin/env python3
"""Deployment cost: camera image in -> command out of the safety gate, against the bare model calls of the same run.

    source scripts/env.sh
    python benchmarks/deploy_latency.py                                 # lda-small on CPU (default)
    python benchmarks/deploy_latency.py --device cuda --preset lda-1b   # a GPU box
    python benchmarks/deploy_latency.py --smoke --out /tmp/x.json       # tiny sizes, seconds (make test runs it)

One run: (1) builds a random-weight checkpoint of ``--preset`` for a one-arm test robot and a random
DINOv3 ViT-S/16 (real shape: 12 layers, 224 px) in a temporary directory, calibrated for the judge;
(2) times the bare model calls in this process - DINO encoding of one frame + the policy objective (the
bare policy call), and the judge's forward dynamics of that chunk; (3) measures the resident memory of
one process holding one runtime; (4) launches ``launch/policy.launch.yaml`` (model host + safety gate as
real processes via lda-launch) around a synthetic robot with a 10 Hz camera and measures, per approved
chunk:

- end-to-end: the first command the gate sends at or after approving the chunk - stamp of the camera
  image it was predicted from (the gate sends a command the moment it approves);
- host side: proposed chunk received - image stamp; gate added: approval received - proposal received;
- the resident memory of the host and the gate; the host's and the gate's CPU time per chunk;
- then SIGKILLs the host and measures the time to the gate's STOP and to its first hold command.

Writes ``benchmarks/results/deploy_latency.json`` and prints a table. Ratios are taken within the run:
``end_to_end_over_bare_policy_call`` (ROS + gate overhead), ``judge_over_bare_policy_call`` (what the judge
adds to the host's CPU time per chunk), ``deploy_rss_over_one_runtime`` (host + gate memory over one runtime).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLK = os.sysconf("SC_CLK_TCK")


def stats(values) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "median_ms": float(np.median(v) * 1e3), "p90_ms": float(np.quantile(v, 0.9) * 1e3),
            "mean_ms": float(v.mean() * 1e3), "min_ms": float(v.min() * 1e3), "max_ms": float(v.max() * 1e3)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def bare_calls(paths: dict, device: str, reps: int, threads: int, judge_steps: int) -> dict:
    """Median cost of the model calls the host makes per chunk, in this process."""
    import torch
    from lda_common.geometry import HandState
    from lda_policy.deploy.robot import RobotInterface
    from lda_policy.deploy.runtime import ModelRuntime, set_torch_threads

    from lda_testing import deploy as T

    set_torch_threads(threads)
    robot = RobotInterface(paths["robot_config"])
    rt = ModelRuntime(paths["checkpoint"], paths["dino_path"], device=device)
    cam = robot.camera
    img = T.scene_image("a", size=(cam.width, cam.height))
    lat = rt.encode_image(img)
    history = torch.stack([lat] * rt.config.num_obs_frames)[None]
    state = robot.state_vector({h: HandState.make(*T.HOME, [0.04]) for h in robot.hands})
    hist = np.zeros((rt.config.time.history_action_steps, robot.action_dim))
    out = {"encode": [], "policy": [], "judge": []}
    for k in range(reps + 3):
        t0 = time.perf_counter()
        rt.encode_image(img)
        sync(device)
        t1 = time.perf_counter()
        obs = rt.observation(robot.embodiment, history, "pick up the red block", state, hist)
        actions = rt.policy(obs)
        sync(device)
        t2 = time.perf_counter()
        rt.forward_dynamics(obs, actions, num_steps=judge_steps)
        sync(device)
        t3 = time.perf_counter()
        if k >= 3:  # warm-up first
            out["encode"].append(t1 - t0)
            out["policy"].append(t2 - t1)
            out["judge"].append(t3 - t2)
    res = {k: stats(v) for k, v in out.items()}
    res["policy_call"] = stats(np.add(out["encode"], out["policy"]))  # one new frame + the policy objective
    del rt
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


ONE_RUNTIME = """
import resource, sys, numpy as np
from lda_policy.deploy.robot import RobotInterface
from lda_policy.deploy.runtime import ModelRuntime, set_torch_threads
from lda_testing import deploy as T
set_torch_threads(1)
robot = RobotInterface(sys.argv[1])
rt = ModelRuntime(sys.argv[2], sys.argv[3], device=sys.argv[4])
rt.encode_image(T.scene_image("a", size=(robot.camera.width, robot.camera.height)))
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def one_runtime_rss_mb(paths: dict, device: str) -> float:
    """Resident memory of a bare process holding one runtime (model, DINOv3, MiniLM) after one encode."""
    out = subprocess.run([sys.executable, "-c", ONE_RUNTIME, str(paths["robot_config"]), str(paths["checkpoint"]),
                          str(paths["dino_path"]), device], capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline(paths: dict, device: str, seconds: float, threads: int, workdir: Path) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from lda_testing.ros import NodeProcess, ros_node, wait_for

    from lda_testing import deploy as T

    host = T.write_params(workdir / "host.yaml", {"torch_threads": threads, "max_image_age_s": 10.0,
                                                  "camera_timeout_s": 10.0, "max_inference_time_s": 30.0,
                                                  "max_judge_time_s": 30.0})
    gate = T.write_params(workdir / "gate.yaml", {"approval_deadline_s": 10.0})
    limits = T.write_params(workdir / "limits.yaml", {"workspace_min": [-2.0, -2.0, -2.0],
                                                      "workspace_max": [2.0, 2.0, 2.0], "finger_min": -0.01,
                                                      "finger_max": 0.1, "max_chunk_age_s": 5.0})
    cmd = ["lda-launch", str(REPO / "launch" / "policy.launch.yaml"), f"robot_config:={paths['robot_config']}",
           f"checkpoint:={paths['checkpoint']}", f"dino_path:={paths['dino_path']}", f"device:={device}",
           f"host_params:={host}", f"gate_params:={gate}", f"safety_limits:={limits}"]
    with NodeProcess(cmd) as proc, ros_node("bench_robot") as node:
        robot = T.SyntheticRobot(node, paths["robot_config"])
        host_diag: dict[str, str] = {}  # the model host's newest /diagnostics values (frames encoded so far)

        def on_diag(msg):
            for st in msg.status:
                if "model host" in st.name:
                    host_diag.update({kv.key: kv.value for kv in st.values})

        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        if not wait_for(lambda: len(robot.approved) >= 3, 600):
            robot.stop()
            raise RuntimeError("no approved chunks; launch output:\n" + proc.output[-4000:])
        pids = {name: next(int(line.split("pid ")[1].rstrip(")")) for line in proc.lines
                           if f"started {name} (pid" in line) for name in ("model_host", "safety_gate")}
        have_diag = wait_for(lambda: "frames_encoded" in host_diag, 10.0)  # else encodes per chunk: NaN
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        enc0, prop0 = (int(host_diag.get(k, 0)) for k in ("frames_encoded", "chunks_proposed"))
        t0 = robot.now()
        time.sleep(seconds)
        t1 = robot.now()
        cpu1 = {k: cpu_s(p) for k, p in pids.items()}
        time.sleep(1.2)  # one more diagnostics period
        enc1, prop1 = (int(host_diag.get(k, 0)) for k in ("frames_encoded", "chunks_proposed"))
        rss = {k: rss_mb(p) for k, p in pids.items()}
        with robot.lock:
            proposed = {m.sequence: t for t, m in robot.proposed}
            approved = [(t, m) for t, m in robot.approved if t0 <= t <= t1]
            n_proposed = sum(1 for t, _ in robot.proposed if t0 <= t <= t1)
            commands = [t for t, _, _ in robot.targets]
        # a killed host: time to the gate's STOP and to its first hold command
        k0 = robot.now()
        os.kill(pids["model_host"], signal.SIGKILL)
        wait_for(lambda: any(s.level == 2 for s in robot.since(robot.statuses, k0)), 5.0)
        stop = next((t for t, s in robot.statuses if t >= k0 and s.level == 2), float("nan"))
        time.sleep(0.3)
        robot.stop()
    cmd_times = np.array(commands)
    e2e, host_side, gate_added, inference = [], [], [], []
    for t, m in approved:
        stamp = m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec
        later = cmd_times[cmd_times >= t - 0.002]  # the command the gate sent with its approval
        if later.size:
            e2e.append(later[0] - stamp)
        inference.append(m.inference_time)
        if m.sequence in proposed:
            host_side.append(proposed[m.sequence] - stamp)
            gate_added.append(t - proposed[m.sequence])
    chunks = max(n_proposed, 1)
    return {"window_s": t1 - t0, "chunks_proposed": n_proposed, "chunks_approved": len(approved),
            "end_to_end": stats(e2e), "host_side": stats(host_side), "gate_added": stats(gate_added),
            "host_inference_time_in_node": stats(inference),
            "cpu_s_per_chunk": {k: (cpu1[k] - cpu0[k]) / chunks for k in pids},
            "dino_encodes_per_chunk": (enc1 - enc0) / max(prop1 - prop0, 1) if have_diag else float("nan"),
            "rss_mb": rss, "hold_after_host_sigkill_ms": (stop - k0) * 1e3}


def gate_overhead(paths: dict, reps: int) -> dict:
    """The gate's own work per chunk and per command, ROS-free, in this process: judge() and tick()."""
    from lda_common.geometry import HandState
    from lda_policy.deploy.chunks import ProposedChunk
    from lda_policy.deploy.gate import SafetyGateCore
    from lda_policy.deploy.robot import RobotInterface
    from lda_policy.deploy.safety import SafetyLimits

    from lda_testing import deploy as T

    robot = RobotInterface(paths["robot_config"])
    gate = SafetyGateCore(robot, SafetyLimits(workspace_min=(-2, -2, -2), workspace_max=(2, 2, 2)))
    judge_t, tick_t = [], []
    t = 100.0
    for k in range(reps * 10):
        for h in robot.hands:
            gate.on_pose(h, t, *T.HOME)
            gate.on_fingers(h, t, [0.04])
        for source in ("model_host", "judge"):
            gate.on_source(source, 0, "ok", 0, t)
        if k % 5 == 0:
            a = np.zeros((16, robot.action_dim))
            a[:, -1] = 0.04
            c = ProposedChunk(k + 1, t, robot.dt, robot.embodiment, robot.dimension_names, a, 0.1)
            c.digest = c.computed_digest()
            s = time.perf_counter()
            assert gate.judge(c, t + 0.001).approved
            judge_t.append(time.perf_counter() - s)
        s = time.perf_counter()
        gate.tick(t + 0.002)
        tick_t.append(time.perf_counter() - s)
        t += 0.1
    _ = HandState
    return {"judge_chunk": stats(judge_t), "tick_command": stats(tick_t)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lda-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window of the running pipeline")
    ap.add_argument("--reps", type=int, default=20, help="bare model call repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (0 = torch default)")
    ap.add_argument("--image-size", type=int, default=224, help="camera image size (square) [px]")
    ap.add_argument("--dino-layers", type=int, default=12, help="random DINOv3 depth (12 = ViT-S/16)")
    ap.add_argument("--judge-steps", type=int, default=1, help="the judge's Euler steps (model_host.yaml)")
    ap.add_argument("--smoke", action="store_true", help="lda-tiny, 64 px, 1 layer, 5 s: checks the script runs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "deploy_latency.json"))
    a = ap.parse_args(argv)
    if a.smoke and Path(a.out).resolve().parent == (REPO / "benchmarks" / "results").resolve():
        ap.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    if a.smoke:
        a.preset, a.image_size, a.dino_layers, a.seconds, a.reps = "lda-tiny", 64, 1, 5.0, 3

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lda_testing import deploy as T

    overrides = {} if a.preset in ("lda-tiny", "lda-small") else {"lang_dim": 384}  # MiniLM tokens for 1b/0.5b
    with tempfile.TemporaryDirectory(prefix="lda_deploy_bench_") as tmp:
        work = Path(tmp)
        t = time.time()
        rc = T.write_robot_config(work / "robot.yaml", robot="bench_arm", width=a.image_size, height=a.image_size)
        torch.set_num_threads(max(a.threads, 1) if a.device == "cpu" else torch.get_num_threads())
        paths = T.make_checkpoint(work, rc, preset=a.preset, dino_layers=a.dino_layers,
                                  dino_image_size=64 if a.smoke else 224, **overrides)
        print(f"[bench] checkpoint {a.preset} + DINOv3 ({a.dino_layers} layers) + calibration written in "
              f"{time.time() - t:.1f} s", flush=True)
        bare = bare_calls(paths, a.device, a.reps, a.threads, a.judge_steps)
        print(f"[bench] bare calls: policy {bare['policy_call']['median_ms']:.1f} ms, judge "
              f"{bare['judge']['median_ms']:.1f} ms (median)", flush=True)
        one_rss = one_runtime_rss_mb(paths, a.device)
        gate = gate_overhead(paths, a.reps)
        pipe = pipeline(paths, a.device, a.seconds, a.threads, work)

    e2e, host_side, gate_added = pipe["end_to_end"], pipe["host_side"], pipe["gate_added"]
    policy_ms = bare["policy_call"]["median_ms"]
    result = {
        "benchmark": "deploy_latency",
        "config": {"preset": a.preset, "device": a.device, "torch_threads_per_process": a.threads,
                   "image_size": a.image_size, "dino_layers": a.dino_layers, "language_encoder": "minilm",
                   "judge_num_steps": a.judge_steps, "replan_period_s": 0.5, "camera_hz": 10,
                   "model_overrides": overrides, "layout": "model host (policy + judge) + safety gate",
                   "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                   "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                   "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None},
        "bare_model": bare,
        "gate_core": gate,
        "pipeline": pipe,
        "memory_mb": {"one_runtime": one_rss, **pipe["rss_mb"]},
        "ratios": {
            "end_to_end_over_bare_policy_call": e2e.get("median_ms", float("nan")) / policy_ms,
            "host_side_over_bare_policy_call": host_side.get("median_ms", float("nan")) / policy_ms,
            "judge_over_bare_policy_call": bare["judge"]["median_ms"] / policy_ms,
            "deploy_rss_over_one_runtime": sum(pipe["rss_mb"].values()) / one_rss,
        },
        "notes": "random weights (timing only); ROS 2 Kilted pip wheels, Fast DDS on loopback; see load_average",
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    rows = [("bare: DINO encode (1 frame)", bare["encode"]), ("bare: policy objective", bare["policy"]),
            ("bare: policy call (encode + policy)", bare["policy_call"]),
            (f"bare: judge forward dynamics ({a.judge_steps} step)", bare["judge"]),
            ("host: policy inference (reported)", pipe["host_inference_time_in_node"]),
            ("pipeline: image -> proposed chunk", host_side), ("pipeline: gate added (proposal -> approval)",
                                                                gate_added),
            ("pipeline: image -> first command of the chunk", e2e),
            ("gate core: judge one chunk", gate["judge_chunk"]), ("gate core: one command tick", gate["tick_command"])]
    print(f"\ndeploy latency - {a.preset} on {a.device}, {a.threads} torch thread(s)/process, "
          f"{a.image_size}px camera, {pipe['chunks_approved']} approved chunks in {pipe['window_s']:.0f} s")
    print(f"{'':48s} {'median':>9s} {'p90':>9s} {'n':>5s}")
    for name, s in rows:
        if s.get("n"):
            print(f"{name:48s} {s['median_ms']:7.2f}ms {s['p90_ms']:7.2f}ms {s['n']:5d}")
    r = result["ratios"]
    print(f"\nend-to-end / bare policy call: {r['end_to_end_over_bare_policy_call']:.2f}x   judge / bare policy call: "
          f"{r['judge_over_bare_policy_call']:.2f}x   deploy RSS / one runtime: "
          f"{r['deploy_rss_over_one_runtime']:.2f}x ({pipe['rss_mb']} MB vs {one_rss:.0f} MB)")
    print(f"host SIGKILL -> gate STOP: {pipe['hold_after_host_sigkill_ms']:.0f} ms; CPU s per chunk: "
          f"{pipe['cpu_s_per_chunk']}; DINO encodes per chunk: {pipe['dino_encodes_per_chunk']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
