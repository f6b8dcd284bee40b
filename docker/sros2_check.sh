#!/usr/bin/env bash
# Prove that SROS2 enforces config/security/policy.xml. Run it inside the apt ROS 2 image of docker/
# (its Fast DDS has DDS Security; the pip wheels' has not), with the repository mounted, e.g.:
#   docker compose -f docker/compose.yaml run --rm -v "$PWD:/lda:ro" lda bash /lda/docker/sros2_check.sh
# It makes a keystore with scripts/sros2_keystore.sh in a temporary directory, then for each of
#   (a) an ActionChunk on /lda/action_chunk     (legitimate subscriber in /lda/model_host)
#   (b) a PoseStamped on /robot/right/eef_target (legitimate subscriber in /lda/robot_driver)
#   (c) a call of /lda/safety_reset             (legitimate server in /lda/safety_gate)
# starts the legitimate receiver, then at once a sender without security, one with security on but no
# enclave, two in wrong enclaves and one in the right enclave. Each sender tags its message; PASS when
# exactly the right enclave's message arrives. Exits non-zero on any FAIL. Guide: docs/guides/security.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=/usr/bin/python3          # the system Python of the apt ROS 2, never the pip venv of the image
DOMAIN="${SROS2_CHECK_DOMAIN_ID:-42}"
SECONDS_RX=25                # how long a receiver listens [s]
SECONDS_TX=14                # how long a sender sends (5 Hz) or waits for a reply [s]
KEEP=0

usage() {
  cat <<EOF
Usage: docker/sros2_check.sh [--domain-id N] [--keep]

Inside the ROS 2 container of docker/ (apt ROS 2 with sros2, lda_msgs built in /ws/install):
  docker compose -f docker/compose.yaml run --rm -v "\$PWD:/lda:ro" lda bash /lda/docker/sros2_check.sh
Creates a temporary keystore from config/security/policy.xml and shows, for /lda/action_chunk,
/robot/right/eef_target and /lda/safety_reset, that senders without credentials or in a wrong
enclave do not reach the legitimate receiver while the right enclave does. Prints PASS/FAIL per case.

  --domain-id N   ROS_DOMAIN_ID of the check (default 42, or \$SROS2_CHECK_DOMAIN_ID)
  --keep          keep the temporary keystore and logs
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --domain-id) [ $# -ge 2 ] || { echo "--domain-id needs a number" >&2; exit 2; }; DOMAIN="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "sros2_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# -- environment: apt ROS 2 + the workspace's lda_msgs, no venv --------------------------------------
if [ -z "${ROS_DISTRO:-}" ] || [ ! -f "/opt/ros/${ROS_DISTRO}/setup.bash" ]; then
  echo "sros2_check: no apt ROS 2 here (/opt/ros/\$ROS_DISTRO); run it in the container of docker/" >&2
  exit 1
fi
set +u
# shellcheck disable=SC1090,SC1091
source "/opt/ros/${ROS_DISTRO}/setup.bash"
for ws in /ws/install/setup.bash "$ROOT/install/setup.bash"; do
  # shellcheck disable=SC1090
  if [ -f "$ws" ]; then source "$ws"; break; fi
done
set -u
if ! "$PY" -c "import rclpy, lda_msgs.msg" 2>/dev/null; then
  echo "sros2_check: $PY cannot import rclpy and lda_msgs: build the workspace (the image does: /ws/install)" >&2
  exit 1
fi
export ROS_DOMAIN_ID="$DOMAIN"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   # the check's traffic stays on this host
unset ROS_SECURITY_ENABLE ROS_SECURITY_STRATEGY ROS_SECURITY_KEYSTORE ROS_SECURITY_ENCLAVE_OVERRIDE

WORK="$(mktemp -d /tmp/lda_sros2_check.XXXXXX)"
KS="$WORK/keystore"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "== keystore (ROS_DOMAIN_ID=$DOMAIN, RMW ${RMW_IMPLEMENTATION:-default})"
bash "$ROOT/scripts/sros2_keystore.sh" "$KS" >"$WORK/keystore.log" 2>&1 || {
  cat "$WORK/keystore.log"; echo "FAIL  keystore: scripts/sros2_keystore.sh failed"; exit 1; }
echo "keystore: $KS"

# -- the sender/receiver program ------------------------------------------------------------------
cat >"$WORK/agent.py" <<'PYEOF'
"""sub TOPIC KIND SECONDS | pub TOPIC KIND TAG SECONDS | server SECONDS | client TAG SECONDS [--ros-args ...]
Prints one line 'RESULT <word> ...'. Exit 0 when it ran, 3 when ROS refused to start, 4 when the
publisher/client/server could not be created."""
import sys
import time

ARGS = sys.argv[1:sys.argv.index("--ros-args")] if "--ros-args" in sys.argv else sys.argv[1:]


def result(*words):
    print("RESULT", *words, flush=True)


try:
    import rclpy
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
    from geometry_msgs.msg import PoseStamped
    from lda_msgs.msg import ActionChunk
except Exception as e:  # noqa: BLE001
    result("import-error", repr(e))
    sys.exit(5)

QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE)
KINDS = {"chunk": ActionChunk, "pose": PoseStamped}


def reset_type():
    """(type, field that carries the caller's tag): lda_msgs/srv/SafetyReset with its who-field, or
    std_srvs/srv/Trigger (untagged) on an older build. DDS permissions go by service name, so either
    proves the same."""
    try:
        from lda_msgs.srv import SafetyReset
    except ImportError:
        from std_srvs.srv import Trigger
        return Trigger, None
    fields = SafetyReset.Request.get_fields_and_field_types()
    for name in ("operator", "requested_by"):
        if fields.get(name) == "string":
            return SafetyReset, name
    return SafetyReset, next((n for n, t in fields.items() if t == "string" and n != "reason"), None)


def start(name):
    """Context and a bare node: no parameter, type-description or rosout endpoints of its own."""
    try:
        rclpy.init(args=sys.argv)
        return Node(name, start_parameter_services=False, enable_rosout=False,
                    parameter_overrides=[Parameter("start_type_description_service", Parameter.Type.BOOL, False)])
    except Exception as e:  # noqa: BLE001
        result("refused-at-start", type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")
        sys.exit(3)


def spin_for(node, seconds, until=lambda: False):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        rclpy.spin_once(node, timeout_sec=0.1)


mode = ARGS[0]
if mode == "sub":
    topic, kind, seconds = ARGS[1], ARGS[2], float(ARGS[3])
    node = start("sros2_check_receiver")
    tags = set()
    node.create_subscription(KINDS[kind], topic, lambda m: tags.add(m.header.frame_id), QOS)
    spin_for(node, seconds)
    result("received", *sorted(tags))
elif mode == "pub":
    topic, kind, tag, seconds = ARGS[1], ARGS[2], ARGS[3], float(ARGS[4])
    node = start("sros2_check_sender")
    try:
        pub = node.create_publisher(KINDS[kind], topic, QOS)
    except Exception as e:  # noqa: BLE001
        result("publisher-refused", type(e).__name__)
        sys.exit(4)
    msg = KINDS[kind]()
    msg.header.frame_id = tag
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish(msg)
        count += 1
        spin_for(node, 0.2)
    result("published", count)
elif mode == "server":
    seconds = float(ARGS[1])
    srv_type, field = reset_type()
    node = start("sros2_check_gate")
    tags = []

    def on_request(request, response):
        tags.append(getattr(request, field) if field else "untagged")
        response.success = True
        response.message = "sros2 check"
        return response
    try:
        node.create_service(srv_type, "/lda/safety_reset", on_request)
    except Exception as e:  # noqa: BLE001
        result("server-refused", type(e).__name__)
        sys.exit(4)
    print("type", srv_type.__name__ if field else "untagged", flush=True)
    spin_for(node, seconds)
    result("received", *sorted(set(tags)))
elif mode == "client":
    tag, seconds = ARGS[1], float(ARGS[2])
    srv_type, field = reset_type()
    node = start("sros2_check_caller")
    try:
        client = node.create_client(srv_type, "/lda/safety_reset")
    except Exception as e:  # noqa: BLE001
        result("client-refused", type(e).__name__)
        sys.exit(4)
    request = srv_type.Request()
    if field:
        setattr(request, field, tag)
    if hasattr(request, "reason"):
        request.reason = "sros2 check"
    end = time.monotonic() + seconds
    future = None
    while time.monotonic() < end and future is None:
        if client.service_is_ready():
            future = client.call_async(request)
        else:
            spin_for(node, 0.2)
    if future is not None:
        spin_for(node, max(0.0, end - time.monotonic()), until=future.done)
    if future is not None and future.done() and future.result() is not None:
        result("answered", srv_type.__name__)
    else:
        result("no-answer", "service-seen" if future is not None else "service-never-seen")
else:
    sys.exit("unknown mode " + mode)
PYEOF

# run_agent WHO LOG ARGS...: WHO is 'unsecured' (security off), 'no_enclave' (Enforce, keystore, no
# enclave) or an enclave path. Runs in the background ($! is its pid, also kept in PIDS for cleanup).
run_agent() {
  local who="$1" log="$2"; shift 2
  case "$who" in
    unsecured)
      timeout 60 "$PY" "$WORK/agent.py" "$@" >"$log" 2>&1 & ;;
    no_enclave)
      ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE="$KS" \
        timeout 60 "$PY" "$WORK/agent.py" "$@" >"$log" 2>&1 & ;;
    /*)
      ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE="$KS" \
        timeout 60 "$PY" "$WORK/agent.py" "$@" --ros-args --enclave "$who" >"$log" 2>&1 & ;;
  esac
  PIDS+=("$!")
}

# The RESULT line of a log ("" when the program died before printing one).
result_of() { sed -n 's/^RESULT //p' "$1"; }
tag_of() { local t="${1//\//_}"; echo "${t#_}"; }
# A sender's result that says what ROS did (anything else, e.g. a crash, proves nothing).
conclusive() {
  case "${1%% *}" in refused-at-start|publisher-refused|client-refused|server-refused|published|answered|no-answer) return 0 ;; esac
  return 1
}

PASSED=0
FAILED=0
verdict() {  # verdict OK|BAD CASE DETAIL LOG
  if [ "$1" = OK ]; then PASSED=$((PASSED + 1)); echo "PASS  $2: $3"
  else FAILED=$((FAILED + 1)); echo "FAIL  $2: $3"; echo "      log: $4"; sed 's/^/      | /' "$4"; fi
}

# check_topic KEY TOPIC KIND RECEIVER_ENCLAVE RIGHT_ENCLAVE WRONG_ENCLAVE...
check_topic() {
  local key="$1" topic="$2" kind="$3" receiver="$4" right="$5"; shift 5
  local senders=(unsecured no_enclave "$@" "$right")
  local who pid rx_pid rx_log got tags rc log sent
  echo "== ($key) $kind on $topic, receiver in $receiver"
  rx_log="$WORK/$key-receiver.log"
  run_agent "$receiver" "$rx_log" sub "$topic" "$kind" "$SECONDS_RX"
  rx_pid="$!"
  sleep 3
  local tx_pids=()
  for who in "${senders[@]}"; do
    run_agent "$who" "$WORK/$key-$(tag_of "$who").log" pub "$topic" "$kind" "$(tag_of "$who")" "$SECONDS_TX"
    tx_pids+=("$!")
  done
  for pid in "${tx_pids[@]}"; do wait "$pid" || true; done
  rc=0; wait "$rx_pid" || rc=$?
  got="$(result_of "$rx_log")"
  if [ "${got%% *}" != received ]; then
    verdict BAD "($key) receiver" "the receiver in $receiver did not run (rc $rc): no case can be judged" "$rx_log"
    return 0
  fi
  tags=" ${got#received} "
  for who in "${senders[@]}"; do
    log="$WORK/$key-$(tag_of "$who").log"
    sent="$(result_of "$log")"; sent="${sent:-died without a result}"
    if ! conclusive "$sent"; then
      verdict BAD "($key) from $who" "inconclusive: the sender did not run ($sent)" "$log"
    elif [ "$who" = "$right" ]; then
      if [[ "$tags" == *" $(tag_of "$who") "* ]]; then verdict OK "($key) from $who" "delivered (sender: $sent)" "$log"
      else verdict BAD "($key) from $who" "NOT delivered from the right enclave (sender: $sent)" "$log"; fi
    else
      if [[ "$tags" == *" $(tag_of "$who") "* ]]; then verdict BAD "($key) from $who" "DELIVERED (sender: $sent)" "$log"
      else verdict OK "($key) from $who" "not delivered (sender: $sent)" "$log"; fi
    fi
  done
}

# check_service KEY SERVER_ENCLAVE RIGHT_ENCLAVE WRONG_ENCLAVE...
check_service() {
  local key="$1" server="$2" right="$3"; shift 3
  local callers=(unsecured no_enclave "$@" "$right")
  local who pid sv_pid sv_log got tags rc log answer reached srv_type
  echo "== ($key) call of /lda/safety_reset, server in $server"
  sv_log="$WORK/$key-server.log"
  run_agent "$server" "$sv_log" server "$SECONDS_RX"
  sv_pid="$!"
  sleep 3
  local tx_pids=()
  for who in "${callers[@]}"; do
    run_agent "$who" "$WORK/$key-$(tag_of "$who").log" client "$(tag_of "$who")" "$SECONDS_TX"
    tx_pids+=("$!")
  done
  for pid in "${tx_pids[@]}"; do wait "$pid" || true; done
  rc=0; wait "$sv_pid" || rc=$?
  got="$(result_of "$sv_log")"
  if [ "${got%% *}" != received ]; then
    verdict BAD "($key) server" "the server in $server did not run (rc $rc): no case can be judged" "$sv_log"
    return 0
  fi
  tags=" ${got#received} "
  srv_type="$(sed -n 's/^type //p' "$sv_log")"
  if [ "$srv_type" != SafetyReset ]; then
    echo "      note: no tagged lda_msgs/srv/SafetyReset in this build: calls judged by their answers only"
  fi
  for who in "${callers[@]}"; do
    log="$WORK/$key-$(tag_of "$who").log"
    answer="$(result_of "$log")"; answer="${answer:-died without a result}"
    reached=no
    if [[ "$tags" == *" $(tag_of "$who") "* ]]; then reached=yes; fi
    if ! conclusive "$answer"; then
      verdict BAD "($key) from $who" "inconclusive: the caller did not run ($answer)" "$log"
    elif [ "$who" = "$right" ]; then
      if [ "${answer%% *}" = answered ]; then verdict OK "($key) from $who" "answered (server saw the tag: $reached)" "$log"
      else verdict BAD "($key) from $who" "NOT answered for the right enclave ($answer)" "$log"; fi
    else
      if [ "${answer%% *}" = answered ] || [ "$reached" = yes ]; then
        verdict BAD "($key) from $who" "REACHED the server ($answer, server saw the tag: $reached)" "$log"
      else verdict OK "($key) from $who" "refused ($answer)" "$log"; fi
    fi
  done
}

check_topic a /lda/action_chunk chunk /lda/model_host /lda/safety_gate /lda/model_host /lda/operator
check_topic b /robot/right/eef_target pose /lda/robot_driver /lda/safety_gate /lda/model_host /lda/operator
check_service c /lda/safety_gate /lda/operator /lda/model_host /lda/robot_driver

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
