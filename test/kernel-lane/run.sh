#!/usr/bin/env bash
# The real-kernel lane (`npm run test:kernel`): builds the project, builds or reuses the guest
# kernel and initramfs, boots them under QEMU TCG with the host's root shared read-only over
# 9p, and runs the guest tests (dist/test/kernel) against the kernel's mtty sample driver.
# Exits with the tests' exit status; a guest that hangs or panics fails within
# MIGBRIDGE_LANE_TIMEOUT seconds (default 1500: a bound on a hang, far above the ~6 min a
# run takes on a busy 2-core machine). The console log is always kept.
#
#   bash test/kernel-lane/run.sh [ava args, e.g. dist/test/kernel/smoke.test.js]
set -euo pipefail
cd "$(dirname "$0")/../.."
project=$PWD
lane_start=$(date +%s)
timeout_s=${MIGBRIDGE_LANE_TIMEOUT:-1500}

say() { echo "kernel-lane: $*"; }
die() { echo "kernel-lane: FAILED: $*" >&2; exit 1; }
case "$project" in *[[:space:]]*) die "project path must not contain spaces: $project" ;; esac

# The guest sees the tree read-only, so dist/ and the native addon are built here first.
bash scripts/setup.sh --test
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (install: bash scripts/setup.sh --test)"
qemu-system-x86_64 -device help 2>/dev/null | grep -q virtio-9p ||
  die "this QEMU lacks virtio-9p (install Debian's qemu-system-x86: bash scripts/setup.sh --test)"

t0=$(date +%s)
kernel=$(bash test/kernel-lane/build-kernel.sh)
initrd=$(bash test/kernel-lane/build-initramfs.sh)
build_s=$(( $(date +%s) - t0 ))

work=$(mktemp -d /tmp/migbridge-kernel-lane.XXXXXX)
share=$work/share
mkdir -p "$share/figures"
echo "$project" > "$share/params"
if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi > "$share/ava-args"

say "kernel $kernel (ready in ${build_s} s)"

# One boot of the guest; QEMU's exit status in $qemu_rc, its console in $console.
boot() {
  console=$work/console-$1.log
  say "booting QEMU TCG (attempt $1, timeout ${timeout_s} s); console log: $console"
  boot_start=$(date +%s)
  set +e
  # stdin from /dev/null: -nographic would otherwise put a terminal in raw mode.
  # clocksource=hpet: under a loaded TCG host the guest's TSC calibration can be off by a
  # factor of 3 (measured), which would scale every timing figure; HPET is QEMU's clock.
  timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -accel tcg -cpu max -m 2G -smp 2 -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic clocksource=hpet" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$project,mount_tag=project,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$share,mount_tag=lane,security_model=none" \
    </dev/null 2>&1 | tee "$console"
  qemu_rc=${PIPESTATUS[0]}
  set -e
  boot_s=$(( $(date +%s) - boot_start ))
}

# A boot that dies before the guest says it started (guest.sh writes share/started just
# before ava) is retried, at most twice, each retry reported. Seen on a fresh machine: the
# outer TCG QEMU 10.0 aborting during boot ("iotlb_to_section: Assertion 'section_index <
# d->map.sections_nb' failed", exit 134), a QEMU bug under MTTCG, not ours. A guest that
# started and then failed or hung is never retried: that is a test result.
max_boots=3
for attempt in $(seq 1 $max_boots); do
  rm -f "$share/status" "$share/started" "$share/uptime"
  boot "$attempt"
  if [ -f "$share/status" ] || [ -f "$share/started" ] || [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then break; fi
  if [ "$attempt" -lt $max_boots ]; then
    say "RETRY: boot attempt $attempt died before the guest started (QEMU exit $qemu_rc after ${boot_s} s; last console lines below); booting again"
    tail -n 5 "$console" | sed 's/^/  | /'
  fi
done

if compgen -G "$share/figures/*.txt" >/dev/null; then
  say "figures reported by the guest tests:"
  for f in "$share"/figures/*.txt; do sed 's/^/  /' "$f"; done
fi
summary=$(grep -aE '^ *[0-9]+ (tests? (passed|failed)|known failure|uncaught exception|unhandled rejection)' "$console" | tr -d '\r' | sed 's/^ *//' | paste -sd ',' - | sed 's/,/, /g' || true)

if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  die "guest did not finish within ${timeout_s} s (hang?); console log: $console"
fi
if [ ! -f "$share/status" ]; then
  die "guest ended without reporting a status (QEMU exit $qemu_rc; kernel panic or crash?); console log: $console"
fi
status=$(cat "$share/status")
# The figures are only as good as the guest's clock (clocksource=hpet, QEMU's own clock):
# a guest that counted more seconds than the host saw has a skewed clock.
guest_s=$(cut -d. -f1 "$share/uptime" 2>/dev/null || echo 0)
if [ "$guest_s" -gt $(( boot_s + 2 )) ]; then
  say "WARNING: guest clock skewed (guest uptime ${guest_s} s > QEMU run ${boot_s} s): timing figures are not trustworthy"
fi
say "summary: ${summary:-no ava summary found}; guest status $status"
say "timings: kernel+initramfs ${build_s} s, QEMU run ${boot_s} s, lane total $(( $(date +%s) - lane_start )) s"
say "console log: $console"
exit "$status"
