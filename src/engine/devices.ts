// Opens the devices named on the command line (kernel VFIO or simulated) through the
// device layer's opener, closes them again, and describes them (`migbridge devices`).
import { MigbridgeError, UsageError } from '../errors.js';
import { flagsName, stateName } from '../fsm/index.js';
import type { MigrationDevice } from '../vfio/device.js';
import { listHostDevices, openDevice, openDevices as openVfioDevices } from '../vfio/open.js';

export function openDevices(specs: readonly string[]): Promise<MigrationDevice[]> {
  return openVfioDevices(specs);
}

export async function closeDevices(devices: readonly MigrationDevice[]): Promise<void> {
  await Promise.all(devices.map((d) => d.close().catch(() => {})));
}

/** One device's migration facts, or why they could not be read. */
export interface DeviceDescription {
  spec: string;
  id?: string;
  kind?: string;
  flags?: number;
  flagsName?: string;
  state?: string;
  stopCopyBytes?: bigint;
  error?: { code: string; errno?: number; message: string };
}

/**
 * Opens `spec` and reads its migration flags, state and stop-copy size, then closes it. A
 * device that fails is described by its error (a bad spec is a UsageError and throws).
 */
export async function describeDevice(spec: string): Promise<DeviceDescription> {
  let dev: MigrationDevice | undefined;
  try {
    dev = await openDevice(spec);
    const flags = await dev.migrationFlags();
    const row: DeviceDescription = { spec, id: dev.id, kind: dev.kind, flags, flagsName: flagsName(flags) };
    row.state = stateName(await dev.state());
    row.stopCopyBytes = await dev.stopCopySize();
    return row;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const err = e instanceof MigbridgeError ? { code: e.code, ...(e.errno !== undefined ? { errno: e.errno } : {}), message: e.message } : { code: 'ERROR', message: String(e) };
    return { spec, ...(dev ? { id: dev.id, kind: dev.kind } : {}), error: err };
  } finally {
    await dev?.close().catch(() => undefined);
  }
}

/** Describes each of `specs` in turn (one device open at a time); without specs, every VFIO migration device of the host. */
export async function describeDevices(specs?: readonly string[]): Promise<DeviceDescription[]> {
  const rows: DeviceDescription[] = [];
  for (const s of specs ?? listHostDevices()) rows.push(await describeDevice(s));
  return rows;
}
