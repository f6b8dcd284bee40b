"""lda-launch runs the suite's YAML launch files as real processes, and refuses bad ones clearly."""

import signal
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from lda_bringup.launch_description import LaunchDescription, LaunchError
from lda_testing.processes import run_tree
from lda_testing.ros import NodeProcess

REPO = Path(__file__).resolve().parents[3]
SELFTEST = REPO / "launch" / "selftest.launch.yaml"


def _write(tmp_path: Path, body: str, name: str = "t.launch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _pid_alive(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_two_nodes_exchange_messages_and_stop(tmp_path):
    with NodeProcess(["lda-launch", str(SELFTEST), "count:=8", f"namespace:=t{time.monotonic_ns() % 10**6}"]) as run:
        rc = run.wait(timeout=60)
    assert rc == 0, run.output
    assert "received 8 intact chunks" in run.output
    assert "talker stopped" in run.output  # the talker was stopped when the required listener finished


def test_sigint_is_forwarded_and_children_exit(tmp_path):
    # count is never reached, so only our SIGINT ends the launch
    with NodeProcess(["lda-launch", str(SELFTEST), "count:=100000", "namespace:=sigint"]) as run:
        assert run.wait_for_output("started listener", timeout=20), run.output
        pids = [int(line.split("pid ")[1].rstrip(")")) for line in run.lines if "(pid " in line]
        time.sleep(1.5)
        rc = run.stop(signal.SIGINT, timeout=20)
    assert len(pids) == 2
    assert rc == 0, run.output
    assert not any(_pid_alive(pid) for pid in pids), "a node outlived lda-launch"


def test_required_node_death_gives_nonzero_exit(tmp_path):
    launch = _write(tmp_path, """
        launch:
        - node:
            pkg: lda_bringup
            exec: selftest_listener
            name: lonely_listener
            namespace: nobody_talks_here
            on_exit: shutdown
            param:
            - {name: timeout_s, value: 1.0}
        """)
    with NodeProcess(["lda-launch", str(launch)]) as run:
        rc = run.wait(timeout=30)
    assert rc != 0
    assert "required node lonely_listener died" in run.output


@pytest.mark.parametrize(
    ("body", "cli", "message"),
    [
        ("- arg: {name: robot, default: sim_panda}", ["robto:=gr1"], "unknown launch argument(s) ['robto']"),
        ("- arg: {name: robot}", [], "launch argument 'robot' is required"),
        ("- arg: {name: robot, default: a, choices: [a, b]}", ["robot:=c"], "choose one of ['a', 'b']"),
        ("- node: {pkg: lda_no_such_package, exec: x}", [], "package 'lda_no_such_package' not found"),
        ("- node: {pkg: lda_bringup, exec: no_such_exe}", [], "package 'lda_bringup' has no executable 'no_such_exe'"),
        ("- node: {pkg: lda_bringup, exec: selftest_talker, param: [{from: /nope.yaml}]}", [],
         "parameter file not found: /nope.yaml"),
        ("- node: {pkg: lda_bringup, exec: selftest_talker, name: $(var missing)}", [],
         "$(var missing) is not a declared launch argument"),
        ("- timer: {period: 1.0}", [], "unsupported launch entry 'timer'"),
    ],
)
def test_bad_launch_input_gives_clear_error(tmp_path, body, cli, message):
    launch = _write(tmp_path, "launch:\n" + body + "\n")
    result = run_tree(["lda-launch", str(launch), *cli], timeout=30)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_show_args_lists_declarations_without_values(tmp_path):
    launch = _write(tmp_path, "launch:\n- arg: {name: checkpoint, description: LDA checkpoint}\n"
                              "- arg: {name: device, default: cpu}\n")
    result = run_tree(["lda-launch", str(launch), "--show-args"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert "'checkpoint': LDA checkpoint (required)" in result.stdout
    assert "'device':  default: 'cpu'" in result.stdout


def test_malformed_cli_argument_and_missing_file(tmp_path):
    result = run_tree(["lda-launch", str(SELFTEST), "count=3"], timeout=30)
    assert result.returncode == 2 and "name:=value, got 'count=3'" in result.stderr
    result = run_tree(["lda-launch", str(tmp_path / "none.launch.yaml")], timeout=30)
    assert result.returncode == 2 and "launch file not found" in result.stderr


def test_description_resolves_namespaces_params_remaps_includes(tmp_path):
    params = _write(tmp_path, "/**:\n  ros__parameters: {rate_hz: 5.0}\n", "params.yaml")
    _write(tmp_path, """
        launch:
        - arg: {name: inner_ns}
        - node: {pkg: lda_bringup, exec: selftest_listener, namespace: $(var inner_ns)}
        """, "inner.launch.yaml")
    outer = _write(tmp_path, """
        launch:
        - arg: {name: robot, default: sim}
        - arg: {name: with_listener, default: "true"}
        - let: {name: topic, value: /$(var robot)/chunk}
        - group:
            - push_ros_namespace: {namespace: robots}
            - node:
                pkg: lda_bringup
                exec: selftest_talker
                name: talk_$(var robot)
                namespace: $(var robot)
                param:
                - {from: $(dirname)/params.yaml}
                - {name: rate_hz, value: 2.5}
                - {name: names, value: [a, b]}
                - {name: label, value: ""}
                - {name: phrase, value: lift the cube}
                - {name: count, value: "3"}
                remap:
                - {from: selftest/chunk, to: $(var topic)}
        - include:
            file: $(dirname)/inner.launch.yaml
            if: $(var with_listener)
            arg:
            - {name: inner_ns, value: from_outer}
        - executable: {cmd: echo $(env LDA_TEST_WORD fallback), name: echo}
        """)
    desc = LaunchDescription(outer, {"robot": "gr1"})
    talker, listener, echo = desc.processes
    assert talker.name == "talk_gr1"
    assert talker.cmd[0].endswith("lib/lda_bringup/selftest_talker")
    args = " ".join(talker.cmd[1:])
    assert "-r __node:=talk_gr1" in args and "-r __ns:=/robots/gr1" in args
    files = [talker.cmd[i + 1] for i, a in enumerate(talker.cmd) if a == "--params-file"]
    assert files[0] == str(params)  # order kept: the inline values after the file override it
    inline = yaml.safe_load(Path(files[1]).read_text())
    assert inline == {"/**": {"ros__parameters": {"rate_hz": 2.5, "names": ["a", "b"], "label": "",
                                                  "phrase": "lift the cube", "count": 3}}}
    assert "-r selftest/chunk:=/gr1/chunk" in args
    assert "-r __ns:=/from_outer" in " ".join(listener.cmd)
    assert echo.cmd == ["echo", "fallback"]
    desc.cleanup()
    assert not Path(files[1]).exists()
    assert len(LaunchDescription(outer, {"with_listener": "false"}).processes) == 2
    with pytest.raises(LaunchError, match="'if: maybe' is not a boolean"):
        LaunchDescription(outer, {"with_listener": "maybe"})


def test_set_parameter_reaches_later_nodes_and_includes_but_node_values_win(tmp_path):
    _write(tmp_path, """
        launch:
        - node: {pkg: lda_bringup, exec: selftest_listener, name: inner}
        """, "inner.launch.yaml")
    outer = _write(tmp_path, """
        launch:
        - node: {pkg: lda_bringup, exec: selftest_talker, name: before}
        - set_parameter: {name: use_sim_time, value: "true"}
        - node:
            pkg: lda_bringup
            exec: selftest_talker
            name: own
            param:
            - {name: use_sim_time, value: "false"}
        - include: {file: $(dirname)/inner.launch.yaml}
        """)
    desc = LaunchDescription(outer)

    def params(proc) -> dict:
        files = [proc.cmd[i + 1] for i, a in enumerate(proc.cmd) if a == "--params-file"]
        merged = {}
        for f in files:
            merged.update(yaml.safe_load(Path(f).read_text())["/**"]["ros__parameters"])
        return merged

    before, own, inner = desc.processes
    assert params(before) == {}  # only nodes after the set_parameter get it
    assert params(own) == {"use_sim_time": False}
    assert params(inner) == {"use_sim_time": True}
    desc.cleanup()
