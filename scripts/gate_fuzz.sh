#!/usr/bin/env bash
# The safety gate's property-based tests (src/lda_policy/test/test_gate_properties.py) with 10x the examples
# `make test` runs (2000 per property instead of 200; issue #27). Extra arguments go to pytest, e.g.
#   scripts/gate_fuzz.sh -k sequence          # one property
#   LDA_HYPOTHESIS_PROFILE=ci scripts/gate_fuzz.sh   # the bounded run of make test
# Needs the set-up workspace (make setup). Exit status: pytest's (0: nothing found).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
set +u  # the colcon set-up scripts read unset variables
# shellcheck disable=SC1091
source scripts/env.sh
set -u
export LDA_HYPOTHESIS_PROFILE="${LDA_HYPOTHESIS_PROFILE:-fuzz}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
exec python -m pytest src/lda_policy/test/test_gate_properties.py -q -p no:cacheprovider \
  --hypothesis-show-statistics --timeout=3600 "$@"
