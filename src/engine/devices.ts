// Opens the devices named on the command line: `sim:...` specs in-process, everything
// else through the kernel backend's opener.
import { UsageError } from '../errors.js';
import type { MigrationDevice } from '../vfio/device.js';
import { createSimDevice } from '../vfio/sim/index.js';

export async function openDevices(specs: readonly string[]): Promise<MigrationDevice[]> {
  const opened: MigrationDevice[] = [];
  try {
    for (const spec of specs) opened.push(await openOne(spec));
  } catch (e) {
    await Promise.all(opened.map((d) => d.close().catch(() => {})));
    throw e;
  }
  return opened;
}

async function openOne(spec: string): Promise<MigrationDevice> {
  if (spec === 'sim' || spec.startsWith('sim:')) return createSimDevice(spec);
  throw new UsageError(`cannot open device ${JSON.stringify(spec)}: only sim: specs are supported so far`);
}

export async function closeDevices(devices: readonly MigrationDevice[]): Promise<void> {
  await Promise.all(devices.map((d) => d.close().catch(() => {})));
}
