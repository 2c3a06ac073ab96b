#!/usr/bin/env bash
# Runs the host test suite (ava, not the kernel lane) on the Node versions users have besides
# the machine's own, which scripts/test.sh already covers; then installs the packed npm tarball
# on every version, the machine's too (scripts/test-pack.sh). Run after scripts/test.sh (it
# needs node_modules and dist/). Prints one summary line per version; exits non-zero if any
# version fails.
#
#   scripts/test-node-versions.sh                  the versions below
#   scripts/test-node-versions.sh 22.23.5 -- ARGS  one version; ARGS go to ava (e.g. test files)
#
# Per version: the Node release is unpacked from the npm registry into the cache
# (scripts/node-dist.sh); the addon is built by node-gyp running on that Node against its own
# headers, in build-node/<version>/ so no version overwrites another's addon (or build/, which
# the machine's Node uses); ava runs on that Node with MIGBRIDGE_ADDON naming that build.
set -euo pipefail
cd "$(dirname "$0")/.."
# The newest release of each LTS line, checked in CI (the machine's Node is the third line).
versions=(22.23.5 24.22.3)
ava_args=()
if [ $# -gt 0 ]; then
  versions=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do versions+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  ava_args=("$@")
fi

log="$(mktemp /tmp/migbridge-node-versions.XXXXXX)"
trap 'rm -f "$log"' EXIT
summaries=()
status=0
# Passes are counted from ava's per-test ✔ lines (its closing "N tests passed" is printed only
# when none failed), failures from its closing "N tests failed"; the exit status catches the rest (hooks, crashes).
ava_passed() { tr -d '\r' < "$log" | grep -acE '^ +✔ ' || true; }
ava_failed() { tr -d '\r' < "$log" | awk '/^ +[0-9]+ tests? failed$/ {s += $1} END {print s + 0}'; }

for v in "${versions[@]}"; do
  dir="$(bash scripts/node-dist.sh "$v")"
  bin="$dir/bin"
  build="build-node/$v"
  rm -rf "$build"
  mkdir -p "$build"
  cp binding.gyp "$build/"
  ln -s ../../native "$build/native"
  start=$SECONDS
  # PATH first: binding.gyp's `node -p` and node-gyp's own children run on this Node too.
  if ! (cd "$build" && PATH="$bin:$PATH" node ../../node_modules/node-gyp/bin/node-gyp.js rebuild \
        --nodedir="$dir" --loglevel=error >/dev/null); then
    summaries+=("node $v: the addon did not build against its headers (see node-gyp's output above)")
    status=1; continue
  fi
  built=$((SECONDS - start))
  : > "$log"
  start=$SECONDS
  echo "== host suite on node $v (addon $build)"
  PATH="$bin:$PATH" MIGBRIDGE_ADDON="$PWD/$build/build/Release/migbridge_uring.node" \
    node node_modules/ava/entrypoints/cli.mjs "${ava_args[@]}" 2>&1 | tee "$log" || status=1
  ran=$((SECONDS - start))
  summaries+=("node $v: $(ava_passed) tests passed, $(ava_failed) failed (addon build ${built}s, suite ${ran}s)")
done

bins=("$(dirname "$(command -v node)")")
for v in "${versions[@]}"; do bins+=("$(bash scripts/node-dist.sh "$v")/bin"); done
start=$SECONDS
if out="$(bash scripts/test-pack.sh "${bins[@]}" 2>&1)"; then
  summaries+=("$out" "packed tarball on ${#bins[@]} Node versions: $((SECONDS - start))s")
else
  echo "$out"
  summaries+=("packed tarball: FAILED (output above)")
  status=1
fi

printf '%s\n' "${summaries[@]}"
exit $status
