#!/usr/bin/env bash
# Builds the kernel lane's guest kernel from Debian's linux-source-6.12, or reuses a cached
# one. Prints the bzImage path on stdout (everything else goes to stderr).
#
#   bash test/kernel-lane/build-kernel.sh
#
# The cache key hashes the package version, kernel.config and this script, so changing any
# of them builds a new kernel; an unchanged setup never rebuilds.
#   /var/cache/migbridge/kernel-src/<version>/   unpacked source (shared by every key)
#   /var/cache/migbridge/kernel-build/<key>/     out-of-tree object dir (O=)
#   /var/cache/migbridge/kernel/<key>/bzImage    the result (+ config, build.log)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=linux-source-6.12
tarball=/usr/src/linux-source-6.12.tar.xz
fragment=$here/kernel.config
cache=${MIGBRIDGE_CACHE:-/var/cache/migbridge}

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: FAILED: $*" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
  die "$pkg is not installed (install: bash scripts/setup.sh --test, or apt-get install $pkg)"
[ -f "$tarball" ] || die "$tarball missing (reinstall: apt-get install --reinstall $pkg)"
for tool in make gcc flex bison bc xz; do
  command -v "$tool" >/dev/null || die "$tool not found (install: bash scripts/setup.sh --test)"
done
[ -f /usr/include/libelf.h ] || die "libelf headers missing (install: apt-get install libelf-dev)"
[ -f /usr/include/openssl/ssl.h ] || die "openssl headers missing (install: apt-get install libssl-dev)"

key=$( { echo "$pkg $version"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
out=$cache/kernel/$key
if [ -f "$out/bzImage" ]; then
  log "cached: $out/bzImage"
  echo "$out/bzImage"
  exit 0
fi

mkdir -p "$cache/kernel"
# One build at a time per key (two lanes started together must not share an O= dir).
exec 9>"$cache/kernel/.lock-$key"
flock 9
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi

started=$(date +%s)
src_parent=$cache/kernel-src/$version
src=$src_parent/linux-source-6.12
if [ ! -f "$src/.unpacked" ]; then
  log "unpacking $tarball into $src_parent"
  rm -rf "$src"
  mkdir -p "$src_parent"
  tar -C "$src_parent" -xJf "$tarball"
  [ -f "$src/Makefile" ] || die "unexpected tarball layout: no $src/Makefile"
  touch "$src/.unpacked"
fi

build=$cache/kernel-build/$key
rm -rf "$build"
mkdir -p "$build"
blog=$build/build.log
options=$(grep -E '^CONFIG_[A-Za-z0-9_]+=y' "$fragment" | sed -E 's/^CONFIG_([A-Za-z0-9_]+)=y.*/\1/')

log "configuring (tinyconfig + $(echo "$options" | wc -l) options) in $build"
make -C "$src" O="$build" ARCH=x86_64 tinyconfig >>"$blog" 2>&1 || die "make tinyconfig (log: $blog)"
enable_args=()
for o in $options; do enable_args+=(--enable "$o"); done
"$src/scripts/config" --file "$build/.config" "${enable_args[@]}"
make -C "$src" O="$build" ARCH=x86_64 olddefconfig >>"$blog" 2>&1 || die "make olddefconfig (log: $blog)"

missing=()
for o in $options; do
  grep -qx "CONFIG_$o=y" "$build/.config" || missing+=("CONFIG_$o")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "the final .config lacks ${missing[*]} (dependencies unmet; see $build/.config and $fragment)"
fi
log "config verified: every option in $(basename "$fragment") is =y"

log "building bzImage with make -j2 (log: $blog)"
make -C "$src" O="$build" ARCH=x86_64 -j2 bzImage >>"$blog" 2>&1 ||
  { tail -30 "$blog" >&2; die "kernel build (log: $blog)"; }

tmp=$out.tmp.$$
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$build/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$build/.config" "$tmp/config"
cp "$blog" "$tmp/build.log"
rm -rf "$out"
mv "$tmp" "$out"
# The object dir is only needed to rebuild this exact key, which never happens.
rm -rf "$build"
log "built in $(( $(date +%s) - started )) s: $out/bzImage ($(stat -c %s "$out/bzImage") bytes)"
echo "$out/bzImage"
