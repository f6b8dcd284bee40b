"""The set-up's apt package selection against this machine's real apt-cache.

The "packages missing" branch of scripts/setup.sh never runs on a machine that already has them, so
the dry-run asks for every group's pick as if nothing were installed, and the test checks each pick
against apt-cache itself.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "apt_packages.sh"
# A single pipe (not ||) into a reader that may stop before the writer is done.
EARLY_CLOSING_PIPE = re.compile(r"(?<!\|)\|(?!\|)\s*(grep\s+(-\w*\s+)*-\w*q|head\b)")

pytestmark = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="not a Debian/Ubuntu machine")


def _groups_in_script() -> list[str]:
    text = SCRIPT.read_text()
    body = text[text.index("APT_GROUPS=(") + len("APT_GROUPS=(") :]
    body = body[: body.index(")")]
    return [word.strip('"') for word in body.split()]


def test_dry_run_names_an_installable_package_for_every_group():
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    picks = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    groups = _groups_in_script()
    assert sorted(picks) == sorted(groups), "the dry-run must answer for every group"
    for group, package in picks.items():
        assert package in group.split("|"), f"{group}: picked {package!r}, which is not one of its alternatives"
        # Read apt-cache's whole answer here (no early-closing pipe) and check the candidate.
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
        candidate = next(line.split(":", 1)[1].strip() for line in policy.splitlines() if "Candidate:" in line)
        assert candidate[:1].isdigit(), f"{group}: {package} has no installable candidate ({candidate})"


def test_no_early_closing_pipes_in_scripts():
    """`cmd | grep -q` under pipefail reads as false whenever grep exits before cmd has written all."""
    for script in (ROOT / "scripts").glob("*.sh"):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not EARLY_CLOSING_PIPE.search(code), f"{script.name}:{number}: {line}"


def test_unknown_argument_is_named():
    result = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--dryrun" in result.stderr
