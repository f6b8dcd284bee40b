#!/usr/bin/env bash
# The Debian/Ubuntu packages the suite needs: FFmpeg shared libraries for torchcodec/pyav video
# decoding, EGL/OSMesa for MuJoCo offscreen rendering. Called by scripts/setup.sh.
#
#   scripts/apt_packages.sh            install the groups that have no package installed (root or sudo)
#   scripts/apt_packages.sh --dry-run  print "<group> <package>" for every group, as if all were missing:
#                                      the package the install would pick; installs nothing, needs no root
#
# Each group lists alternatives: Debian 12 names first, then Ubuntu 24.04 (ROS 2 Jazzy/Kilted) names.
# No `cmd | grep -q` here: under pipefail, grep -q exiting on its first match kills the writer with
# SIGPIPE (exit 141) and the whole test reads as false. Command output is captured, then matched.
set -euo pipefail

APT_GROUPS=("libavcodec59|libavcodec60|libavcodec61" "libavformat59|libavformat60|libavformat61"
            "libavutil57|libavutil58|libavutil59" "libswscale6|libswscale7|libswscale8"
            "libswresample4|libswresample5" "libavdevice59|libavdevice60|libavdevice61"
            "libavfilter8|libavfilter9|libavfilter10" "libegl1" "libegl-mesa0" "libgl1" "libosmesa6")

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

is_installed() {
  local status
  status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
  [ "$status" = "install ok installed" ]
}

has_candidate() {
  local policy
  policy="$(apt-cache policy "$1" 2>/dev/null)" || return 1
  [[ "$policy" =~ Candidate:\ [0-9] ]]
}

# The first package of a group that apt can install, or nothing (status 1).
pick_package() {
  local pkg
  for pkg in ${1//|/ }; do
    if has_candidate "$pkg"; then echo "$pkg"; return 0; fi
  done
  return 1
}

group_installed() {
  local pkg
  for pkg in ${1//|/ }; do is_installed "$pkg" && return 0; done
  return 1
}

if [ "${1:-}" = "--dry-run" ]; then
  command -v apt-cache >/dev/null || die "apt-cache not found: this is not a Debian/Ubuntu machine"
  status=0
  for group in "${APT_GROUPS[@]}"; do
    if pick="$(pick_package "$group")"; then
      echo "$group $pick"
    else
      echo "$group (none: no candidate; run 'apt-get update'?)"
      status=1
    fi
  done
  exit "$status"
fi
[ $# -eq 0 ] || die "unknown argument '$1' (only --dry-run)"

missing_groups=()
for group in "${APT_GROUPS[@]}"; do
  group_installed "$group" || missing_groups+=("$group")
done
if [ ${#missing_groups[@]} -eq 0 ]; then
  log "apt packages present"
  exit 0
fi

command -v apt-get >/dev/null \
  || die "apt-get not found; install the equivalents of these Debian packages by hand: ${missing_groups[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "need root or sudo to install apt packages: ${missing_groups[*]}"
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
to_install=()
for group in "${missing_groups[@]}"; do
  pick="$(pick_package "$group")" || die "no apt package available for: $group"
  to_install+=("$pick")
done
log "installing apt packages: ${to_install[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${to_install[@]}" >/dev/null
