"""Read a ROS 2 YAML launch file into the list of processes it declares.

This is the ROS-free half of `lda-launch`: it understands the subset of the YAML launch format the
suite's launch files use (``arg``, ``let``, ``node``, ``executable``, ``group`` with
``push_ros_namespace``, ``include``, ``set_env``, ``set_parameter``, ``if``/``unless``) and the
substitutions ``$(var)``, ``$(env)``, ``$(dirname)``, ``$(find-pkg-share)``, ``$(find-pkg-prefix)``.
The same files run unchanged under the real ``ros2 launch``; anything outside the subset is an error
naming the entry, never ignored.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class LaunchError(Exception):
    """A launch file, argument or package that cannot be used; the message says which and why."""


@dataclass
class ProcessSpec:
    """One process to start: the resolved command line of a node or executable."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    required: bool = False  # on_exit: shutdown -> its death stops the whole launch
    respawn: bool = False
    respawn_delay: float = 1.0


@dataclass
class ArgDecl:
    name: str
    default: str | None
    description: str = ""
    choices: list[str] | None = None


_SUBST = re.compile(r"\$\(([^()$]*)\)")  # innermost $(...) first, so substitutions can nest
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _package_prefix(pkg: str) -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        return Path(get_package_prefix(pkg))
    except PackageNotFoundError:
        raise LaunchError(
            f"package '{pkg}' not found in AMENT_PREFIX_PATH; build and source the workspace "
            "('make setup' then 'source scripts/env.sh')"
        ) from None


class _Scope:
    """Launch configurations and namespace visible at one point of the file."""

    def __init__(self, variables: dict[str, str], namespace: str, env: dict[str, str],
                 params: dict[str, object] | None = None):
        self.variables = variables
        self.namespace = namespace
        self.env = env
        self.params = params or {}  # set_parameter: given to every later node of the scope

    def child(self) -> _Scope:
        return _Scope(dict(self.variables), self.namespace, dict(self.env), dict(self.params))


class LaunchDescription:
    """Parse ``path`` with command-line ``arguments`` (name -> value) into ``processes``."""

    def __init__(self, path: str | os.PathLike, arguments: dict[str, str] | None = None,
                 declarations_only: bool = False):
        self.path = Path(path).resolve()
        self.arguments = dict(arguments or {})
        self.declared: list[ArgDecl] = []
        self.processes: list[ProcessSpec] = []
        self.params_dir: Path | None = None  # generated parameter files of inline values
        entries = self._load(self.path)
        self._declare_all(entries)
        if declarations_only:  # e.g. --show-args: no argument needs a value yet
            return
        unknown = sorted(set(self.arguments) - {a.name for a in self.declared})
        if unknown:
            known = ", ".join(a.name for a in self.declared) or "none"
            raise LaunchError(f"{self.path.name}: unknown launch argument(s) {unknown}; declared: {known}")
        try:
            self._run(entries, _Scope({}, "/", {}), self.path, top_level=True)
        except Exception:
            self.cleanup()
            raise

    # -- file handling -----------------------------------------------------------------------------
    @staticmethod
    def _load(path: Path) -> list:
        if not path.is_file():
            raise LaunchError(f"launch file not found: {path}")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise LaunchError(f"{path.name}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("launch"), list):
            raise LaunchError(f"{path.name}: a YAML launch file is a mapping with a 'launch:' list")
        return doc["launch"]

    def _declare_all(self, entries: list) -> None:
        for entry in entries:
            kind, body = self._split(entry, self.path)
            if kind == "arg":
                choices = body.get("choices")
                self.declared.append(
                    ArgDecl(
                        name=str(body["name"]),
                        default=None if "default" not in body else str(body["default"]),
                        description=str(body.get("description", "")),
                        choices=[str(c) for c in choices] if choices else None,
                    )
                )

    @staticmethod
    def _split(entry, path: Path) -> tuple[str, dict | list]:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise LaunchError(f"{path.name}: each launch entry is a one-key mapping, got {entry!r}")
        kind, body = next(iter(entry.items()))
        return kind, body if body is not None else {}

    # -- substitutions -----------------------------------------------------------------------------
    def _subst(self, value, scope: _Scope, path: Path) -> str:
        text = str(value)
        while True:
            match = _SUBST.search(text)
            if not match:
                return text
            text = text[: match.start()] + self._eval(match.group(1), scope, path) + text[match.end() :]

    def _eval(self, expr: str, scope: _Scope, path: Path) -> str:
        parts = expr.split()
        if not parts:
            raise LaunchError(f"{path.name}: empty substitution $()")
        op, args = parts[0], parts[1:]
        if op == "var":
            if len(args) != 1 or args[0] not in scope.variables:
                raise LaunchError(f"{path.name}: $(var {' '.join(args)}) is not a declared launch argument")
            return scope.variables[args[0]]
        if op == "env":
            if not args:
                raise LaunchError(f"{path.name}: $(env) needs a variable name")
            if args[0] in scope.env:
                return scope.env[args[0]]
            if args[0] in os.environ:
                return os.environ[args[0]]
            if len(args) > 1:
                return " ".join(args[1:])
            raise LaunchError(f"{path.name}: environment variable '{args[0]}' is not set")
        if op == "dirname":
            return str(path.parent)
        if op == "find-pkg-share" and len(args) == 1:
            return str(_package_prefix(args[0]) / "share" / args[0])
        if op == "find-pkg-prefix" and len(args) == 1:
            return str(_package_prefix(args[0]))
        raise LaunchError(f"{path.name}: unsupported substitution $({expr})")

    def _condition(self, body: dict, scope: _Scope, path: Path) -> bool:
        for key, want in (("if", True), ("unless", False)):
            if key in body:
                raw = self._subst(body[key], scope, path).strip().lower()
                if raw not in _TRUE | _FALSE:
                    raise LaunchError(f"{path.name}: '{key}: {raw}' is not a boolean")
                if (raw in _TRUE) != want:
                    return False
        return True

    # -- actions -----------------------------------------------------------------------------------
    def _run(self, entries: list, scope: _Scope, path: Path, top_level: bool = False,
             include_args: dict[str, str] | None = None) -> None:
        for entry in entries:
            kind, body = self._split(entry, path)
            if isinstance(body, dict) and not self._condition(body, scope, path):
                continue
            if kind == "arg":
                self._arg(body, scope, path, self.arguments if top_level else (include_args or {}))
            elif kind == "let":
                scope.variables[str(body["name"])] = self._subst(body["value"], scope, path)
            elif kind in ("set_parameter", "set-parameter"):
                scope.params[str(body["name"])] = self._param_value(body["value"], scope, path)
            elif kind == "set_env":
                scope.env[str(body["name"])] = self._subst(body["value"], scope, path)
            elif kind in ("push_ros_namespace", "push-ros-namespace"):
                scope.namespace = _join_ns(scope.namespace, self._subst(body["namespace"], scope, path))
            elif kind == "group":
                children = body if isinstance(body, list) else body.get("children", [])
                self._run(children, scope.child(), path)
            elif kind == "include":
                self._include(body, scope, path)
            elif kind == "node":
                self.processes.append(self._node(body, scope, path))
            elif kind == "executable":
                self.processes.append(self._executable(body, scope, path))
            else:
                raise LaunchError(f"{path.name}: unsupported launch entry '{kind}'")

    def _arg(self, body: dict, scope: _Scope, path: Path, given: dict[str, str]) -> None:
        name = str(body["name"])
        if name in given:
            value = given[name]
        elif "default" in body:
            value = self._subst(body["default"], scope, path)
        else:
            raise LaunchError(f"{path.name}: launch argument '{name}' is required (pass {name}:=VALUE)")
        choices = body.get("choices")
        if choices and value not in [str(c) for c in choices]:
            raise LaunchError(f"{path.name}: launch argument '{name}' is '{value}'; choose one of {choices}")
        scope.variables[name] = value

    def _include(self, body: dict, scope: _Scope, path: Path) -> None:
        target = Path(self._subst(body["file"], scope, path))
        if not target.is_absolute():
            target = path.parent / target
        if not target.name.endswith((".yaml", ".yml")):
            raise LaunchError(f"{path.name}: lda-launch includes YAML launch files only, not {target.name}")
        given = {str(a["name"]): self._subst(a["value"], scope, path) for a in body.get("arg", [])}
        inner = scope.child()
        inner.variables = {}  # an included file sees only the arguments passed to it
        self._run(self._load(target.resolve()), inner, target.resolve(), include_args=given)

    def _node(self, body: dict, scope: _Scope, path: Path) -> ProcessSpec:
        for key in ("pkg", "exec"):
            if key not in body:
                raise LaunchError(f"{path.name}: node entry without '{key}': {body}")
        pkg, exe = self._subst(body["pkg"], scope, path), self._subst(body["exec"], scope, path)
        executable = _package_prefix(pkg) / "lib" / pkg / exe
        if not os.access(executable, os.X_OK):
            available = sorted(p.name for p in executable.parent.glob("*")) if executable.parent.is_dir() else []
            raise LaunchError(f"{path.name}: package '{pkg}' has no executable '{exe}' (has: {available})")
        cmd = [str(executable), *self._args(body, scope, path), "--ros-args"]
        name = self._subst(body["name"], scope, path) if "name" in body else exe
        if "name" in body:
            cmd += ["-r", f"__node:={name}"]
        namespace = _join_ns(scope.namespace, self._subst(body.get("namespace", ""), scope, path))
        if namespace != "/":
            cmd += ["-r", f"__ns:={namespace}"]
        # Like ros2 launch, inline values go through a generated parameter file (so empty strings,
        # lists and spaces survive), in order with the `from:` files: later entries win.
        inline: dict[str, object] = dict(scope.params)  # set_parameter values first: the node's own win
        for param in [*body.get("param", []), None]:
            if (param is None or "from" in param) and inline:
                cmd += ["--params-file", self._params_file(inline)]
                inline = {}
            if param is None:
                break
            if "from" in param:
                file = Path(self._subst(param["from"], scope, path))
                if not file.is_file():
                    raise LaunchError(f"{path.name}: parameter file not found: {file}")
                cmd += ["--params-file", str(file)]
            else:
                inline[str(param["name"])] = self._param_value(param["value"], scope, path)
        for remap in body.get("remap", []):
            cmd += ["-r", f"{self._subst(remap['from'], scope, path)}:={self._subst(remap['to'], scope, path)}"]
        return self._spec(name, cmd, body, scope, path)

    def _executable(self, body: dict, scope: _Scope, path: Path) -> ProcessSpec:
        cmd = self._subst(body["cmd"], scope, path).split() + self._args(body, scope, path)
        return self._spec(self._subst(body.get("name", cmd[0]), scope, path), cmd, body, scope, path)

    def _spec(self, name: str, cmd: list[str], body: dict, scope: _Scope, path: Path) -> ProcessSpec:
        env = dict(scope.env)
        env.update({str(e["name"]): self._subst(e["value"], scope, path) for e in body.get("env", [])})
        on_exit = str(body.get("on_exit", "")).strip()
        if on_exit not in ("", "shutdown"):
            raise LaunchError(f"{path.name}: on_exit '{on_exit}' unsupported (only 'shutdown')")
        return ProcessSpec(
            name=name,
            cmd=cmd,
            env=env,
            required=on_exit == "shutdown",
            respawn=self._subst(body.get("respawn", "false"), scope, path).lower() in _TRUE,
            respawn_delay=float(self._subst(body.get("respawn_delay", 1.0), scope, path)),
        )

    def _args(self, body: dict, scope: _Scope, path: Path) -> list[str]:
        return self._subst(body["args"], scope, path).split() if "args" in body else []

    def _param_value(self, value, scope: _Scope, path: Path):
        """Typed value: lists element-wise, strings after substitution read as YAML scalars
        ("5" -> 5, "true" -> True), except where that gives nothing ("" stays "")."""
        if isinstance(value, list):
            return [self._param_value(v, scope, path) for v in value]
        if not isinstance(value, str):
            return value
        text = self._subst(value, scope, path)
        try:
            typed = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return typed if isinstance(typed, (bool, int, float, str, list)) else text

    def _params_file(self, params: dict[str, object]) -> str:
        if self.params_dir is None:
            self.params_dir = Path(tempfile.mkdtemp(prefix="lda_launch_params_"))
        file = self.params_dir / f"params_{len(list(self.params_dir.iterdir()))}.yaml"
        file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        return str(file)

    def cleanup(self) -> None:
        """Remove the generated parameter files (after the processes have exited)."""
        if self.params_dir is not None:
            shutil.rmtree(self.params_dir, ignore_errors=True)
            self.params_dir = None


def _join_ns(base: str, ns: str) -> str:
    if not ns:
        return base
    joined = ns if ns.startswith("/") else base.rstrip("/") + "/" + ns
    return "/" + joined.strip("/") if joined.strip("/") else "/"
