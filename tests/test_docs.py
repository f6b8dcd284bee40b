"""Docs that cannot rot silently.

- every relative link in README.md, docs/ and the packages' READMEs points at a file that exists;
- every repository path written as inline code (`src/...`, `config/...`, ...) exists;
- every cheap command shown in docs/getting-started.md and docs/guides/ (`--help`, `--print`,
  `--show-args` lines of bash blocks) runs and exits 0 in the set-up workspace (make test sources
  scripts/env.sh before pytest, so the console scripts are on PATH).
"""

import glob
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from lda_testing.processes import run_tree

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("src/*/README.md")])
RUNNABLE_DOCS = sorted([ROOT / "docs" / "getting-started.md", *ROOT.glob("docs/guides/*.md")])

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
REPO_DIRS = ("src/", "config/", "launch/", "docs/", "scripts/", "benchmarks/", "docker/", "requirements/",
             "tests/", ".ci/")
CHEAP_FLAGS = ("--help", "--print", "--show-args")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links and paths in code blocks are examples, not references)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M)


def _cheap_commands() -> list[tuple[str, str]]:
    commands = []
    for doc in RUNNABLE_DOCS:
        for block in _bash_blocks(doc.read_text()):
            for line in block.splitlines():
                command = line.split(" #", 1)[0].strip()
                if command and not command.startswith("#") and any(f in shlex.split(command) for f in CHEAP_FLAGS):
                    commands.append((_rel(doc), command))
    return commands


def test_docs_tree_is_there():
    names = {_rel(p) for p in DOCS}
    for required in ["README.md", "docs/getting-started.md", "docs/guides/record.md", "docs/guides/train.md",
                     "docs/guides/deploy.md", "docs/guides/replay.md", "docs/guides/simulation.md",
                     "docs/design/architecture.md"]:
        assert required in names, f"{required} is missing"
    for package in sorted(p.name for p in (ROOT / "src").iterdir() if (p / "package.xml").exists()):
        assert f"src/{package}/README.md" in names, f"src/{package} has no README.md"
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024, "README.md must stay at most 12 KB: move detail to docs/"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same file
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{_rel(doc)}: links to missing files: {broken}"


def _named_paths(text: str) -> list[str]:
    """Repository paths named in inline code, and words of code blocks that are repository paths."""
    named = [code.strip().split(" ", 1)[0] for code in INLINE_CODE.findall(_prose(text))]
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        named += [word.split("=", 1)[-1] for word in block.split()]
    paths = [name.strip("'\"()").rstrip(".,:;") for name in named]
    return [p for p in paths if p.startswith(REPO_DIRS) and not any(c in p for c in "<>$")]


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_named_repository_paths_exist(doc: Path):
    missing = []
    for path in _named_paths(doc.read_text()):
        if not (glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    assert not missing, f"{_rel(doc)}: names paths that do not exist: {missing}"


def test_every_guide_shows_a_cheap_command():
    shown = {doc for doc, _ in _cheap_commands()}
    for doc in RUNNABLE_DOCS:
        assert _rel(doc) in shown, f"{_rel(doc)} shows no --help/--print/--show-args command to check"


@pytest.mark.parametrize(("doc", "command"), _cheap_commands(), ids=lambda v: v)
def test_cheap_commands_in_docs_run(doc: str, command: str):
    result = run_tree(["bash", "-c", command], timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{doc}: `{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip(), f"{doc}: `{command}` printed nothing"
