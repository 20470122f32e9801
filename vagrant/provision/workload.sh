#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Turn a Debian host into a workload host: install kuma-py, the kuma-dp user (UID 5678), the
# transparent proxy, the demo app and kuma-dp beside it, with the token and CA the control plane
# published in the shared dir.
#
#   workload.sh --address 192.168.56.21 --cp-address 192.168.56.10 --name backend-1 [--foreground]
#   workload.sh --write-units DIR --state-dir DIR2 --cp-address IP   # only write units + env files
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

main() {
  parse_args "$@"
  if [ -n "$WRITE_UNITS" ]; then
    write_env kuma-app kuma-dp
    write_unit kuma-app "$WRITE_UNITS"
    write_unit kuma-dp "$WRITE_UNITS"
    return 0
  fi
  require ADDRESS --address
  require CP_ADDRESS --cp-address
  [ "$APP_ROLE" != web ] || require UPSTREAM --upstream
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages, iptables rules and services)"
  install_project
  create_proxy_user
  step "waiting for the control plane's certificate and the token for $NAME in $SHARED_DIR"
  wait_for "$SHARED_DIR/ca.crt and tokens/$NAME.token" "$WAIT_TIMEOUT" \
    test -s "$SHARED_DIR/ca.crt" -a -s "$SHARED_DIR/tokens/$NAME.token"
  place_identity_files
  write_dataplane
  step "transparent proxy: iptables redirect to Envoy (UID $PROXY_UID excluded), DNS to the agent"
  tproxy_argv
  "${ARGV[@]}" >/dev/null
  write_env kuma-app kuma-dp
  if use_foreground; then
    trap_children
    start_child kuma-app
    start_child kuma-dp
  else
    start_units kuma-app kuma-dp
  fi
  step "waiting for the proxy to be READY (127.0.0.1:$READINESS_PORT)"
  wait_for "kuma-dp READY" 120 ready
  step "proxy READY: $NAME ($SERVICE) at $ADDRESS:$APP_PORT"
  if [ "$FOREGROUND" = 1 ]; then
    supervise_children
  fi
}

ready() { [ "$(curl -sS --max-time 2 "http://127.0.0.1:$READINESS_PORT/ready")" = READY ]; }

place_identity_files() {
  install -d -m 0755 "$STATE_DIR"
  install -d -m 0700 -o "$PROXY_UID" -g "$PROXY_UID" "$STATE_DIR/dp" "$STATE_DIR/dp/work"
  install -m 0644 "$SHARED_DIR/ca.crt" "$STATE_DIR/ca.crt"
  install -m 0600 -o "$PROXY_UID" -g "$PROXY_UID" "$SHARED_DIR/tokens/$NAME.token" "$STATE_DIR/dp/token"
}

write_dataplane() {
  cat >"$STATE_DIR/dp/dataplane.yaml" <<YAML
type: Dataplane
mesh: default
name: $NAME
networking:
  address: $ADDRESS
  inbound:
  - port: $APP_PORT
    tags: {kuma.io/service: $SERVICE, kuma.io/protocol: http}
  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}
YAML
  chown "$PROXY_UID:$PROXY_UID" "$STATE_DIR/dp/dataplane.yaml"
}

main "$@"
