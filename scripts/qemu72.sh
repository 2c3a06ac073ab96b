#!/usr/bin/env bash
# Fetches QEMU 7.2 (Debian bookworm's qemu-system-x86) and unpacks it beside the system QEMU
# (10.0 from bookworm-backports), so the tests can generate and load 7.2 streams.
#
#   scripts/qemu72.sh          ensure it is unpacked; print the unpacked tree's directory
#
# Idempotent and cached by package version in /var/cache/migbridge/qemu-7.2/<version>/:
#   root/           the .debs unpacked with dpkg -x: the binary (qemu-system-x86), its modules
#                   (qemu-system-common: Debian builds TCG itself as the module
#                   accel-tcg-x86_64.so, and a module only loads into its own build), its own
#                   firmware (qemu-system-data, bookworm's seabios and ipxe-qemu), all found
#                   through the binary's relocatable dirs root/usr/share/{qemu,seabios},
#                   root/usr/lib/ipxe/qemu and root/usr/lib/x86_64-linux-gnu/qemu
#   manifest.txt    the package versions unpacked
#   .complete-v2    written last; its presence means the tree is usable (v2: with modules)
# Override the version with MIGBRIDGE_QEMU72_VERSION=1:7.2+dfsg-... (default: the newest 7.2
# build apt knows about from bookworm / bookworm-security).
set -euo pipefail
cache_root=${MIGBRIDGE_CACHE:-/var/cache/migbridge}/qemu-7.2

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
die() { echo "qemu72.sh: $*" >&2; exit 1; }

# Newest version of package $1 whose apt origin matches $2 (an extended regex over the
# madison line, e.g. to exclude backports), printed without anything else.
newest_version() {
  apt-cache madison "$1" 2>/dev/null | grep -E "$2" | awk -F'|' '{gsub(/ /, "", $2); print $2}' | head -1
}

lists_updated=0
need_lists() {
  if [ $lists_updated = 0 ] && [ -z "$(apt-cache madison qemu-system-x86 2>/dev/null | grep -E '\| 1:7\.2')" ]; then
    as_root apt-get update -qq
  fi
  lists_updated=1
}

version="${MIGBRIDGE_QEMU72_VERSION:-}"
if [ -z "$version" ]; then
  # Fast path: an already complete tree of any 7.2 build needs no apt at all.
  for d in "$cache_root"/*/; do
    if [ -f "$d.complete-v2" ] && "${d}root/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
      echo "${d%/}"; exit 0
    fi
  done
  need_lists
  version="$(newest_version qemu-system-x86 '\| 1:7\.2[.+]')"
  [ -n "$version" ] || die "apt knows no qemu-system-x86 1:7.2 build; is bookworm in the apt sources? (try: apt-get update; apt-cache madison qemu-system-x86)"
fi
key="${version//:/_}"   # no ':' in the path: it would split LD_LIBRARY_PATH-style lists
dest="$cache_root/$key"
if [ -f "$dest/.complete-v2" ] && "$dest/root/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
  echo "$dest"; exit 0
fi

need_lists
# qemu-system-data is arch:all, so it has no binNMU suffix (+bN).
data_version="${version%+b[0-9]*}"
seabios_version="$(newest_version seabios '\| (http|file)[^|]*bookworm(-security|-updates)?/')"
ipxe_version="$(newest_version ipxe-qemu '\| (http|file)[^|]*bookworm(-security|-updates)?/')"
[ -n "$seabios_version" ] || die "no bookworm seabios in apt (apt-cache madison seabios)"
[ -n "$ipxe_version" ] || die "no bookworm ipxe-qemu in apt (apt-cache madison ipxe-qemu)"

work="$(mktemp -d "${TMPDIR:-/tmp}/migbridge-qemu72.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt's _apt user writes the downloads
( cd "$work" && apt-get download -q -o APT::Sandbox::User=root \
    "qemu-system-x86=$version" "qemu-system-common=$version" "qemu-system-data=$data_version" \
    "seabios=$seabios_version" "ipxe-qemu=$ipxe_version" ) >&2 \
  || die "apt-get download failed for qemu-system-x86=$version (see above)"
mkdir -p "$work/root"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done

bin="$work/root/usr/bin/qemu-system-x86_64"
[ -x "$bin" ] || die "the qemu-system-x86 package has no usr/bin/qemu-system-x86_64"
tcg="$work/root/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"
[ -f "$tcg" ] || die "the qemu-system-common package has no TCG module ($tcg)"
missing="$(ldd "$bin" "$tcg" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')"
[ -z "$missing" ] || die "QEMU 7.2 needs shared libraries this system lacks: $missing (install bookworm's packages providing them)"
"$bin" --version | grep -q 'version 7\.2' || die "unpacked binary is not QEMU 7.2: $("$bin" --version | head -1)"

{
  echo "qemu-system-x86 $version"
  echo "qemu-system-common $version"
  echo "qemu-system-data $data_version"
  echo "seabios $seabios_version"
  echo "ipxe-qemu $ipxe_version"
  "$bin" --version | head -1
} > "$work/manifest.txt"

# Publish atomically: a concurrent run either sees nothing or a complete tree.
mkdir -p "$cache_root"
staged="$cache_root/.staging-$$"
rm -rf "$staged"
mkdir -p "$staged"
mv "$work/root" "$work/manifest.txt" "$staged/"
touch "$staged/.complete-v2"
if [ -f "$dest/.complete-v2" ]; then rm -rf "$staged"; echo "$dest"; exit 0; fi   # a concurrent run won
rm -rf "$dest"
mv "$staged" "$dest" 2>/dev/null || { rm -rf "$staged"; [ -f "$dest/.complete-v2" ] || die "could not publish $dest"; }
echo "$dest"
