"""The package dependency rules (docs/design/architecture.md), read from the imports of every runtime module.

Every `import x` / `from x import y` anywhere in a module counts, lazy imports inside functions included:
a deployed policy must not need the recorder installed, whenever the import happens.
"""

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = sorted(p.name for p in (ROOT / "src").iterdir() if (p / "package.xml").exists())

# Which of the suite's packages each package's runtime code may import (besides itself).
ALLOWED = {
    "lda_msgs": set(),
    "lda_common": {"lda_msgs"},
    "lda_policy": {"lda_msgs", "lda_common"},
    "lda_teleop_record": {"lda_msgs", "lda_common"},
    "lda_train": {"lda_msgs", "lda_common", "lda_policy"},
    "lda_sim": {"lda_msgs", "lda_common"},
    "lda_bringup": {"lda_msgs", "lda_common", "lda_policy", "lda_train", "lda_sim"},
    "lda_testing": {"lda_msgs", "lda_common", "lda_policy", "lda_teleop_record", "lda_train", "lda_sim"},
}
# These stand on the common package: they must use it rather than grow their own copies.
MUST_IMPORT = {"lda_policy": "lda_common", "lda_teleop_record": "lda_common", "lda_train": "lda_common"}


def imported_suite_packages(package: str) -> dict[str, list[str]]:
    """Suite packages imported by ``package``'s runtime modules -> the modules that import them."""
    found: dict[str, list[str]] = {}
    for module in sorted((ROOT / "src" / package / package).rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top in SUITE and top != package:
                    found.setdefault(top, []).append(str(module.relative_to(ROOT)))
    return found


def declared_dependencies(package: str) -> set[str]:
    tree = ET.parse(ROOT / "src" / package / "package.xml")
    return {e.text for tag in ("depend", "exec_depend") for e in tree.getroot().iter(tag)}


def test_every_package_has_rules():
    assert set(SUITE) == set(ALLOWED), "a package was added or removed: give it its rules here and in the docs"


@pytest.mark.parametrize("package", [p for p in ALLOWED if p != "lda_msgs"])
def test_imports_follow_the_rules(package):
    imported = imported_suite_packages(package)
    forbidden = {name: modules for name, modules in imported.items() if name not in ALLOWED[package]}
    assert not forbidden, f"{package} imports packages it must not: {forbidden}"
    if package in MUST_IMPORT:
        assert MUST_IMPORT[package] in imported, f"{package} does not use {MUST_IMPORT[package]}"


@pytest.mark.parametrize("package", [p for p in ALLOWED if p not in ("lda_msgs", "lda_testing")])
def test_runtime_imports_are_declared_in_package_xml(package):
    undeclared = set(imported_suite_packages(package)) - declared_dependencies(package)
    assert not undeclared, f"src/{package}/package.xml does not declare exec_depend on {sorted(undeclared)}"


def test_runtime_packages_do_not_depend_on_the_test_fixtures():
    for package in SUITE:
        if package != "lda_testing":
            assert "lda_testing" not in declared_dependencies(package), f"{package} needs lda_testing to run"


@pytest.mark.parametrize("module", ["lda_common.robot_config", "lda_common.action_space", "lda_common.geometry",
                                    "lda_common.alignment", "lda_common.messages", "lda_common.bag_io",
                                    "lda_common.schema", "lda_common.schema", "lda_policy.model"])
def test_ros_free_at_import(module):
    """Training servers have no ROS: these import without pulling in rclpy."""
    code = f"import sys, {module}; assert 'rclpy' not in sys.modules, 'rclpy was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
