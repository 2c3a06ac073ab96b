// Opens the devices named on the command line (kernel VFIO or simulated) through the
// device layer's opener, and closes them again.
import type { MigrationDevice } from '../vfio/device.js';
import { openDevices as openVfioDevices } from '../vfio/open.js';

export function openDevices(specs: readonly string[]): Promise<MigrationDevice[]> {
  return openVfioDevices(specs);
}

export async function closeDevices(devices: readonly MigrationDevice[]): Promise<void> {
  await Promise.all(devices.map((d) => d.close().catch(() => {})));
}
