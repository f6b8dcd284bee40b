"""Recorder throughput: two 640x480 RGB cameras at 30 Hz + EEF poses and grippers at 100 Hz -> 10 Hz dataset.

    source scripts/env.sh
    python benchmarks/recorder_throughput.py   # 3 x 60 s, writes benchmarks/results/recorder_throughput.json
    python benchmarks/recorder_throughput.py --repeat 1 --duration 20 --codec h264
    python benchmarks/recorder_throughput.py --smoke --out /tmp/recorder_throughput.json  # seconds: 2 s, 160x120

A real ``teleop_recorder`` process records one episode while a separate publisher process plays the
topics in real time (stamps = wall clock) over loopback DDS. Measured:

* dropped frames: 10 Hz ticks spanned by the published camera stream that are not in the dataset, plus
  messages published but never received by the recorder (transport or queue overflow);
* recorder CPU share: user+system CPU of the recorder process over the recording window, in % of one core
  (and of the whole machine);
* seconds to save: StopEpisode call to its answer (the episode committed), scaled to one minute of data;
* the publisher's own CPU (what the recorder competes with on the same cores) and the load average
  before and after each run.

``--repeat N`` (default 3) records N times in a row, each with a fresh recorder and dataset; the JSON keeps
each run's figures in ``runs`` and their min / median / max in ``summary``, so one noisy run cannot stand
for the result.

DDS stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless set) and, when no
``ROS_DOMAIN_ID`` is set, runs on a domain of its own. ``--smoke`` (run by ``tests/test_benchmarks_smoke.py``)
records 2 s of 160x120 frames through the same recorder, publisher and checks, in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
RESULTS = ROOT / "benchmarks" / "results"
# --smoke: the same processes and checks on a short, small recording; arguments given on the command line still win.
SMOKE = {"duration": 2.0, "width": 160, "height": 120, "repeat": 1}


# -- publisher process ---------------------------------------------------------------------------------
def _frames(width: int, height: int, n: int, seed: int):
    """n distinct, camera-like frames: smooth gradients, texture and a moving object."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 80 * np.sin(xx / 57 + seed), 128 + 80 * np.cos(yy / 43), 100 + 0.2 * xx], axis=-1)
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    out = []
    for k in range(n):
        img = base.copy()
        cx, cy = int(width * (0.2 + 0.6 * k / n)), int(height * (0.5 + 0.2 * np.sin(k / 5)))
        img[max(cy - 40, 0):cy + 40, max(cx - 60, 0):cx + 60] = (220, 60 + 4 * k % 150, 40)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def publisher(args) -> None:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    rclpy.init()
    node = rclpy.create_node(f"bench_publisher_{os.getpid()}")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)  # like camera drivers' sensor QoS
    cams = ["head", "wrist"]
    cam_pubs = {c: node.create_publisher(Image, f"/camera/{c}/image_raw", qos) for c in cams}
    pose_pubs = {h: node.create_publisher(PoseStamped, f"/robot/{h}/eef_pose", qos) for h in ("left", "right")}
    grip_pubs = {h: node.create_publisher(JointState, f"/robot/{h}/gripper_state", qos) for h in ("left", "right")}
    instr = node.create_publisher(String, "/lda/instruction", QoSProfile(depth=1))
    templates = {}
    for i, c in enumerate(cams):
        templates[c] = []
        for img in _frames(args.width, args.height, 30, seed=i):
            msg = Image(height=args.height, width=args.width, encoding="rgb8", step=3 * args.width)
            msg.data = img.tobytes()
            templates[c].append(bytearray(serialize_message(msg)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
            p.get_subscription_count() for p in [*cam_pubs.values(), *pose_pubs.values(), *grip_pubs.values()]):
        time.sleep(0.05)
    instr.publish(String(data="benchmark the recorder"))
    print("publishing", flush=True)

    counts = {"camera": 0, "pose": 0, "gripper": 0}
    late_ms = []
    cam_stamps, pose_stamps = [], []
    cpu0 = time.process_time()
    t0 = time.monotonic()
    n_cam, n_pose = int(args.duration * args.cam_hz), int(args.duration * args.pose_hz)
    events = sorted([(k / args.cam_hz, 0, k) for k in range(n_cam)] + [(k / args.pose_hz, 1, k) for k in range(n_pose)])
    for t, kind, k in events:
        delay = t0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late_ms.append(-delay * 1e3)
        now = time.time_ns()
        sec, nsec = divmod(now, 1_000_000_000)
        if kind == 0:
            for c in cams:
                buf = templates[c][k % 30]
                struct.pack_into("<iI", buf, 4, sec, nsec)  # header.stamp right after the CDR header
                cam_pubs[c].publish(bytes(buf))
                counts["camera"] += 1
            cam_stamps.append(now)
        else:
            for j, h in enumerate(("left", "right")):
                msg = PoseStamped()
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
                msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.4 + 0.1 * (t % 1), 0.2 * j, 0.3
                msg.pose.orientation.w = 1.0
                pose_pubs[h].publish(msg)
                js = JointState(name=["gripper"], position=[0.04 * (t % 1)])
                js.header.stamp.sec, js.header.stamp.nanosec = sec, nsec
                grip_pubs[h].publish(js)
                counts["pose"] += 1
                counts["gripper"] += 1
            pose_stamps.append(now)
    wall_s = time.monotonic() - t0
    result = {"published": counts, "wall_s": wall_s, "cpu_pct": 100 * (time.process_time() - cpu0) / wall_s,
              "late_events": len(late_ms), "max_late_ms": max(late_ms, default=0.0),
              "cam_stamps": cam_stamps, "pose_stamps": pose_stamps}
    print("RESULT " + json.dumps(result), flush=True)
    node.destroy_node()
    rclpy.shutdown()


# -- benchmark driver ----------------------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime (includes all threads)


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _robot_yaml(path: Path, args) -> Path:
    import yaml

    cfg = {
        "robot": "bench_bimanual", "fps": 10, "tolerance_s": 0.05, "max_latency_s": 1.0,
        "cameras": [{"name": c, "type": "raw", "width": args.width, "height": args.height} for c in ("head", "wrist")],
        "hands": [{"name": h, "fingers": {"type": "width", "joints": ["gripper"]}} for h in ("left", "right")],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(args) -> dict:
    """One recording: a fresh recorder and dataset, one publisher run. Returns the run's figures."""
    from ament_index_python.packages import get_package_prefix
    from diagnostic_msgs.msg import DiagnosticArray
    from lda_testing.ros import NodeProcess, ros_node, wait_for

    from lda_msgs.srv import StartEpisode, StopEpisode

    profile = None
    if args.dds_profile == "large_data":
        profile = Path(get_package_prefix("lda_teleop_record")) / "share" / "lda_teleop_record" / \
            "fastdds_large_data.xml"
    elif args.dds_profile != "default":
        profile = Path(args.dds_profile)
    if profile is not None:
        assert profile.is_file(), f"no such Fast DDS profile: {profile}"
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)  # the recorder and the publisher
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="run_", dir=args.work))
    dataset = work / "dataset"
    exe = Path(get_package_prefix("lda_teleop_record")) / "lib" / "lda_teleop_record" / "teleop_recorder"
    name = f"bench_recorder_{os.getpid()}"
    cmd = [str(exe), "--ros-args", "-r", f"__node:={name}", "-p", f"robot_config:={_robot_yaml(work / 'r.yaml', args)}",
           "-p", f"dataset:={dataset}", "-p", f"video_codec:={args.codec}", "-p", "min_free_disk_mb:=100.0"]
    diag: dict[str, str] = {}

    def on_diag(msg):
        for st in msg.status:
            if st.name == f"/{name}":
                diag.clear()
                diag.update({kv.key: kv.value for kv in st.values})

    with NodeProcess(cmd) as rec, ros_node(f"bench_driver_{os.getpid()}") as node:
        assert rec.wait_for_output("recorder ready", timeout=120), rec.output
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        start_c = node.create_client(StartEpisode, f"/{name}/start_episode")
        stop_c = node.create_client(StopEpisode, f"/{name}/stop_episode")
        assert start_c.wait_for_service(timeout_sec=30)

        def call(client, req, timeout):
            fut = client.call_async(req)
            assert wait_for(fut.done, timeout), "no answer from the recorder"
            return fut.result()

        pub = subprocess.Popen([sys.executable, __file__, "--publisher", "--duration", str(args.duration),
                                "--width", str(args.width), "--height", str(args.height), "--cam-hz",
                                str(args.cam_hz), "--pose-hz", str(args.pose_hz)],
                               stdout=subprocess.PIPE, text=True)
        assert pub.stdout.readline().strip() == "publishing"
        started = call(start_c, StartEpisode.Request(task="benchmark the recorder"), 120)
        assert started.success, started.message
        pid = rec.proc.pid
        cpu0, wall0 = _cpu_s(pid), time.monotonic()
        out = pub.communicate(timeout=args.duration + 120)[0]
        published = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        wait_for(lambda: diag.get("queue") == "0", 30)
        time.sleep(2.5)  # two diagnostics periods: final receive counts
        cpu1, wall1 = _cpu_s(pid), time.monotonic()
        received = {k.split(" ", 1)[1]: int(v) for k, v in diag.items() if k.startswith("received ")}
        t_stop = time.monotonic()
        stopped = call(stop_c, StopEpisode.Request(quality="high"), 600)
        save_s = time.monotonic() - t_stop
        assert stopped.success, stopped.message
        rss = _rss_peak_mb(pid)

    from lda_common.schema import read_episode_labels
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    label = read_episode_labels(dataset)[0]
    ds = LeRobotDataset("bench/rec", root=dataset)
    ds[0], ds[len(ds) - 1]  # noqa: B018 - decode the first and last frames of both videos
    expected_frames, uncoverable = _coverable_ticks(published["cam_stamps"], published["pose_stamps"], 0.05)
    cam_published = published["published"]["camera"]
    cam_received = sum(received.get(f"/camera/{c}/image_raw", 0) for c in ("head", "wrist"))
    pose_received = sum(received.get(f"/robot/{h}/eef_pose", 0) for h in ("left", "right"))
    grip_received = sum(received.get(f"/robot/{h}/gripper_state", 0) for h in ("left", "right"))
    cpu_pct = 100 * (cpu1 - cpu0) / (wall1 - wall0)
    size_mb = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file()) / 2**20
    video = ds.meta.features["observation.images.head"]["info"]
    return {
        "video": f"{video['video.codec']} preset {video.get('video.preset')} crf {video.get('video.crf')}",
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "frames_expected": expected_frames,
        "ticks_without_published_data": uncoverable,
        "frames_recorded": label["length"],
        "dropped_frames": expected_frames - label["length"],
        "dropped_ticks_reported": label["dropped_ticks"],
        "camera_msgs_published": cam_published,
        "camera_msgs_lost": cam_published - cam_received,
        "pose_msgs_lost": published["published"]["pose"] - pose_received,
        "gripper_msgs_lost": published["published"]["gripper"] - grip_received,
        "publisher_late_events": published["late_events"],
        "publisher_max_late_ms": round(published["max_late_ms"], 1),
        "recorder_cpu_pct_of_one_core": round(cpu_pct, 1),
        "recorder_cpu_share_of_machine_pct": round(cpu_pct / os.cpu_count(), 1),
        "publisher_cpu_pct_of_one_core": round(published["cpu_pct"], 1),
        "recorder_peak_rss_mb": round(rss, 0),
        "save_s": round(save_s, 2),
        "save_s_per_minute_of_data": round(save_s * 60 / args.duration, 2),
        "dataset_mb": round(size_mb, 1),
        "stop_message": stopped.message,
    }


def _coverable_ticks(cam: list[int], pose: list[int], tol_s: float) -> tuple[int, int]:
    """10 Hz ticks from the first camera stamp on that the publisher served within tolerance (a starved
    publisher can leave holes): (coverable ticks, ticks without published data)."""
    import numpy as np

    cam, pose = np.array(cam), np.array(pose)
    tol = tol_s * 1e9
    ticks = cam[0] + np.arange(int((cam[-1] + tol - cam[0]) // 1e8) + 1) * 100_000_000  # as the recorder

    def near(stamps):
        i = np.clip(np.searchsorted(stamps, ticks), 1, len(stamps) - 1)
        return np.minimum(np.abs(stamps[i] - ticks), np.abs(stamps[i - 1] - ticks)) <= tol

    ok = near(cam) & near(pose)
    return int(ok.sum()), int((~ok).sum())


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of recording")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--cam-hz", type=float, default=30.0)
    p.add_argument("--pose-hz", type=float, default=100.0)
    p.add_argument("--codec", default="h264", help="video codec of the dataset (default h264, the recorder's)")
    p.add_argument("--repeat", type=int, default=3, help="recordings in a row (figures as min / median / max)")
    p.add_argument("--work", default=None, help="directory for the datasets (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with the recorded datasets")
    p.add_argument("--out", default=str(RESULTS / "recorder_throughput.json"))
    p.add_argument("--shared", action="store_true", help="note in the result that the machine was shared")
    p.add_argument("--dds-profile", default="large_data",
                   help="'large_data': both processes use lda_teleop_record's fastdds_large_data.xml (shared "
                        "memory big enough for images); 'default': Fast DDS defaults; or a profile XML path")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long check of every code path; needs --out outside benchmarks/results")
    p.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.publisher:
        publisher(args)
        return 0
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
        if Path(args.out).resolve().is_relative_to(RESULTS):
            p.error("--smoke must not overwrite the committed figures: pass --out outside benchmarks/results")
    # Loopback DDS on a domain of its own (unless the caller chose one): no other node hears the benchmark.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    own_work = args.work is None  # a temporary directory of ours: removed afterwards unless --keep
    args.work = args.work or tempfile.mkdtemp(prefix="lda_recbench_")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for i in range(args.repeat):
            runs.append(run(args))
            print(f"[bench] run {i + 1}/{args.repeat}: {runs[-1]['dropped_frames']} dropped frames, "
                  f"{runs[-1]['pose_msgs_lost']} / {runs[-1]['gripper_msgs_lost']} pose / gripper messages lost, "
                  f"recorder {runs[-1]['recorder_cpu_pct_of_one_core']} % of a core", flush=True)
    finally:
        if own_work and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    result = {
        "benchmark": "recorder_throughput",
        "command": "python benchmarks/recorder_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                    "note": "shared development machine; other jobs were running" if args.shared else ""},
        "setup": {"duration_s": args.duration, "cameras": f"2 x {args.width}x{args.height} rgb8 @ {args.cam_hz} Hz",
                  "poses": f"2 x PoseStamped + 2 x JointState @ {args.pose_hz} Hz", "dataset_fps": 10,
                  "codec": args.codec, "dds_profile": args.dds_profile, "qos": "best effort"},
        "repeat": args.repeat,
        "summary": _summary(runs),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'figure':<36} {'min':>9} {'median':>9} {'max':>9}   ({len(runs)} run(s))")
    for key, s in result["summary"].items():
        print(f"{key:<36} {s['min']:>9} {s['median']:>9} {s['max']:>9}")
    print(f"-> {args.out}")
    return 0


def _summary(runs: list[dict]) -> dict:
    """min / median / max over the runs of every numeric figure."""
    import numpy as np

    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs]
            out[key] = {"min": min(values), "median": round(float(np.median(values)), 2), "max": max(values)}
    return out


if __name__ == "__main__":
    sys.exit(main())
