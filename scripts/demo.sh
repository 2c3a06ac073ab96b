#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, runs the demo on simulated devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/migbridge.js demo "$@"
