#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: apt packages, Python 3.12 venv with pinned dependencies,
# the CMake path fix for the ROS wheels, and the colcon build of the workspace into install/.
# Each step leaves a stamp (.venv/.stamps/) keyed by the files it depends on, so a second run with
# nothing changed only checks the stamps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMPS="$VENV/.stamps"

# This machine's pip configuration names local wheel folders that may not exist; keep its noise out.
quiet_pip() { "$VENV/bin/pip" --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Digest of the given files' contents (order-independent of the caller).
digest() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

# --- 1. apt packages -------------------------------------------------------------------------------
bash "$ROOT/scripts/apt_packages.sh"

# --- 2. Python 3.12 ---------------------------------------------------------------------------------
find_python() {
  # A pyenv shim on PATH may exist without a 3.12 behind it, so each candidate must actually run.
  local candidate v
  for candidate in $(command -v python3.12 2>/dev/null); do
    "$candidate" -c 'import sys, venv' >/dev/null 2>&1 && echo "$candidate" && return
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -rV); do
      candidate="$(PYENV_VERSION="$v" pyenv which python3.12 2>/dev/null)" || continue
      "$candidate" -c 'import sys, venv' >/dev/null 2>&1 && echo "$candidate" && return
    done
  fi
  return 1
}
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="$(find_python)" || die "Python 3.12 not found. Install it (Ubuntu 24.04: 'apt install python3.12 python3.12-venv'; or 'pyenv install 3.12') and run this again."
  log "creating .venv with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
  || die ".venv is not Python 3.12; remove it ('rm -rf .venv') and run this again."

# --- 3. Python dependencies -------------------------------------------------------------------------
REQ_FILES=(requirements/ros.txt requirements/python.txt requirements/sim-nodeps.txt requirements/constraints.txt scripts/fix_ros_cmake_paths.py)
req_digest="$(digest "${REQ_FILES[@]}")"
if stamp_ok pip "$req_digest"; then
  log "Python dependencies up to date"
else
  log "installing Python dependencies (first run: several GB, a few minutes)"
  quiet_pip install --upgrade pip
  quiet_pip install -c requirements/constraints.txt \
    -r requirements/ros.txt -r requirements/python.txt
  quiet_pip install --no-deps -c requirements/constraints.txt \
    -r requirements/sim-nodeps.txt
  # The ROS wheels' CMake exports name the wheel builder's Python; point them at this venv.
  "$VENV/bin/python" scripts/fix_ros_cmake_paths.py
  stamp_set pip "$req_digest"
fi

# --- 4. colcon build --------------------------------------------------------------------------------
src_digest="$( (find src -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum; cat colcon.meta) | sha256sum | cut -c1-16)"
if [ -d install ] && stamp_ok colcon "$src_digest-$req_digest"; then
  log "workspace build up to date"
else
  log "colcon build"
  mkdir -p build
  exec 9>build/.colcon.lock
  flock 9  # two set-ups at once (e.g. two terminals) must not build into install/ together
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  colcon --log-base build/log build --build-base build --install-base install \
    --metas colcon.meta \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
  stamp_set colcon "$src_digest-$req_digest"
fi
log "ready: source scripts/env.sh"
