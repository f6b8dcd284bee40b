#!/usr/bin/env bash
# Runs every package's tests against the built workspace (called by `make test` after set-up).
# Each run gets its own ROS_DOMAIN_ID and keeps DDS on loopback, so parallel runs never cross-talk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export HF_HUB_OFFLINE=1 MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONDONTWRITEBYTECODE=1
echo "run_tests: ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
ruff check .
exec python -m pytest "$@"
