# Source this file (bash) to use the workspace: the venv, the colcon install, and loopback-only DDS.
#   source scripts/env.sh
_lda_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$_lda_root/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$_lda_root/.venv/bin/activate"
  # The pip-installed ROS 2 lives inside the venv: ament and CMake look it up there.
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
if [ -f "$_lda_root/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$_lda_root/install/setup.bash"
else
  echo "lda: no install/ yet; run 'make setup' first" >&2
fi
# Keep DDS discovery on this machine unless the user chose otherwise (a robot on the LAN sets SUBNET).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Offline by design: encoders load from local directories, never from a hub.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
unset _lda_root
