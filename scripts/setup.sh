#!/usr/bin/env bash
# Installs what migbridge needs when it is missing, then builds it. Idempotent.
#   scripts/setup.sh          runtime needs: liburing-dev, npm deps, native + TypeScript build
#   scripts/setup.sh --test   also what the tests need: QEMU 10 and libvirt 11 (bookworm-backports), QEMU 7.2
#                             (unpacked side by side), and the kernel lane's build tools
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing_pkgs() { local p; for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done; }
apt_updated=0
apt_install() {
  [ $# -gt 0 ] || return 0
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# shellcheck disable=SC2046
apt_install $(missing_pkgs liburing-dev pkg-config python3 make g++)

if [ $want_test = 1 ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
  fi
  # shellcheck disable=SC2046
  apt_install $(missing_pkgs linux-source-6.12 busybox-static flex bison libelf-dev libssl-dev bc cpio xz-utils time)
  if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10\.'; then
    if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
  fi
  # libvirt 11 (bookworm-backports) for the real-libvirt save image tests; lzop and zstd are
  # the compressors virsh save --image-format uses that are not installed by default.
  # shellcheck disable=SC2046
  apt_install $(missing_pkgs lzop zstd gzip bzip2 xz-utils)
  if ! virsh --version 2>/dev/null | grep -q '^11\.'; then
    if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu >/dev/null
  fi
  # QEMU 7.2 (bookworm) unpacked beside it, for the real-QEMU stream tests; cached, idempotent.
  bash scripts/qemu72.sh >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f build/Release/migbridge_uring.node ] || [ -n "$(find native binding.gyp -newer build/Release/migbridge_uring.node 2>/dev/null | head -1)" ]; then
  npx --no-install node-gyp rebuild --loglevel=error >/dev/null
fi
npx --no-install tsc -p tsconfig.json
