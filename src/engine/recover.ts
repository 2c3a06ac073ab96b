// After a failed save, every source device goes back to RUNNING: a SET RUNNING from
// wherever it stopped (the kernel walks the path), and VFIO_DEVICE_RESET when that fails
// or the device is in ERROR (QEMU's vfio_migration_set_state recovery does the same).
import { MigState, stateName } from '../fsm/index.js';
import type { MigrationDevice } from '../vfio/device.js';

export interface RecoveryStep {
  readonly device: string;
  readonly from: string;
  readonly action: 'none' | 'set-running' | 'reset';
  readonly ok: boolean;
  readonly error?: string;
}

export async function recoverDevice(dev: MigrationDevice): Promise<RecoveryStep> {
  let s: MigState | undefined;
  try {
    s = await dev.state();
  } catch {
    // state unreadable: reset
  }
  if (s === MigState.RUNNING) return { device: dev.id, from: stateName(s), action: 'none', ok: true };
  if (s !== undefined && s !== MigState.ERROR) {
    try {
      const fd = await dev.setState(MigState.RUNNING);
      await fd?.close();
      return { device: dev.id, from: stateName(s), action: 'set-running', ok: true };
    } catch {
      // fall through to reset
    }
  }
  return resetDevice(dev, s);
}

/** Recovers every device in parallel; returns what was done to each that was not already RUNNING. */
export async function recoverSources(devices: readonly MigrationDevice[]): Promise<RecoveryStep[]> {
  const steps = await Promise.all(devices.map(recoverDevice));
  return steps.filter((s) => s.action !== 'none');
}

/** VFIO_DEVICE_RESET: the only safe way to abandon a RESUMING session (docs/vfio-migration.md §4). */
export async function resetDevice(dev: MigrationDevice, known?: MigState): Promise<RecoveryStep> {
  let from = known === undefined ? 'unknown' : stateName(known);
  if (known === undefined) {
    try {
      from = stateName(await dev.state());
    } catch {
      // unreadable state: reset anyway
    }
  }
  try {
    await dev.reset();
    return { device: dev.id, from, action: 'reset', ok: true };
  } catch (e) {
    return { device: dev.id, from, action: 'reset', ok: false, error: (e as Error).message };
  }
}
