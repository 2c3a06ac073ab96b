#!/usr/bin/env bash
# Runs inside the kernel-lane guest, chrooted into the host's read-only root: creates the
# mtty mdevs and runs the guest tests (dist/test/kernel) with the kernel backend.
# Its exit status is the lane's. Usage (by init): guest.sh <project dir>
set -uo pipefail
project=$1
out=${MIGBRIDGE_LANE_OUT:?}
types=/sys/class/mdev_bus/mtty/mdev_supported_types

fail() { echo "kernel-lane guest: FAILED: $*"; exit 91; }

[ -d "$types/mtty-1" ] || fail "no mtty parent in $types (kernel lacks SAMPLE_VFIO_MDEV_MTTY)"
# Fixed UUIDs, so a failing test names the same device every run.
mtty1=() mtty2=()
for i in 1 2 3 4 5 6; do mtty1+=("6d747479-0001-4000-8000-00000000000$i"); done
for i in 1 2 3 4; do mtty2+=("6d747479-0002-4000-8000-00000000000$i"); done
for u in "${mtty1[@]}"; do echo "$u" > "$types/mtty-1/create" || fail "create mtty-1 $u"; done
for u in "${mtty2[@]}"; do echo "$u" > "$types/mtty-2/create" || fail "create mtty-2 $u"; done
for u in "${mtty1[@]}" "${mtty2[@]}"; do
  [ -e "/sys/bus/mdev/devices/$u/iommu_group" ] || fail "mdev $u has no iommu_group"
done

export MIGBRIDGE_KERNEL_LANE=1
MIGBRIDGE_MTTY1_UUIDS=$(IFS=,; echo "${mtty1[*]}")
MIGBRIDGE_MTTY2_UUIDS=$(IFS=,; echo "${mtty2[*]}")
export MIGBRIDGE_MTTY1_UUIDS MIGBRIDGE_MTTY2_UUIDS
# ava's defaults assume a colour terminal; the console is a plain serial line.
export FORCE_COLOR=0 NO_COLOR=1

cd "$project" || fail "cd $project"
echo "kernel-lane guest: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource), available: $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
echo "kernel-lane guest: $(uname -r), mdevs ready after $(cut -d' ' -f1 /proc/uptime) s; running ava"
# Tells run.sh the boot is over: a QEMU that dies after this is a test failure, not a boot to retry.
date +%s > "$out/started"; sync
start=$EPOCHREALTIME
args=()
[ -s "$out/ava-args" ] && mapfile -t args < "$out/ava-args"
node node_modules/ava/entrypoints/cli.mjs --config test/kernel-lane/ava.config.mjs "${args[@]}"
status=$?
echo "kernel-lane guest: ava exited $status after $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $start}") s"
exit $status
