#!/usr/bin/env bash
# Packs the kernel lane's initramfs (static busybox + ./init), or reuses a cached one.
# Prints its path on stdout. Key: busybox-static version + init.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MIGBRIDGE_CACHE:-/var/cache/migbridge}
die() { echo "build-initramfs: FAILED: $*" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) ||
  die "busybox-static is not installed (install: bash scripts/setup.sh --test)"
command -v cpio >/dev/null || die "cpio not found (install: bash scripts/setup.sh --test)"
key=$( { echo "busybox-static $version"; cat "$here/init" "$0"; } | sha256sum | cut -c1-16)
out=$cache/kernel-initramfs/$key/initramfs.cpio.gz
if [ ! -f "$out" ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/host"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  install -m 755 "$here/init" "$root/init"
  mkdir -p "$(dirname "$out")"
  (cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -9) > "$out.tmp"
  mv "$out.tmp" "$out"
fi
echo "$out"
