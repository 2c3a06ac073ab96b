#!/usr/bin/env bash
# Runs the native tests once against an AddressSanitizer build of the addon.
# Fails on any ASan memory error, and on any leak whose allocation site is in
# code compiled into the addon (V8/Node keep their own heap alive at exit; not ours).
# Usage: bash test/native/asan.sh   (after `npx tsc -p tsconfig.json`)
set -euo pipefail
cd "$(dirname "$0")/../.."
key=$(cat native/uring/*.cc native/uring/*.h | sha256sum | cut -c1-12)
out=/var/cache/migbridge/asan/$key/migbridge_uring.node
if [ ! -f "$out" ]; then
  mkdir -p "$(dirname "$out")"
  g++ -shared -fPIC -fsanitize=address -fno-omit-frame-pointer -g -O1 -std=c++17 \
    -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED \
    -I/usr/include/node -I"$(node -p "require('node-addon-api').include_dir")" \
    native/uring/addon.cc native/uring/sys.cc native/uring/engine.cc \
    $(pkg-config --cflags --libs liburing) -lpthread -o "$out"
fi
logs=$(mktemp -d /tmp/migbridge-asan.XXXXXX)
MIGBRIDGE_ADDON="$out" LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
  ASAN_OPTIONS="detect_leaks=1:log_path=$logs/asan:exitcode=0:abort_on_error=0:halt_on_error=1" \
  npx ava dist/test/native/*.test.js
node - "$logs" <<'JS'
const fs = require('fs'), path = require('path');
const dir = process.argv[2];
let errors = 0, leaks = 0, ours = 0;
for (const f of fs.readdirSync(dir)) {
  const text = fs.readFileSync(path.join(dir, f), 'utf8');
  if (/ERROR: AddressSanitizer/.test(text)) { errors++; process.stderr.write(text); }
  for (const rec of text.split(/\n(?=(?:Direct|Indirect) leak)/).slice(1)) {
    leaks++;
    // ours = allocated from code compiled into the addon (our sources, node-addon-api, libstdc++ templates)
    const site = rec.split('\n').filter((l) => /^\s+#\d+/.test(l) && !/libasan|operator new|malloc|calloc|realloc/.test(l))[0] ?? '';
    if (/native\/uring|node-addon-api|\/usr\/include\/c\+\+/.test(site)) { ours++; process.stderr.write(rec + '\n'); }
  }
}
console.log(`ASan: ${errors} memory errors; ${leaks} leak records at exit, ${ours} allocated by the addon`);
process.exit(errors || ours ? 1 : 0);
JS
rm -rf "$logs"
