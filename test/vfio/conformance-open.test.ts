// The conformance suite's multi-device open (openAll): when one open fails, the devices
// already open are closed before the error propagates, so later tests can open them.
import test from 'ava';
import { MigState } from '../../src/fsm/index.js';
import { VfioDeviceError } from '../../src/vfio/device.js';
import { createSimDevice, type SimDevice } from '../../src/vfio/sim/index.js';
import { openAll } from './conformance.js';

const EBADF = 9;

test('openAll: one failed open closes the devices already opened and rethrows its error', async (t) => {
  const made: SimDevice[] = [];
  let calls = 0;
  const make = async () => {
    if (++calls === 2) throw new Error('open #2 failed (group busy)');
    const d = createSimDevice('sim:size=64KiB');
    made.push(d);
    return d;
  };
  await t.throwsAsync(() => openAll(make, 3), { message: 'open #2 failed (group busy)' });
  t.is(calls, 3);
  t.is(made.length, 2);
  for (const d of made) {
    const e = await t.throwsAsync(() => d.state(), { instanceOf: VfioDeviceError });
    t.is(e!.errno, EBADF, `${d.id} was closed`);
  }
});

test('openAll: all opens succeed, every device is returned open', async (t) => {
  const devs = await openAll(async () => createSimDevice('sim:size=64KiB'), 3);
  try {
    t.is(devs.length, 3);
    t.is(new Set(devs.map((d) => d.id)).size, 3);
    for (const d of devs) t.is(await d.state(), MigState.RUNNING);
  } finally {
    for (const d of devs) await d.close();
  }
});
