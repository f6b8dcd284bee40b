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
from typing import Annotated, Any, Literal

import yaml
from lda_common.config import ConfigError, Field, Text, check, load_yaml, parse


class LaunchError(ConfigError):
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


# -- the entries of a launch file, as typed dataclasses (text values are substituted when run) ------------
@dataclass(kw_only=True)
class _Entry:
    if_: Annotated[Text | None, Field(alias="if")] = None
    unless: Text | None = None


@dataclass(kw_only=True)
class ArgDecl(_Entry):
    name: Text
    default: Text | None = None
    description: Text = ""
    choices: list[Text] | None = None


@dataclass(kw_only=True)
class _NameValue:  # an include's arg, a node's env
    name: Text
    value: Any


@dataclass(kw_only=True)
class _Set(_NameValue, _Entry):  # let, set_env, set_parameter
    pass


@dataclass(kw_only=True)
class _PushNamespace(_Entry):
    namespace: Text


@dataclass(kw_only=True)
class _Group(_Entry):
    children: list[Any] = field(default_factory=list)


@dataclass(kw_only=True)
class _Include(_Entry):
    file: Text
    arg: list[_NameValue] = field(default_factory=list)


@dataclass(kw_only=True)
class _Param:  # {from: FILE} or {name: N, value: V}
    from_: Annotated[Text | None, Field(alias="from")] = None
    name: Text | None = None
    value: Any = None

    def __post_init__(self) -> None:
        by_file = self.from_ is not None and self.name is None and self.value is None
        by_name = self.from_ is None and self.name is not None and self.value is not None
        check(by_file or by_name, "", "give either 'from: FILE' or 'name:' and 'value:'")


@dataclass(kw_only=True)
class _Remap:
    from_: Annotated[Text, Field(alias="from")]
    to: Text


@dataclass(kw_only=True)
class _Process(_Entry):
    name: Text | None = None
    args: Text | None = None
    env: list[_NameValue] = field(default_factory=list)
    on_exit: Literal["", "shutdown"] = ""  # shutdown: its exit stops the whole launch
    respawn: Text = "false"
    respawn_delay: Text = "1.0"


@dataclass(kw_only=True)
class _Executable(_Process):
    cmd: Text


@dataclass(kw_only=True)
class _Node(_Process):
    pkg: Text
    exec: Text
    namespace: Text = ""
    param: list[_Param] = field(default_factory=list)
    remap: list[_Remap] = field(default_factory=list)
    ros_args: Text | None = None  # extra ROS arguments, e.g. "--enclave /lda/safety_gate"


_KINDS = {"arg": ArgDecl, "let": _Set, "set_parameter": _Set, "set_env": _Set,
          "push_ros_namespace": _PushNamespace, "group": _Group, "include": _Include, "node": _Node,
          "executable": _Executable}


def _entries(items: list, source: str, where: str) -> list[tuple[str, Any]]:
    """(kind, typed body) of each launch entry; a group's children parsed too."""
    out = []
    for i, entry in enumerate(items):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise LaunchError(f"each launch entry is a one-key mapping, got {entry!r}", f"{where}.{i}", source)
        kind, body = next(iter(entry.items()))
        kind = str(kind).replace("-", "_")  # push-ros-namespace, set-parameter
        if kind not in _KINDS:
            raise LaunchError(f"unsupported launch entry '{kind}'", f"{where}.{i}", source)
        key, short = f"{where}.{i}.{kind}", isinstance(body, list)  # group: [...] is group: {children: [...]}
        typed = parse(_KINDS[kind], {"children": body} if short else body or {}, source, prefix=key, error=LaunchError)
        if kind == "group":
            typed.children = _entries(typed.children, source, key if short else key + ".children")
        out.append((kind, typed))
    return out


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
        self.processes: list[ProcessSpec] = []
        self.params_dir: Path | None = None  # generated parameter files of inline values
        entries = self._load(self.path)
        self.declared: list[ArgDecl] = [body for kind, body in entries if kind == "arg"]
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
    def _load(path: Path) -> list[tuple[str, Any]]:
        doc = load_yaml(path, "launch file", error=LaunchError)
        if not isinstance(doc, dict) or set(doc) != {"launch"} or not isinstance(doc["launch"], list):
            raise LaunchError(f"{path.name}: a YAML launch file is a mapping with a 'launch:' list")
        return _entries(doc["launch"], path.name, "launch")

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

    def _condition(self, body: _Entry, scope: _Scope, path: Path) -> bool:
        for key, text, want in (("if", body.if_, True), ("unless", body.unless, False)):
            if text is not None:
                raw = self._subst(text, scope, path).strip().lower()
                if raw not in _TRUE | _FALSE:
                    raise LaunchError(f"{path.name}: '{key}: {raw}' is not a boolean")
                if (raw in _TRUE) != want:
                    return False
        return True

    # -- actions -----------------------------------------------------------------------------------
    def _run(self, entries: list[tuple[str, Any]], scope: _Scope, path: Path, top_level: bool = False,
             include_args: dict[str, str] | None = None) -> None:
        for kind, body in entries:
            if not self._condition(body, scope, path):
                continue
            if kind == "arg":
                self._arg(body, scope, path, self.arguments if top_level else (include_args or {}))
            elif kind == "let":
                scope.variables[body.name] = self._subst(body.value, scope, path)
            elif kind == "set_parameter":
                scope.params[body.name] = self._param_value(body.value, scope, path)
            elif kind == "set_env":
                scope.env[body.name] = self._subst(body.value, scope, path)
            elif kind == "push_ros_namespace":
                scope.namespace = _join_ns(scope.namespace, self._subst(body.namespace, scope, path))
            elif kind == "group":
                self._run(body.children, scope.child(), path)
            elif kind == "include":
                self._include(body, scope, path)
            elif kind == "node":
                self.processes.append(self._node(body, scope, path))
            else:
                self.processes.append(self._executable(body, scope, path))

    def _arg(self, body: ArgDecl, scope: _Scope, path: Path, given: dict[str, str]) -> None:
        name = body.name
        if name in given:
            value = given[name]
        elif body.default is not None:
            value = self._subst(body.default, scope, path)
        else:
            raise LaunchError(f"{path.name}: launch argument '{name}' is required (pass {name}:=VALUE)")
        if body.choices and value not in body.choices:
            raise LaunchError(f"{path.name}: launch argument '{name}' is '{value}'; choose one of {body.choices}")
        scope.variables[name] = value

    def _include(self, body: _Include, scope: _Scope, path: Path) -> None:
        target = Path(self._subst(body.file, scope, path))
        if not target.is_absolute():
            target = path.parent / target
        if not target.name.endswith((".yaml", ".yml")):
            raise LaunchError(f"{path.name}: lda-launch includes YAML launch files only, not {target.name}")
        given = {a.name: self._subst(a.value, scope, path) for a in body.arg}
        inner = scope.child()
        inner.variables = {}  # an included file sees only the arguments passed to it
        self._run(self._load(target.resolve()), inner, target.resolve(), include_args=given)

    def _node(self, body: _Node, scope: _Scope, path: Path) -> ProcessSpec:
        pkg, exe = self._subst(body.pkg, scope, path), self._subst(body.exec, scope, path)
        executable = _package_prefix(pkg) / "lib" / pkg / exe
        if not os.access(executable, os.X_OK):
            available = sorted(p.name for p in executable.parent.glob("*")) if executable.parent.is_dir() else []
            raise LaunchError(f"{path.name}: package '{pkg}' has no executable '{exe}' (has: {available})")
        cmd = [str(executable), *self._args(body, scope, path), "--ros-args"]
        name = self._subst(body.name, scope, path) if body.name is not None else exe
        if body.name is not None:
            cmd += ["-r", f"__node:={name}"]
        namespace = _join_ns(scope.namespace, self._subst(body.namespace, scope, path))
        if namespace != "/":
            cmd += ["-r", f"__ns:={namespace}"]
        # Like ros2 launch, inline values go through a generated parameter file (so empty strings,
        # lists and spaces survive), in order with the `from:` files: later entries win.
        inline: dict[str, object] = dict(scope.params)  # set_parameter values first: the node's own win
        for param in [*body.param, None]:
            if (param is None or param.from_ is not None) and inline:
                cmd += ["--params-file", self._params_file(inline)]
                inline = {}
            if param is None:
                break
            if param.from_ is not None:
                file = Path(self._subst(param.from_, scope, path))
                if not file.is_file():
                    raise LaunchError(f"{path.name}: parameter file not found: {file}")
                cmd += ["--params-file", str(file)]
            else:
                inline[param.name] = self._param_value(param.value, scope, path)
        for remap in body.remap:
            cmd += ["-r", f"{self._subst(remap.from_, scope, path)}:={self._subst(remap.to, scope, path)}"]
        if body.ros_args is not None:
            cmd += self._subst(body.ros_args, scope, path).split()
        return self._spec(name, cmd, body, scope, path)

    def _executable(self, body: _Executable, scope: _Scope, path: Path) -> ProcessSpec:
        cmd = self._subst(body.cmd, scope, path).split() + self._args(body, scope, path)
        name = self._subst(body.name, scope, path) if body.name is not None else cmd[0]
        return self._spec(name, cmd, body, scope, path)

    def _spec(self, name: str, cmd: list[str], body: _Process, scope: _Scope, path: Path) -> ProcessSpec:
        env = dict(scope.env)
        env.update({e.name: self._subst(e.value, scope, path) for e in body.env})
        return ProcessSpec(
            name=name,
            cmd=cmd,
            env=env,
            required=body.on_exit == "shutdown",
            respawn=self._subst(body.respawn, scope, path).lower() in _TRUE,
            respawn_delay=float(self._subst(body.respawn_delay, scope, path)),
        )

    def _args(self, body: _Process, scope: _Scope, path: Path) -> list[str]:
        return self._subst(body.args, scope, path).split() if body.args is not None else []

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
