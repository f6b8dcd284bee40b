#!/usr/bin/env python3
"""Deployment latency: camera image in -> approved chunk out, against the bare model calls of the same run.

    source scripts/env.sh
    python benchmarks/deploy_latency.py                                 # lda-small on CPU (default)
    python benchmarks/deploy_latency.py --device cuda --preset lda-1b   # a GPU box

One run: (1) builds a random-weight checkpoint of ``--preset`` for a one-arm test robot and a random
DINOv3 ViT-S/16 (real shape: 12 layers, 224 px) in a temporary directory; (2) times the bare model
calls in this process - DINO encoding of one frame + the policy objective (what the policy node does per
chunk), and one frame + the forward-dynamics objective (what the monitor does per chunk); (3) launches
``launch/policy.launch.yaml`` (policy_node + safety_monitor_node as real processes via lda-launch) around a
fake robot that publishes a 10 Hz camera, and measures for every approved chunk:

- end-to-end: approved chunk received - stamp of the camera image it was predicted from;
- policy side: proposed chunk received - image stamp;
- monitor added: approved chunk received - proposed chunk received (the monitor's whole share:
  transport, hard limits, DINO of its own frame, forward dynamics, republish).

Writes ``benchmarks/results/deploy_latency.json`` and prints a table. Ratios put the pipeline against
the bare calls (``end_to_end / bare_policy``: the ROS + monitor overhead factor).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


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


def bare_calls(paths: dict, device: str, reps: int, threads: int) -> dict:
    """Median cost of the model calls the two nodes make per chunk, in this process."""
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
    out = {"encode": [], "policy": [], "forward_dynamics": []}
    actions = None
    for k in range(reps + 3):
        t0 = time.perf_counter()
        lat = rt.encode_image(img)
        sync(device)
        t1 = time.perf_counter()
        obs = rt.observation(robot.embodiment, history, "pick up the red block", state, hist)
        actions = rt.policy(obs)
        sync(device)
        t2 = time.perf_counter()
        rt.forward_dynamics(obs, actions)
        sync(device)
        t3 = time.perf_counter()
        if k >= 3:  # warm-up first
            out["encode"].append(t1 - t0)
            out["policy"].append(t2 - t1)
            out["forward_dynamics"].append(t3 - t2)
    res = {k: stats(v) for k, v in out.items()}
    res["policy_call"] = stats(np.add(out["encode"], out["policy"]))  # one new frame + the policy objective
    res["monitor_call"] = stats(np.add(out["encode"], out["forward_dynamics"]))
    del rt
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


def pipeline(paths: dict, device: str, seconds: float, threads: int, workdir: Path) -> dict:
    from lda_testing.ros import NodeProcess, ros_node, wait_for

    from lda_testing import deploy as T

    slow = {"max_chunk_age_s": 10.0, "max_image_age_s": 10.0, "approval_deadline_s": 10.0}
    policy = T.write_params(workdir / "policy.yaml", {"torch_threads": threads, **slow})
    safety = T.write_params(workdir / "safety.yaml", {"torch_threads": threads, "require_calibration": False,
                                                      "max_chunk_age_s": 10.0, "max_judge_time_s": 30.0})
    limits = T.write_params(workdir / "limits.yaml", {"workspace_min": [-2.0, -2.0, -2.0],
                                                      "workspace_max": [2.0, 2.0, 2.0], "finger_min": -0.01,
                                                      "finger_max": 0.1})
    cmd = ["lda-launch", str(REPO / "launch" / "policy.launch.yaml"), f"robot_config:={paths['robot_config']}",
           f"checkpoint:={paths['checkpoint']}", f"dino_path:={paths['dino_path']}", f"device:={device}",
           f"policy_params:={policy}", f"safety_params:={safety}", f"safety_limits:={limits}"]
    with NodeProcess(cmd) as proc, ros_node("bench_robot") as node:
        robot = T.FakeRobot(node, paths["robot_config"])
        if not wait_for(lambda: len(robot.approved) >= 3, 600):
            robot.stop()
            raise RuntimeError("no approved chunks; launch output:\n" + proc.output[-4000:])
        t0 = robot.now()
        time.sleep(seconds)
        t1 = robot.now()
        robot.stop()
        with robot.lock:
            proposed = {m.sequence: t for t, m in robot.proposed}
            approved = [(t, m) for t, m in robot.approved if t0 <= t <= t1]
            n_proposed = sum(1 for t, _ in robot.proposed if t0 <= t <= t1)
    e2e, policy_side, monitor, inference = [], [], [], []
    for t, m in approved:
        stamp = m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec
        e2e.append(t - stamp)
        inference.append(m.inference_time)
        if m.sequence in proposed:
            policy_side.append(proposed[m.sequence] - stamp)
            monitor.append(t - proposed[m.sequence])
    return {"window_s": t1 - t0, "chunks_proposed": n_proposed, "chunks_approved": len(approved),
            "end_to_end": stats(e2e), "policy_side": stats(policy_side), "monitor_added": stats(monitor),
            "policy_inference_time_in_node": stats(inference)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lda-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window of the running pipeline")
    ap.add_argument("--reps", type=int, default=20, help="bare model call repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (0 = torch default)")
    ap.add_argument("--image-size", type=int, default=224, help="camera image size (square) [px]")
    ap.add_argument("--dino-layers", type=int, default=12, help="random DINOv3 depth (12 = ViT-S/16)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "deploy_latency.json"))
    a = ap.parse_args(argv)

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
        paths = T.make_checkpoint(work, rc, preset=a.preset, calibrate=False, dino_layers=a.dino_layers,
                                  dino_image_size=224, **overrides)
        build_s = time.time() - t
        print(f"[bench] checkpoint {a.preset} + DINOv3 ({a.dino_layers} layers) written in {build_s:.1f} s", flush=True)
        bare = bare_calls(paths, a.device, a.reps, a.threads)
        print(f"[bench] bare calls: policy {bare['policy_call']['median_ms']:.1f} ms, monitor "
              f"{bare['monitor_call']['median_ms']:.1f} ms (median)", flush=True)
        pipe = pipeline(paths, a.device, a.seconds, a.threads, work)

    e2e, pol, mon = pipe["end_to_end"], pipe["policy_side"], pipe["monitor_added"]
    result = {
        "benchmark": "deploy_latency",
        "config": {"preset": a.preset, "device": a.device, "torch_threads_per_process": a.threads,
                   "image_size": a.image_size, "dino_layers": a.dino_layers, "language_encoder": "minilm",
                   "replan_period_s": 0.5, "camera_hz": 10, "model_overrides": overrides,
                   "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                   "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                   "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None},
        "bare_model": bare,
        "pipeline": pipe,
        "ratios": {
            "end_to_end_over_bare_policy_call": e2e.get("median_ms", float("nan")) / bare["policy_call"]["median_ms"],
            "policy_side_over_bare_policy_call": pol.get("median_ms", float("nan"))
            / bare["policy_call"]["median_ms"],
            "monitor_added_over_bare_monitor_call": mon.get("median_ms", float("nan"))
            / bare["monitor_call"]["median_ms"],
        },
        "notes": "random weights (timing only); ROS 2 Kilted pip wheels, Fast DDS on loopback; CPU shared with "
                 "other jobs while measured (see load_average)",
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    rows = [("bare: DINO encode (1 frame)", bare["encode"]), ("bare: policy objective", bare["policy"]),
            ("bare: policy call (encode + policy)", bare["policy_call"]),
            ("bare: monitor call (encode + fwd dynamics)", bare["monitor_call"]),
            ("node: policy inference (reported)", pipe["policy_inference_time_in_node"]),
            ("pipeline: image -> proposed chunk", pol), ("pipeline: monitor added", mon),
            ("pipeline: image -> approved chunk", e2e)]
    print(f"\ndeploy latency - {a.preset} on {a.device}, {a.threads} torch thread(s)/process, "
          f"{a.image_size}px camera, {pipe['chunks_approved']} approved chunks in {pipe['window_s']:.0f} s")
    print(f"{'':44s} {'median':>9s} {'p90':>9s} {'n':>5s}")
    for name, s in rows:
        if s.get("n"):
            print(f"{name:44s} {s['median_ms']:7.1f}ms {s['p90_ms']:7.1f}ms {s['n']:5d}")
    r = result["ratios"]
    print(f"\nend-to-end / bare policy call: {r['end_to_end_over_bare_policy_call']:.2f}x   "
          f"monitor added / bare monitor call: {r['monitor_added_over_bare_monitor_call']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
