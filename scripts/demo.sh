#!/usr/bin/env bash
# The main job: set everything up, then run the mesh-in-a-box demo (no root needed, loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m demo "$@"
