// Save two simulated devices into a QEMU migration stream, then restore them into two
// fresh devices and check that each holds its source's state.
//   node dist/examples/save-restore.js [stream-file]
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { openDevices, openSink, qemu, restore, save, vfio } from '../src/index.js';

const file = process.argv[2] ?? path.join(tmpdir(), `migbridge-example-${process.pid}.mig`);
const sources = await openDevices(['sim:id=src0,size=16MiB,seed=1,precopy=4MiB', 'sim:id=src1,size=16MiB,seed=2']);
const saved = await save({ devices: sources, sink: await openSink({ file }), precopy: true });
console.log(`saved ${saved.totalBytes} bytes from ${saved.devices.length} devices to ${file}; downtime ${saved.downtime.actualMs.toFixed(1)} ms`);

const targets = await openDevices(['sim:id=dst0,size=16MiB', 'sim:id=dst1,size=16MiB']);
const restored = await restore({ events: qemu.readStreamFile(file), devices: targets });
restored.devices.forEach((d, i) => {
  const same = (targets[i] as vfio.SimDevice).stateDigest() === (sources[i] as vfio.SimDevice).stateDigest();
  console.log(`${d.id} <- ${d.idstr}: ${d.bytes} bytes, state ${same ? 'matches' : 'DIFFERS from'} ${sources[i]!.id}`);
});
await Promise.all([...sources, ...targets].map((d) => d.close()));
console.log(`left behind: ${file} (${saved.totalBytes} bytes of device state); delete it when done`);
