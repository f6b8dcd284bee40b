#!/usr/bin/env bash
# Create or update the SROS2 keystore of the LDA deployment: the keystore (CA + governance), the four
# enclaves, and each enclave's signed permissions from config/security/policy.xml.
#   scripts/sros2_keystore.sh KEYSTORE_DIR
# Needs `ros2 security` (the sros2 package of an apt-installed ROS 2); guide: docs/guides/security.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POLICY="$ROOT/config/security/policy.xml"
ENCLAVES=(/lda/model_host /lda/safety_gate /lda/operator /lda/robot_driver)

usage() {
  cat <<EOF
Usage: scripts/sros2_keystore.sh [--policy FILE] KEYSTORE_DIR

Creates the SROS2 keystore KEYSTORE_DIR (if it is not one yet), the enclaves
  ${ENCLAVES[*]}
(keys are made once and kept), and signs each enclave's permissions from the policy
(default: config/security/policy.xml). Safe to run again, e.g. after editing the policy.

The governance and permissions are bound to ROS_DOMAIN_ID (now: ${ROS_DOMAIN_ID:-0}): run it with the
ROS_DOMAIN_ID the robot uses. KEYSTORE_DIR/private holds the CA keys: keep it off the robot.

Needs 'ros2 security' (package ros-\$ROS_DISTRO-sros2 of an apt-installed ROS 2; the pip wheels of
'make setup' do not have it). Then run the deployment with security:=true keystore:=KEYSTORE_DIR.
EOF
}

die() { echo "sros2_keystore: $*" >&2; exit 1; }

KEYSTORE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --policy) [ $# -ge 2 ] || die "--policy needs a file"; POLICY="$2"; shift 2 ;;
    --policy=*) POLICY="${1#--policy=}"; shift ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [ -z "$KEYSTORE" ] || die "one KEYSTORE_DIR only, got '$KEYSTORE' and '$1'"; KEYSTORE="$1"; shift ;;
  esac
done
[ -n "$KEYSTORE" ] || { usage >&2; exit 2; }
[ -f "$POLICY" ] || die "policy file '$POLICY' not found"

# 'ros2 security' comes with sros2, part of an apt ROS 2 (ros-base and up), not of the pip wheels.
if ! command -v ros2 >/dev/null 2>&1; then
  die "no 'ros2' command. Source an apt-installed ROS 2 (source /opt/ros/<distro>/setup.bash) with sros2
  (sudo apt install ros-<distro>-sros2), or run this inside the Docker image of docker/. The pip wheels
  of 'make setup' ship neither the ros2 CLI nor sros2, and their Fast DDS has no DDS Security."
fi
if ! ros2 security --help >/dev/null 2>&1; then
  die "'ros2 security' is not available: install sros2 (sudo apt install ros-${ROS_DISTRO:-<distro>}-sros2)
  and source /opt/ros/${ROS_DISTRO:-<distro>}/setup.bash again."
fi

DOMAIN="${ROS_DOMAIN_ID:-0}"
# Private keys and CA keys: readable by this user only.
umask 077
mkdir -p "$KEYSTORE"
KEYSTORE="$(cd "$KEYSTORE" && pwd)"

is_keystore() {
  [ -f "$KEYSTORE/public/permissions_ca.cert.pem" ] && [ -f "$KEYSTORE/public/identity_ca.cert.pem" ] &&
    [ -f "$KEYSTORE/private/permissions_ca.key.pem" ] && [ -f "$KEYSTORE/private/identity_ca.key.pem" ] &&
    [ -f "$KEYSTORE/enclaves/governance.p7s" ]
}

if is_keystore; then
  gov_domain="$(sed -n 's:.*<id>\([0-9][0-9]*\)</id>.*:\1:p' "$KEYSTORE/enclaves/governance.xml")"
  if [ "$gov_domain" != "$DOMAIN" ]; then
    die "keystore $KEYSTORE was made for ROS_DOMAIN_ID=${gov_domain:-?}, now ROS_DOMAIN_ID=$DOMAIN:
  use that domain, or a new KEYSTORE_DIR for this one."
  fi
  echo "keystore $KEYSTORE exists (ROS_DOMAIN_ID=$DOMAIN): kept"
else
  echo "creating keystore $KEYSTORE (ROS_DOMAIN_ID=$DOMAIN)"
  ros2 security create_keystore "$KEYSTORE"
fi

# create_enclave signs an allow-everything permissions file; until create_permission has replaced it,
# an enclave is "pending". If the script fails then, the pending enclave loses its permissions, so a
# node started in it fails instead of running unrestricted.
pending=""
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "$pending" ]; then
    rm -f "$KEYSTORE/enclaves${pending}/permissions.p7s" "$KEYSTORE/enclaves${pending}/permissions.xml"
    echo "sros2_keystore: failed while restricting $pending: its permissions were removed" >&2
  fi
}
trap on_exit EXIT

for enclave in "${ENCLAVES[@]}"; do
  dir="$KEYSTORE/enclaves$enclave"
  if [ -f "$dir/cert.pem" ] && [ -f "$dir/key.pem" ] && [ -e "$dir/governance.p7s" ] &&
     [ -e "$dir/identity_ca.cert.pem" ] && [ -e "$dir/permissions_ca.cert.pem" ]; then
    echo "enclave $enclave exists: keys kept"
  else
    pending="$enclave"
    echo "creating enclave $enclave"
    ros2 security create_enclave "$KEYSTORE" "$enclave"
  fi
  pending="$enclave"
  ros2 security create_permission "$KEYSTORE" "$enclave" "$POLICY"
  # The allow-everything default grants topic rt/*: make sure the policy's grant replaced it.
  if grep -qF '<topic>rt/*</topic>' "$dir/permissions.xml"; then
    die "$enclave still has the allow-everything permissions after create_permission"
  fi
  [ -f "$dir/permissions.p7s" ] || die "$enclave has no signed permissions (permissions.p7s)"
  pending=""
  echo "enclave $enclave: permissions from $POLICY"
done

cat <<EOF
done: keystore $KEYSTORE, enclaves ${ENCLAVES[*]} (ROS_DOMAIN_ID=$DOMAIN)
run the deployment with: security:=true keystore:=$KEYSTORE
an operator tool:        ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE=$KEYSTORE \\
                         ROS_SECURITY_ENCLAVE_OVERRIDE=/lda/operator <command>
EOF
