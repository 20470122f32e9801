#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Turn a Debian host into the mesh's control-plane host: install kuma-py, start kuma-cp with a TLS
# certificate for this host's address, turn mTLS on in the default mesh and publish, in the shared
# dir, what workloads need: the CP's certificate (their trust anchor) and one token per workload.
#
#   control-plane.sh --address 192.168.56.10 --workloads "web backend-1 backend-2" [--foreground]
#   control-plane.sh --write-units DIR --state-dir DIR2   # only write the unit (and env file)
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

MESH_POLICIES='type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}'

main() {
  parse_args "$@"
  if [ -n "$WRITE_UNITS" ]; then
    write_env kuma-cp
    write_unit kuma-cp "$WRITE_UNITS"
    return 0
  fi
  require ADDRESS --address
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and services)"
  install_project
  make_certificate
  publish_ca
  write_env kuma-cp
  if use_foreground; then
    trap_children
    start_child kuma-cp
  else
    start_units kuma-cp
  fi
  step "waiting for the API on 127.0.0.1:$CP_API_PORT"
  wait_for "kuma-cp's API" 120 curl -fsS "http://127.0.0.1:$CP_API_PORT/"
  step "mesh default: mTLS with a builtin CA, MeshTrafficPermission allow-all"
  printf '%s\n' "$MESH_POLICIES" | kumactl apply -f - >/dev/null
  issue_tokens
  step "control plane ready at https://$ADDRESS:$CP_DP_PORT"
  if [ "$FOREGROUND" = 1 ]; then
    supervise_children
  fi
}

kumactl() { # the admin API only answers on this host's loopback; no user kumactl config is read
  KUMACTL_CONFIG="$STATE_DIR/cp/kumactl-config.yaml" "$PREFIX/bin/kumactl" "$@"
}

make_certificate() {
  install -d -m 0700 "$STATE_DIR/cp"
  local cert="$STATE_DIR/cp/tls.crt"
  if [ -f "$cert" ] && cert_names_address "$cert"; then
    step "TLS certificate for $ADDRESS: keeping $cert"
    return 0
  fi
  step "TLS certificate for $ADDRESS (kumactl generate tls-certificate)"
  kumactl generate tls-certificate --type=server --hostname="$ADDRESS" --hostname=localhost \
    --hostname=127.0.0.1 --cert-file "$cert" --key-file "$STATE_DIR/cp/tls.key"
}

cert_names_address() { # is this host's address among the certificate's SANs?
  "$PREFIX/bin/python" - "$1" "$ADDRESS" <<'PY'
import ipaddress, sys
from cryptography import x509
cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
sys.exit(ipaddress.ip_address(sys.argv[2]) not in sans.get_values_for_type(x509.IPAddress))
PY
}

publish_ca() {
  install -d -m 0755 "$SHARED_DIR"
  install -m 0644 "$STATE_DIR/cp/tls.crt" "$SHARED_DIR/.ca.crt.tmp"
  mv -f "$SHARED_DIR/.ca.crt.tmp" "$SHARED_DIR/ca.crt"
}

issue_tokens() {
  local name
  [ -n "$WORKLOADS" ] || { step "no --workloads: no tokens issued"; return 0; }
  install -d -m 0700 "$SHARED_DIR/tokens"
  for name in $WORKLOADS; do
    step "dataplane token for $name (valid for $TOKEN_VALID_FOR) -> $SHARED_DIR/tokens/$name.token"
    write_private "$SHARED_DIR/tokens/$name.token" \
      "$(kumactl generate dataplane-token --name "$name" --valid-for "$TOKEN_VALID_FOR")"
  done
}

main "$@"
