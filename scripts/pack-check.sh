#!/usr/bin/env bash
# The npm package as a user gets it: pack a clean copy of this checkout (the prepack
# script builds dist/ there), check the tarball holds only the allow-listed files,
# install it into an empty folder (which builds the native addon), then run
# `npx migbridge inspect` on a fixture and the library example from that folder.
# Uses the node and npm on PATH (run it under another Node by putting that one first).
#   bash scripts/pack-check.sh        prints "pack-check: ok" last when all passed
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/migbridge-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "pack-check: FAILED: $*" >&2; exit 1; }

# A copy of the tracked files: no dist/ or build/, so what ships is what prepack builds.
mkdir "$work/copy" "$work/app"
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$work/copy")
ln -s "$repo/node_modules" "$work/copy/node_modules"
(cd "$work/copy" && npm pack --silent --pack-destination "$work" >/dev/null)
tarball=$(ls "$work"/migbridge-*.tgz)
echo "pack-check: packed $(basename "$tarball")"

listing=$(tar -tzf "$tarball" | sed 's|^package/||' | sort)
for want in package.json LICENSE README.md binding.gyp bin/migbridge.js dist/src/index.js dist/src/index.d.ts dist/src/cli/main.js native/uring/addon.cc; do
  grep -qx "$want" <<<"$listing" || fail "tarball lacks $want"
done
stray=$(grep -vE '^(package\.json|LICENSE|README\.md|binding\.gyp|bin/.*|native/.*|dist/src/.*)$' <<<"$listing" || true)
[ -z "$stray" ] || fail "tarball holds files outside the allow-list: $(head -5 <<<"$stray" | tr '\n' ' ')"
echo "pack-check: tarball holds $(wc -l <<<"$listing") files, all allow-listed"

cd "$work/app"
echo '{"name":"pack-check-app","version":"1.0.0","private":true,"type":"module"}' > package.json
npm install --silent --no-audit --no-fund --prefer-offline "$tarball" >/dev/null || fail "npm install of the tarball"
echo "pack-check: installed into an empty folder"

fixture="$repo/test/fixtures/qemu10-vfio/one-mtty.mig"
out=$(npx --no-install migbridge inspect "$fixture" --output=json) || fail "npx migbridge inspect"
node -e 'const r = JSON.parse(process.argv[1]); if (r.vfio.length !== 1 || r.header.magicText !== "QEVM") process.exit(1)' "$out" \
  || fail "npx migbridge inspect gave an unexpected report"
echo "pack-check: npx migbridge inspect $(basename "$fixture"): ok"
version=$(npx --no-install migbridge --version)
echo "pack-check: npx migbridge --version: $version"

# The README's library example as prepack compiled it, importing the installed package instead of ../src.
sed "s|'../src/index.js'|'migbridge'|" "$work/copy/dist/examples/save-restore.js" > example.mjs
grep -q "from 'migbridge'" example.mjs || fail "example import not rewritten"
node example.mjs "$work/app/example.mig" > example.out 2>&1 || { cat example.out >&2; fail "library example"; }
[ "$(grep -c 'state matches' example.out)" = 2 ] || { cat example.out >&2; fail "library example: states do not match"; }
grep -q "^left behind: $work/app/example.mig " example.out || { cat example.out >&2; fail "library example: does not say what it leaves behind"; }
echo "pack-check: library example: $(grep -c 'state matches' example.out) devices restored, states match"
echo "pack-check: ok"
