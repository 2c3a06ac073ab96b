// The device conformance suite on the simulator, once per migration flag set the spec
// allows (0x1, 0x3, 0x5, 0x7), so every arc and combination arc of each is exercised.
import test from 'ava';
import { MigState } from '../../src/fsm/index.js';
import { createSimDevice } from '../../src/vfio/sim/index.js';
import { runConformance } from './conformance.js';

const EPIPE = 32;

for (const flags of [7, 5, 3, 1]) {
  // 200 KiB: three full 64 KiB blocks and a partial one; 100 KiB of initial precopy data.
  const spec = `sim:size=200KiB,precopy=100KiB,flags=${flags}`;
  runConformance(test, async () => createSimDevice(spec), {
    name: `sim flags=${flags}`,
    flags,
    endedRead: ['eof'],
    endedWrite: [EPIPE],
    precopyEmpty: ['zero'],
    exactDataSize: true,
    distinctDevices: true,
    errorDevice: { make: async () => createSimDevice(`${spec},fail=error@stop-copy`), target: MigState.STOP_COPY },
  });
}
