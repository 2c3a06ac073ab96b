#!/usr/bin/env bash
# Runs the tests that call into the native addon once against a build of it with
# AddressSanitizer and UndefinedBehaviorSanitizer (-fsanitize=address,undefined).
# Fails on any ASan memory error, any UBSan runtime error (overflow, misaligned or null
# access, bad shift, ...), and on any leak whose allocation site is in code compiled into
# the addon (V8/Node keep their own heap alive at exit; not ours).
#
# The default test files are those whose code reaches the addon: the native tests (engine,
# sys calls, the process-level checks), the engine tests (parallel save/restore through the
# io_uring engine, multifd restore, simulator hazards) and the simulated-device tests (the
# simulator's data pipes and ioctls go through the addon's sys calls), the proxy's tests
# among the engine's (its fd: endpoints are inspected by the addon's socketInfo), the
# endpoint tests and the QMP client's (fd passing with SCM_RIGHTS in fdpass.cc). Other
# files can be given:
#   bash test/native/asan.sh [dist/test/X.test.js ...]   (after `npx tsc -p tsconfig.json`)
# Not in CI: 388 tests in about 2 minutes (plus about 1 minute to build the addon the first
# time), measured on a busy 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
key=$(cat native/uring/*.cc native/uring/*.h | sha256sum | cut -c1-12)
out=${MIGBRIDGE_CACHE:-/var/cache/migbridge}/sanitize/$key/migbridge_uring.node
if [ ! -f "$out" ]; then
  mkdir -p "$(dirname "$out")"
  # -fno-sanitize-recover: a UBSan finding stops the process instead of scrolling past.
  g++ -shared -fPIC -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1 -std=c++17 \
    -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED \
    -I/usr/include/node -I"$(node -p "require('node-addon-api').include_dir")" \
    native/uring/*.cc \
    $(pkg-config --cflags --libs liburing) -lpthread -o "$out.tmp"
  mv "$out.tmp" "$out"
fi
if [ $# -eq 0 ]; then
  set -- dist/test/native/*.test.js dist/test/engine/*.test.js dist/test/vfio/sim*.test.js dist/test/vfio/conformance-sim.test.js dist/test/qmp/*.test.js dist/test/cli/endpoints.test.js
fi
logs=$(mktemp -d /tmp/migbridge-asan.XXXXXX)
trap 'rm -rf "$logs"' EXIT
start=$SECONDS
# Child processes the tests start (the CLI) inherit the preload and the addon override.
MIGBRIDGE_ADDON="$out" LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS="detect_leaks=1:log_path=$logs/asan:exitcode=0:abort_on_error=0:halt_on_error=1" \
  UBSAN_OPTIONS="log_path=$logs/ubsan:print_stacktrace=1:halt_on_error=1" \
  npx ava "$@" 2>&1 | tee "$logs/ava-output" || tests=$?
node - "$logs" <<'JS' || found=$?
const fs = require('fs'), path = require('path');
const dir = process.argv[2];
let errors = 0, ub = 0, leaks = 0, ours = 0;
for (const f of fs.readdirSync(dir)) {
  const text = fs.readFileSync(path.join(dir, f), 'utf8');
  if (/ERROR: AddressSanitizer/.test(text)) { errors++; process.stderr.write(text); }
  // UBSan reports "FILE:LINE:COL: runtime error: ..." (only code built with -fsanitize=undefined
  // reports); beside ASan it may write to the test's stderr instead of its log: ava-output has that.
  for (const line of text.split('\n')) if (/runtime error:/.test(line)) { ub++; process.stderr.write(line + '\n'); }
  for (const rec of text.split(/\n(?=(?:Direct|Indirect) leak)/).slice(1)) {
    leaks++;
    // ours = allocated from code compiled into the addon (our sources, node-addon-api, libstdc++ templates)
    const site = rec.split('\n').filter((l) => /^\s+#\d+/.test(l) && !/libasan|operator new|malloc|calloc|realloc/.test(l))[0] ?? '';
    if (/native\/uring|node-addon-api|\/usr\/include\/c\+\+/.test(site)) { ours++; process.stderr.write(rec + '\n'); }
  }
}
console.log(`ASan+UBSan: ${errors} memory errors, ${ub} undefined-behaviour errors; ${leaks} leak records at exit, ${ours} allocated by the addon`);
process.exit(errors || ub || ours ? 1 : 0);
JS
echo "sanitizer run: $((SECONDS - start)) s"
exit $(( ${tests:-0} || ${found:-0} ))
