"""Benchmarks that cannot rot: every script in benchmarks/ runs in its ``--smoke`` mode (tiny sizes, the same
code paths) and writes the JSON keys of its committed figures, so a renamed helper or launch argument breaks
``make test`` instead of the next measurement.

    python -m pytest -q tests/test_benchmarks_smoke.py

Each script runs as a subprocess, as a user runs it, with ``--out`` in the test's temporary directory (the
figures in benchmarks/results/ are never overwritten), on loopback DDS and a ROS domain of its own. All
together they take about 5 minutes on 2 cores, ``mixed_quality_study.py`` (its own simulator recording, four
trainings and closed loops) about 2 of them.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from lda_testing.processes import run_tree

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"

# script -> (time limit [s], text of the table it prints). A script gets here with its --smoke mode.
SCRIPTS = {
    "chunk_selection.py": (240, "chunk latency median"),
    "deploy_latency.py": (240, "end-to-end / bare policy call"),
    "encoder_probe.py": (150, "MAE x, y [mm]"),
    "inverse_dynamics_labels.py": (300, "mean |action - truth|"),
    "mixed_quality_study.py": (420, "held-out action L1"),
    "model_latency.py": (120, "policy p50"),
    "node_cpu.py": (240, "CPU % of a core"),
    "recorder_throughput.py": (150, "dropped_frames"),
    "train_throughput.py": (150, "samples/s"),
    "video_codec.py": (120, "CPU ms/frame"),
    "vlm_cost.py": (120, "per replan: VLM encode"),
    "vlm_tail_cost.py": (120, "vlm_finetune_layers"),
}
ADDED_LATER: set[str] = set()  # a script without a smoke mode yet (none)


def test_every_benchmark_runs_its_smoke_mode():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert scripts == set(SCRIPTS) | ADDED_LATER, (
        f"benchmarks/ has {sorted(scripts)}: give every new script a --smoke mode and an entry in SCRIPTS")


def _fresh_domain() -> str:
    """A ROS domain other than the test run's own: the smoke's nodes never meet the other tests' ones."""
    taken = os.environ.get("ROS_DOMAIN_ID", "")
    return str(random.choice([d for d in range(1, 101) if str(d) != taken]))


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` with every process it starts (nodes, launches, in sessions of their own included) killed when it
    overruns: a hang fails this test within ``timeout`` instead of stalling the run."""
    env = dict(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=_fresh_domain(), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    try:
        return run_tree(cmd, timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[1:])} ran over {timeout} s\n--- stdout\n{(exc.output or '')[-3000:]}\n"
                    f"--- stderr\n{(exc.stderr or '')[-3000:]}")


def _missing_keys(expected: dict, got: dict) -> list[str]:
    """Keys of the committed figures absent from the smoke's: top level, and one level into dicts and lists
    of dicts (a list's first entry)."""
    missing = [k for k in expected if k not in got]
    for key, value in expected.items():
        if isinstance(value, dict) and isinstance(got.get(key), dict):
            missing += [f"{key}.{k}" for k in value if k not in got[key]]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            mine = got.get(key)
            if not (isinstance(mine, list) and mine and isinstance(mine[0], dict)):
                missing.append(f"{key}[0]")
            else:
                missing += [f"{key}[0].{k}" for k in value[0] if k not in mine[0]]
    return missing


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_smoke(script, tmp_path):
    limit, table = SCRIPTS[script]
    out = tmp_path / "x.json"
    committed = RESULTS / f"{Path(script).stem}.json"
    before = committed.read_bytes()
    result = _run([sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(out)], timeout=limit)
    log = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert result.returncode == 0, log
    assert out.is_file(), log
    missing = _missing_keys(json.loads(before), json.loads(out.read_text()))
    assert not missing, f"{script} --smoke wrote no {missing} (keys of {committed.relative_to(ROOT)})\n{log}"
    assert table in result.stdout, f"no table with {table!r} printed\n{log}"
    assert committed.read_bytes() == before, f"{script} --smoke overwrote {committed.relative_to(ROOT)}"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_smoke_without_out_refuses_to_overwrite_the_committed_figures(script):
    result = _run([sys.executable, str(BENCHMARKS / script), "--smoke"], timeout=60)
    assert result.returncode == 2 and "pass --out outside benchmarks/results" in result.stderr, result.stderr
