// The real mtty driver's migration behaviour, checked with raw ioctls (raw.ts) against
// what the docs state (docs/vfio-migration.md §8, docs/vfio-migration.md §2, §6). The simulator in src/vfio/sim
// must match these; a difference found here is a doc-vs-kernel or sim-vs-kernel finding.
import fs from 'node:fs';
import test from 'ava';
import { laneEnv } from './lane.js';
import {
  State, VFIO_DEVICE_RESET, barRead1, barWrite1, closeAll, errnoOf, getState, migDataSize,
  openViaGroup, precopyInfo, readAll, setState,
} from './raw.js';
import { ioctlSync } from '../../src/native/index.js';

// One device per test, distinct from the other guest test files' devices is not needed:
// files run one at a time. Tests in this file run serially to keep the device map simple.
function withDevice(uuid: string, fn: (device: number) => void): void {
  const g = openViaGroup(uuid);
  try {
    ioctlSync(g.device, VFIO_DEVICE_RESET, 0);
    fn(g.device);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
}

test.serial('PRE_COPY on mtty-2: header first, PRECOPY_INFO 24 then 0, STOP_COPY appends 72 bytes on the same fd', (t) => {
  withDevice(laneEnv().mtty2[0]!, (dev) => {
    t.is(migDataSize(dev), 96n);
    barWrite1(dev, 0, 7, 0x5a);
    barWrite1(dev, 1, 7, 0xa5);
    const fd = setState(dev, State.PRE_COPY);
    t.true(fd >= 0);
    t.deepEqual(precopyInfo(fd), { initial: 24n, dirty: 0n });
    const header = readAll(fd);
    t.is(header.length, 24);
    t.deepEqual(precopyInfo(fd), { initial: 0n, dirty: 0n });
    t.is(errnoOf(() => fs.writeSync(fd, Buffer.alloc(1), 0, 1, null)), 'EBADF', 'write on a saving fd');
    t.is(migDataSize(dev), 96n, 'MIG_DATA_SIZE in PRE_COPY');
    t.is(setState(dev, State.STOP_COPY), -1, 'PRE_COPY -> STOP_COPY keeps the session (no new fd)');
    t.is(errnoOf(() => precopyInfo(fd)), 'EINVAL', 'PRECOPY_INFO outside PRE_COPY*');
    const rest = readAll(fd);
    t.is(rest.length, 72);
    t.is(rest[7], 0x5a, 'port 0 SCR');
    t.is(rest[36 + 7], 0xa5, 'port 1 SCR');
    t.is(errnoOf(() => setState(dev, State.PRE_COPY)), 'EINVAL', 'STOP_COPY -> PRE_COPY is blocked');
    t.is(getState(dev), State.STOP_COPY, 'state unchanged by the invalid SET');
    t.is(setState(dev, State.STOP), -1);
    t.is(errnoOf(() => fs.readSync(fd, Buffer.alloc(8), 0, 8, null)), 'ENODEV', 'read after the session ended');
    fs.closeSync(fd);
  });
});

test.serial('invalid SETs give EINVAL and leave the state alone: ERROR, 8, 99', (t) => {
  withDevice(laneEnv().mtty1[5]!, (dev) => {
    for (const bad of [State.ERROR, 8, 99]) {
      t.is(errnoOf(() => setState(dev, bad)), 'EINVAL', `SET ${bad}`);
      t.is(getState(dev), State.RUNNING);
    }
    t.is(setState(dev, State.RUNNING), -1, 'SET of the current state is a no-op');
  });
});

test.serial('resume: truncated stream fails the exit from RESUMING with EINVAL and stays; the last byte completes it', (t) => {
  const lane = laneEnv();
  let stream: Buffer = Buffer.alloc(0);
  withDevice(lane.mtty1[4]!, (src) => {
    barWrite1(src, 0, 7, 0x3c);
    const fd = setState(src, State.STOP_COPY);
    stream = readAll(fd);
    fs.closeSync(fd);
  });
  t.is(stream.length, 60);
  withDevice(lane.mtty1[5]!, (dst) => {
    barWrite1(dst, 0, 7, 0x00);
    const fd = setState(dst, State.RESUMING);
    t.is(setState(dst, State.RESUMING), -1, 'SET RESUMING while RESUMING: no new fd');
    t.is(fs.writeSync(fd, stream, 0, 59, null), 59);
    t.is(errnoOf(() => setState(dst, State.RUNNING)), 'EINVAL');
    t.is(getState(dst), State.RESUMING, 'still RESUMING after the failed exit');
    t.is(errnoOf(() => fs.writeSync(fd, Buffer.alloc(2), 0, 2, null)), 'ENOMEM', 'writing past 60 bytes');
    t.is(fs.writeSync(fd, stream, 59, 1, null), 1);
    t.is(setState(dst, State.RUNNING), -1);
    t.is(barRead1(dst, 0, 7), 0x3c, 'state loaded');
    fs.closeSync(fd);
  });
});

test.serial('resume: a corrupted header makes write() fail with EFAULT; VFIO_DEVICE_RESET returns the device to RUNNING, UART untouched', (t) => {
  withDevice(laneEnv().mtty1[5]!, (dst) => {
    barWrite1(dst, 0, 7, 0x77);
    const fd = setState(dst, State.RESUMING);
    const bad = Buffer.alloc(60);
    bad.write('not mtty', 0);
    t.is(errnoOf(() => fs.writeSync(fd, bad, 0, 60, null)), 'EFAULT');
    t.is(getState(dst), State.RESUMING);
    ioctlSync(dst, VFIO_DEVICE_RESET, 0);
    t.is(getState(dst), State.RUNNING);
    t.is(errnoOf(() => fs.writeSync(fd, bad, 0, 1, null)), 'ENODEV', 'the reset ended the session');
    fs.closeSync(fd);
    t.is(barRead1(dst, 0, 7), 0x77, 'reset does not touch UART registers');
    // Usable afterwards: a full save works.
    const s = setState(dst, State.STOP_COPY);
    t.is(readAll(s).length, 60);
    fs.closeSync(s);
  });
});

test.serial('migration state survives closing and reopening the device (no open_device hook)', (t) => {
  const uuid = laneEnv().mtty1[5]!;
  withDevice(uuid, (dev) => {
    t.is(setState(dev, State.STOP), -1);
  });
  const g = openViaGroup(uuid);
  try {
    t.is(getState(g.device), State.STOP);
    ioctlSync(g.device, VFIO_DEVICE_RESET, 0);
    t.is(getState(g.device), State.RUNNING);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
});
