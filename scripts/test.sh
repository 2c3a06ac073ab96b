#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs the whole ava suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
npm test -- "$@"
