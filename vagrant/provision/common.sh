# shellcheck shell=bash disable=SC2034 # variables set here are used by the scripts that source this file
# Functions shared by control-plane.sh and workload.sh (sourced, not run).
#
# Each service (kuma-cp, kuma-dp, kuma-app) is defined once: an env file (`write_env`) plus the
# command line `service_argv` puts in ARGV. The systemd unit writer and the foreground runner both
# use that definition, so a VM and a namespace of the one-machine lab run the same commands.

PROXY_UID=5678 # the kuma-dp user: Envoy runs as it, and the transparent proxy never redirects it
PROXY_USER=kuma-dp
APP_UID=65534 # foreground mode: the app runs as nobody (a UID whose traffic IS redirected)
CP_DP_PORT=5678
CP_API_PORT=5681
READINESS_PORT=9902
UNIT_DIR=/etc/systemd/system

# --- options: flags, with KUMA_LAB_* environment fallbacks ----------------------------------------

PROJECT="${KUMA_LAB_PROJECT:-/vagrant}"
PREFIX="${KUMA_LAB_PREFIX:-/opt/kuma}"
STATE_DIR="${KUMA_LAB_STATE_DIR:-/var/lib/kuma-lab}"
SHARED_DIR="${KUMA_LAB_SHARED_DIR:-/kuma-shared}"
ADDRESS="${KUMA_LAB_ADDRESS:-}"
CP_ADDRESS="${KUMA_LAB_CP_ADDRESS:-}"
NAME="${KUMA_LAB_NAME:-$(hostname -s)}"
SERVICE="${KUMA_LAB_SERVICE:-}"
APP_PORT="${KUMA_LAB_APP_PORT:-8080}"
APP_ROLE="${KUMA_LAB_APP_ROLE:-}"
UPSTREAM="${KUMA_LAB_UPSTREAM:-}"
WORKLOADS="${KUMA_LAB_WORKLOADS:-}"
FOREGROUND="${KUMA_LAB_FOREGROUND:-0}"
CREATE_USER="${KUMA_LAB_CREATE_USER:-1}"
TOKEN_VALID_FOR="${KUMA_LAB_TOKEN_VALID_FOR:-24h}"
DRAIN_TIME="${KUMA_LAB_DRAIN_TIME:-5s}"
WAIT_TIMEOUT="${KUMA_LAB_WAIT_TIMEOUT:-300}"
WRITE_UNITS=""

usage() {
  cat <<EOF
usage: $0 [options]
  --project DIR       project source (default /vagrant)             [KUMA_LAB_PROJECT]
  --prefix DIR        virtualenv to install into or reuse (/opt/kuma) [KUMA_LAB_PREFIX]
  --state-dir DIR     this host's state (/var/lib/kuma-lab)         [KUMA_LAB_STATE_DIR]
  --shared-dir DIR    CA cert + tokens published by the CP (/kuma-shared) [KUMA_LAB_SHARED_DIR]
  --address IP        this host's address                           [KUMA_LAB_ADDRESS]
  --cp-address IP     the control plane's address (workloads)       [KUMA_LAB_CP_ADDRESS]
  --name NAME         Dataplane name (default: hostname)            [KUMA_LAB_NAME]
  --service NAME      kuma.io/service (default: NAME without -N)    [KUMA_LAB_SERVICE]
  --app-port PORT     the app's port (8080)                         [KUMA_LAB_APP_PORT]
  --app-role ROLE     demo app: web|backend (default: web for service web) [KUMA_LAB_APP_ROLE]
  --upstream URL      the web app's backend URL, e.g. http://backend.mesh:8080 [KUMA_LAB_UPSTREAM]
  --workloads "A B"   Dataplane names to issue tokens for (CP)      [KUMA_LAB_WORKLOADS]
  --token-valid-for D validity of those tokens (24h)                [KUMA_LAB_TOKEN_VALID_FOR]
  --drain-time D      kuma-dp's drain time (5s)                     [KUMA_LAB_DRAIN_TIME]
  --foreground        run the services as children (no systemd)     [KUMA_LAB_FOREGROUND=1]
  --no-create-user    use UID $PROXY_UID without creating the kuma-dp user [KUMA_LAB_CREATE_USER=0]
  --write-units DIR   only write env files (state dir) and systemd units into DIR, then exit
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

# A progress line; the one-machine lab shows these, prefixed with the host's name.
step() { echo "==> $*"; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --project) PROJECT="${2:?--project needs a value}"; shift ;;
      --prefix) PREFIX="${2:?--prefix needs a value}"; shift ;;
      --state-dir) STATE_DIR="${2:?--state-dir needs a value}"; shift ;;
      --shared-dir) SHARED_DIR="${2:?--shared-dir needs a value}"; shift ;;
      --address) ADDRESS="${2:?--address needs a value}"; shift ;;
      --cp-address) CP_ADDRESS="${2:?--cp-address needs a value}"; shift ;;
      --name) NAME="${2:?--name needs a value}"; shift ;;
      --service) SERVICE="${2:?--service needs a value}"; shift ;;
      --app-port) APP_PORT="${2:?--app-port needs a value}"; shift ;;
      --app-role) APP_ROLE="${2:?--app-role needs a value}"; shift ;;
      --upstream) UPSTREAM="${2:?--upstream needs a value}"; shift ;;
      --workloads) WORKLOADS="${2:?--workloads needs a value}"; shift ;;
      --token-valid-for) TOKEN_VALID_FOR="${2:?--token-valid-for needs a value}"; shift ;;
      --drain-time) DRAIN_TIME="${2:?--drain-time needs a value}"; shift ;;
      --write-units) WRITE_UNITS="${2:?--write-units needs a directory}"; shift ;;
      --foreground) FOREGROUND=1 ;;
      --no-create-user) CREATE_USER=0 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  SERVICE="${SERVICE:-${NAME%-[0-9]*}}"
  if [ -z "$APP_ROLE" ]; then
    if [ "$SERVICE" = web ]; then APP_ROLE=web; else APP_ROLE=backend; fi
  fi
  ENV_DIR="$STATE_DIR/env"
}

require() { # require VAR_NAME FLAG: a clear message naming the flag when a value is missing
  [ -n "${!1}" ] || die "$2 is required (or set KUMA_LAB_$1)"
}

# --- installation ----------------------------------------------------------------------------------

install_project() {
  if "$PREFIX/bin/python" -c 'import control_plane, kuma_dp, transparent_proxy' 2>/dev/null && [ -x "$PREFIX/bin/kuma-dp" ]; then
    step "using the kuma-py install in $PREFIX"
    return 0
  fi
  [ -f "$PROJECT/pyproject.toml" ] || die "--project $PROJECT: no pyproject.toml (is the source synced?)"
  if command -v apt-get >/dev/null; then
    step "installing system packages (python3-venv iptables iproute2 curl)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends python3-venv iptables iproute2 curl util-linux >/dev/null
  fi
  step "installing kuma-py from $PROJECT into $PREFIX"
  python3 -m venv "$PREFIX"
  "$PREFIX/bin/pip" install -q --disable-pip-version-check "$PROJECT"
}

create_proxy_user() {
  if [ "$CREATE_USER" != 1 ]; then
    step "proxy user: UID $PROXY_UID (not creating the $PROXY_USER user)"
  elif getent passwd "$PROXY_UID" >/dev/null; then
    step "proxy user: UID $PROXY_UID exists ($(getent passwd "$PROXY_UID" | cut -d: -f1))"
  else
    step "creating the $PROXY_USER user (UID $PROXY_UID)"
    useradd --system --uid "$PROXY_UID" --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PROXY_USER"
  fi
}

# Write a file readable only by its owner, atomically (readers never see a partial token).
write_private() { # write_private PATH CONTENT [OWNER]
  local tmp
  tmp="$(dirname "$1")/.$(basename "$1").tmp"
  (umask 077 && printf '%s\n' "$2" >"$tmp")
  [ -z "${3:-}" ] || chown "$3:$3" "$tmp"
  mv -f "$tmp" "$1"
}

# --- the services: one definition each -----------------------------------------------------------

# Sets ARGV to the command line of service $1.
service_argv() {
  case "$1" in
    kuma-cp) ARGV=("$PREFIX/bin/kuma-cp" run) ;;
    kuma-dp)
      ARGV=("$PREFIX/bin/kuma-dp" run --dataplane-file "$STATE_DIR/dp/dataplane.yaml"
        --work-dir "$STATE_DIR/dp/work" --drain-time "$DRAIN_TIME") ;;
    kuma-app)
      ARGV=("$PREFIX/bin/python" "$PROJECT/demo/apps.py" "$APP_ROLE" --port "$APP_PORT" --instance "$NAME")
      [ "$APP_ROLE" != web ] || ARGV+=(--backend-url "$UPSTREAM") ;;
    *) die "unknown service $1" ;;
  esac
}

# The environment of service $1, one KEY=value per line (systemd EnvironmentFile= syntax).
service_env() {
  case "$1" in
    kuma-cp)
      echo "KUMA_GENERAL_WORK_DIR=$STATE_DIR/cp"
      echo "KUMA_GENERAL_TLS_CERT_FILE=$STATE_DIR/cp/tls.crt"
      echo "KUMA_GENERAL_TLS_KEY_FILE=$STATE_DIR/cp/tls.key" ;;
    kuma-dp)
      echo "KUMA_CONTROL_PLANE_URL=https://$CP_ADDRESS:$CP_DP_PORT"
      echo "KUMA_CONTROL_PLANE_CA_CERT_FILE=$STATE_DIR/ca.crt"
      echo "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH=$STATE_DIR/dp/token"
      echo "KUMA_READINESS_PORT=$READINESS_PORT" ;;
    kuma-app) echo "PYTHONUNBUFFERED=1" ;;
    *) die "unknown service $1" ;;
  esac
}

# Installing the transparent proxy: once at provisioning, and before every agent start under
# systemd (iptables rules do not survive a reboot). SSH stays direct so `vagrant ssh` keeps working.
# --redirect-dns: queries to the host's resolvers go to the agent, which answers <service>.mesh
# (the apps call backend.mesh) and forwards the rest to those resolvers.
tproxy_argv() {
  ARGV=("$PREFIX/bin/kumactl" install transparent-proxy --kuma-dp-user "$PROXY_UID" --exclude-inbound-ports 22
    --redirect-dns)
}

write_env() { # write_env SERVICE...
  mkdir -p "$ENV_DIR"
  local svc
  for svc in "$@"; do
    service_env "$svc" >"$ENV_DIR/$svc.env"
  done
}

# systemd's command-line syntax differs from the shell's; our words never need quoting, so refuse
# any that would.
systemd_words() {
  local word
  for word in "$@"; do
    case "$word" in *[[:space:]\"\'\\\$%]*) die "cannot put '$word' in a systemd unit" ;; esac
  done
  echo "$*"
}

write_unit() { # write_unit SERVICE DIR
  local svc=$1 dir=$2 description user_lines pre_line="" after="network-online.target"
  local hardening="NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes"
  service_argv "$svc"
  local exec_start
  exec_start="$(systemd_words "${ARGV[@]}")"
  case "$svc" in
    kuma-cp)
      description="Kuma control plane (kuma-cp)"
      user_lines=""
      hardening+=$'\n'"ReadWritePaths=$STATE_DIR/cp" ;;
    kuma-dp)
      description="Kuma data plane proxy (kuma-dp + Envoy, UID $PROXY_UID)"
      # The agent and Envoy run as the proxy user (the rules never redirect it); only the rule
      # install needs root: the `+` prefix runs that one command with full privileges.
      user_lines="User=$PROXY_USER"$'\n'"Group=$PROXY_USER"
      tproxy_argv
      pre_line="ExecStartPre=+$(systemd_words "${ARGV[@]}")"
      after+=" kuma-app.service"
      hardening+=$'\n'"ReadWritePaths=$STATE_DIR/dp" ;;
    kuma-app)
      description="Demo app ($APP_ROLE) beside kuma-dp"
      user_lines="DynamicUser=yes" ;;
  esac
  {
    printf '[Unit]\nDescription=%s\nWants=network-online.target\nAfter=%s\n\n' "$description" "$after"
    printf '[Service]\n'
    [ -z "$user_lines" ] || printf '%s\n' "$user_lines"
    printf 'EnvironmentFile=%s\n' "$ENV_DIR/$svc.env"
    [ -z "$pre_line" ] || printf '%s\n' "$pre_line"
    printf 'ExecStart=%s\nRestart=on-failure\nRestartSec=2\nTimeoutStopSec=30\n%s\n\n' "$exec_start" "$hardening"
    printf '[Install]\nWantedBy=multi-user.target\n'
  } >"$dir/$svc.service"
}

# --- running them ----------------------------------------------------------------------------------

have_systemd() { [ -d /run/systemd/system ]; }

use_foreground() {
  if [ "$FOREGROUND" != 1 ] && ! have_systemd; then
    step "no systemd here: running the services in the foreground"
    FOREGROUND=1
  fi
  [ "$FOREGROUND" = 1 ]
}

start_units() { # start_units SERVICE...
  local svc
  for svc in "$@"; do
    write_unit "$svc" "$UNIT_DIR"
  done
  systemctl daemon-reload
  step "systemctl enable --now $*"
  systemctl enable --now "$@"
}

CHILD_PIDS=()

service_uid() {
  case "$1" in
    kuma-dp) echo "$PROXY_UID" ;;
    kuma-app) echo "$APP_UID" ;;
    *) echo "" ;;
  esac
}

start_child() { # start_child SERVICE: the same command as the unit, as a child of this script
  local svc=$1 uid
  service_argv "$svc"
  uid="$(service_uid "$svc")"
  (
    # The caller's KUMA_* variables (the script's own KUMA_LAB_* options, a developer's test knobs)
    # are not the service's settings, and kuma-cp refuses KUMA_* names no Kuma program has: the
    # child gets its env file only, as under systemd.
    unset "${!KUMA_@}"
    set -a
    # shellcheck disable=SC1090 # the env file written by write_env
    . "$ENV_DIR/$svc.env"
    set +a
    if [ -n "$uid" ]; then
      exec setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "${ARGV[@]}"
    fi
    exec "${ARGV[@]}"
  ) &
  CHILD_PIDS+=("$!")
  step "started $svc (pid $!)"
}

stop_children() {
  trap - TERM INT
  [ ${#CHILD_PIDS[@]} -eq 0 ] || kill -TERM "${CHILD_PIDS[@]}" 2>/dev/null || true
  wait || true
}

# From the first child on: SIGTERM/SIGINT stop every child, then this script exits.
trap_children() {
  trap 'step "signal received: stopping ${CHILD_PIDS[*]}"; stop_children; exit 0' TERM INT
}

# Block until one child exits, then stop the others and exit non-zero.
supervise_children() {
  local rc=0
  wait -n "${CHILD_PIDS[@]}" || rc=$?
  step "a service exited (status $rc): stopping the others"
  stop_children
  exit 1
}

children_alive() {
  local pid
  for pid in "${CHILD_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || return 1
  done
}

# wait_for WHAT TIMEOUT COMMAND...: poll COMMAND until it succeeds; fail early if a child died.
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ ${#CHILD_PIDS[@]} -eq 0 ] || children_alive || die "a service exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}
