// A source and a destination QEMU for a live migration test: the scenario's machine and
// devices on both (the machine type may be overridden, e.g. pc-i440fx-7.2 on QEMU 10), the
// source running its guest (or paused), the destination waiting with -incoming defer, each
// optionally inside a network namespace. Each QEMU has a spare monitor for the migbridge
// under test (the test keeps the first one). Holding one QEMU slot while waiting for a
// second could deadlock two such tests: the pair lock lets one pair-taker wait at a time.
import type { ExecutionContext } from 'ava';
import { acquireLock } from './qemu-lock.js';
import { copyImages, readCounter, vmArgs, waitSerial } from './qemu.js';
import type { QemuVersion } from './qemu-binary.js';
import { SCENARIOS, type ScenarioName } from './qemu-scenarios.js';
import { QemuVm } from './qemu-vm.js';

export async function pairLock(t: ExecutionContext): Promise<void> {
  const release = await acquireLock('/tmp/migbridge-qemu-slots.pair.lock', 10 * 60_000);
  t.teardown(release);
}

export interface PairSide {
  version: QemuVersion;
  /** Replaces the scenario's -M machine type. */
  machine?: string;
  /** Runs QEMU under this prefix (e.g. a namespace's `ip netns exec NS`). */
  wrapper?: string[];
  /** More QEMU arguments (e.g. a different -m to make the load fail). */
  extraArgs?: string[];
}

export interface Pair {
  source: QemuVm;
  destination: QemuVm;
  /** The guest's counter on the source just before the migration (running scenarios). */
  counterBefore: number | null;
}

function argsFor(name: ScenarioName, side: PairSide): string[] {
  const args = vmArgs(SCENARIOS[name]);
  const m = args.indexOf('-M');
  if (side.machine !== undefined && m >= 0) args[m + 1] = side.machine;
  return [...args, ...(side.extraArgs ?? [])];
}

export async function startPair(t: ExecutionContext, name: ScenarioName, source: PairSide, destination: PairSide): Promise<Pair> {
  await pairLock(t);
  const s = SCENARIOS[name];
  const teardown = t.teardown.bind(t);
  const src = await QemuVm.start({
    version: source.version, name: `${name} source (${source.version})`, args: [...argsFor(name, source), ...(s.prepare === 'paused' ? ['-S'] : [])],
    beforeStart: copyImages(s), teardown, spareQmp: true, ...(source.wrapper ? { wrapper: source.wrapper } : {}),
  });
  const dst = await QemuVm.start({
    version: destination.version, name: `${name} destination (${destination.version})`, args: argsFor(name, destination), incomingDefer: true,
    beforeStart: copyImages(s), teardown, spareQmp: true, ...(destination.wrapper ? { wrapper: destination.wrapper } : {}),
  });
  let counterBefore: number | null = null;
  if (s.prepare === 'run') {
    await waitSerial(src, 2, 60_000);
    counterBefore = await readCounter(src);
  }
  return { source: src, destination: dst, counterBefore };
}
