// The device conformance suite (test/vfio/conformance.ts), unchanged, against the real
// kernel's mtty driver: once through the container/group path on mtty-1 (60-byte
// stream) and once through cdev + iommufd on mtty-2 (96-byte stream). The options state
// what mtty does where the spec leaves a choice (docs/vfio-migration.md §8.5): an ended session gives
// ENODEV on read, ENODEV or ENOMEM on write (its size check runs first), and a temporary
// end in PRE_COPY is read() == 0. mtty cannot be driven into ERROR, so no errorDevice.
import test from 'ava';
import { openDevice } from '../../src/vfio/open.js';
import { runConformance } from '../vfio/conformance.js';
import { laneEnv } from './lane.js';

const ENOMEM = 12;
const ENODEV = 19;

/** Hands out the lane's devices round-robin, so setStates gets distinct ones. */
function rotate(prefix: string, pick: () => readonly string[]): () => Promise<ReturnType<typeof openDevice> extends Promise<infer D> ? D : never> {
  let next = 0;
  return async () => {
    const uuids = pick();
    const uuid = uuids[next++ % uuids.length]!;
    return openDevice(`${prefix}${uuid}`);
  };
}

const mttyOptions = {
  flags: 0x7,
  endedRead: [ENODEV],
  endedWrite: [ENODEV, ENOMEM],
  precopyEmpty: ['zero'],
  exactDataSize: true,
  distinctDevices: true,
} as const;

runConformance(test, rotate('mdev:', () => laneEnv().mtty1), { ...mttyOptions, name: 'mtty-1 group', streamBytes: 60 });
runConformance(test, rotate('cdev:mdev:', () => laneEnv().mtty2), { ...mttyOptions, name: 'mtty-2 cdev', streamBytes: 96 });
