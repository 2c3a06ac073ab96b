#!/usr/bin/env bash
# Checks what a user gets from npm: packs this checkout (as package.json says: its `files`,
# its prepack script), installs the tarball into an empty directory on each Node given (npm
# builds the addon there, on that Node, against that Node's headers), and runs the installed
# `migbridge inspect` on a small QEMU stream. Its stdout must equal the checkout's own
# (bin/migbridge.js on the machine's Node), its stderr must be empty (no warnings reach users),
# and it must have loaded the addon built at install; the tarball holds only the allow-listed
# files, and the README's library example runs against the installed package.
#
#   scripts/test-pack.sh [NODE_BIN_DIR...]    default: the directory of the machine's node
#
# A NODE_BIN_DIR from scripts/node-dist.sh has the headers beside it (../include/node); they
# are given to node-gyp (npm_config_nodedir), which would otherwise download them. Needs a
# built checkout (scripts/setup.sh). One line per Node on success; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "test-pack.sh: $*" >&2; exit 1; }
[ $# -gt 0 ] || set -- "$(dirname "$(command -v node)")"
fixture="$PWD/test/fixtures/qemu10-vfio/one-mtty.mig"

work="$(mktemp -d /tmp/migbridge-pack.XXXXXX)"
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" >/dev/null || die "npm pack failed"
tarball="$(ls "$work"/*.tgz)"
# What ships: the allow-list of package.json's `files` (plus what npm always adds), nothing else.
listing="$(tar -tzf "$tarball" | sed 's|^package/||' | sort)"
for want in package.json LICENSE README.md docs/cli.md binding.gyp bin/migbridge.js dist/src/index.js dist/src/index.d.ts dist/src/cli/main.js native/uring/addon.cc; do
  grep -qx "$want" <<<"$listing" || die "the tarball lacks $want"
done
stray="$(grep -vE '^(package\.json|LICENSE|README\.md|binding\.gyp|bin/.*|native/.*|docs/[a-z-]+\.md|dist/src/.*)$' <<<"$listing" || true)"
[ -z "$stray" ] || die "the tarball holds files outside the allow-list: $(head -5 <<<"$stray" | tr '\n' ' ')"
echo "packed tarball: $(wc -l <<<"$listing") files, all allow-listed"
node bin/migbridge.js inspect "$fixture" > "$work/want.txt"

for bin in "$@"; do
  [ -x "$bin/node" ] || die "$bin/node is not an executable"
  version="$("$bin/node" --version)"
  app="$(mktemp -d "$work/app.XXXXXX")"
  echo '{ "name": "migbridge-pack-check", "private": true }' > "$app/package.json"
  nodedir=()
  [ -f "$bin/../include/node/node_api.h" ] && nodedir=(env "npm_config_nodedir=$(cd "$bin/.." && pwd)")
  start=$SECONDS
  (cd "$app" && PATH="$bin:$PATH" "${nodedir[@]}" npm install --no-audit --no-fund --loglevel=error "$tarball" \
     > "$app/install.log" 2>&1) || { cat "$app/install.log"; die "node $version: npm install of the tarball failed"; }
  installed=$((SECONDS - start))
  addon="$app/node_modules/migbridge/build/Release/migbridge_uring.node"
  [ -f "$addon" ] || die "node $version: npm install built no addon ($addon missing)"
  # The addon must be the one built at install, on this Node: MIGBRIDGE_ADDON would replace it.
  (cd "$app" && PATH="$bin:$PATH" env -u MIGBRIDGE_ADDON npx --no-install migbridge inspect "$fixture" \
     > "$app/out.txt" 2> "$app/err.txt") || { cat "$app/err.txt"; die "node $version: migbridge inspect failed"; }
  [ ! -s "$app/err.txt" ] || { cat "$app/err.txt"; die "node $version: migbridge inspect wrote to stderr"; }
  cmp -s "$work/want.txt" "$app/out.txt" ||
    { diff "$work/want.txt" "$app/out.txt" | head -20; die "node $version: inspect printed something else than the checkout"; }
  used="$(cd "$app" && PATH="$bin:$PATH" env -u MIGBRIDGE_ADDON npx --no-install migbridge env --output=json)"
  echo "$used" | grep -q "\"node\": *\"$version\"" || die "node $version: the installed CLI ran on another node: $used"
  # The README's library example (as prepack compiled it), importing the installed package.
  sed "s|'../src/index.js'|'migbridge'|" dist/examples/save-restore.js > "$app/example.mjs"
  grep -q "from 'migbridge'" "$app/example.mjs" || die "the example's import was not rewritten"
  (cd "$app" && PATH="$bin:$PATH" env -u MIGBRIDGE_ADDON node example.mjs "$app/example.mig" > "$app/example.out" 2>&1) ||
    { cat "$app/example.out"; die "node $version: the library example failed"; }
  [ "$(grep -c 'state matches' "$app/example.out")" = 2 ] || { cat "$app/example.out"; die "node $version: library example: states do not match"; }
  echo "node $version: packed tarball installs ($(basename "$tarball"), ${installed}s, addon built at install), inspect prints what the checkout prints, nothing on stderr, library example restores 2 devices"
done
