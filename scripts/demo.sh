#!/usr/bin/env bash
# The main job: set everything up, then run the demo.
#   as root: the one-machine lab (python -m demo.hostlab): a control-plane host and workload hosts,
#            each a network namespace on a private bridge, provisioned by vagrant/provision/*.sh,
#            transparent proxying + mTLS, traffic web -> backend, a table; Ctrl-C removes it all.
#            Arguments pass through: `bash scripts/demo.sh --backends 2 --detach`, `... down`, `... status`.
#   otherwise: the loopback demo (python -m demo): no root, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
case "${1:-}" in
  up | down | status) command="$1"; shift ;;
  *) command="" ;;
esac
if [ "$(id -u)" = 0 ]; then
  exec .venv/bin/python -m demo.hostlab "${command:-up}" "$@"
fi
echo "demo: the multi-host lab needs root (network namespaces, a bridge, iptables); running the loopback demo instead" >&2
case "$command" in
  down | status) echo "demo: nothing to $command without root" >&2; exit 1 ;;
  up) exec .venv/bin/python -m demo ;;
  *) exec .venv/bin/python -m demo "$@" ;;
esac
