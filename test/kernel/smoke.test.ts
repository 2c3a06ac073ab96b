// Guest-only smoke test of the real kernel's VFIO + mtty, using nothing but the project's
// native ioctl helper and raw struct layouts (raw.ts): both open paths, the migration
// capability, and one STOP_COPY -> RESUMING round trip with UART state read back.
import fs from 'node:fs';
import test from 'ava';
import { laneEnv } from './lane.js';
import {
  MTTY_MAGIC, State, VFIO_DEVICE_GET_INFO, VFIO_DEVICE_RESET, barRead1, barWrite1, cdevOf, closeAll,
  deviceInfo, getState, groupOf, migrationFlags, openViaCdev, openViaGroup, readAll, setState,
} from './raw.js';
import { ioctlSync } from '../../src/native/index.js';
import { SysError } from '../../src/errors.js';

test('mtty mdevs, their groups and cdevs, /dev/vfio/vfio and /dev/iommu exist', (t) => {
  const lane = laneEnv();
  t.is(lane.mtty1.length, 6);
  t.is(lane.mtty2.length, 4);
  for (const uuid of [...lane.mtty1, ...lane.mtty2]) {
    t.true(fs.existsSync(`/sys/bus/mdev/devices/${uuid}`), uuid);
    t.true(fs.statSync(`/dev/vfio/${groupOf(uuid)}`).isCharacterDevice(), `group of ${uuid}`);
    t.true(fs.statSync(cdevOf(uuid)).isCharacterDevice(), `cdev of ${uuid}`);
  }
  t.true(fs.statSync('/dev/vfio/vfio').isCharacterDevice());
  t.true(fs.statSync('/dev/iommu').isCharacterDevice());
  const types = '/sys/class/mdev_bus/mtty/mdev_supported_types';
  t.is(fs.readFileSync(`${types}/mtty-1/device_api`, 'utf8').trim(), 'vfio-pci');
});

test('container/group path: API version 0, TYPE1v2, device fd by UUID, migration flags 0x7', (t) => {
  const uuid = laneEnv().mtty1[0]!;
  const g = openViaGroup(uuid);
  try {
    t.is(g.apiVersion, 0);
    t.true(g.type1v2 > 0, 'CHECK_EXTENSION(TYPE1v2) > 0');
    t.is(g.groupFlags & 0x1, 0x1, 'group VIABLE');
    t.true(g.device >= 0);
    const info = deviceInfo(g.device);
    t.is(info.flags & 0x2, 0x2, 'VFIO_DEVICE_FLAGS_PCI');
    t.is(info.numRegions, 9);
    t.is(info.numIrqs, 5);
    t.is(migrationFlags(g.device), 0x7n);
  } finally {
    closeAll(g.container, g.group, g.device);
  }
});

test('cdev + iommufd path: ioctls fail with EINVAL before BIND; BIND, IOAS_ALLOC, ATTACH; flags 0x7', (t) => {
  const uuid = laneEnv().mtty1[1]!;
  const unbound = fs.openSync(cdevOf(uuid), 'r+');
  const info = Buffer.alloc(24);
  info.writeUInt32LE(24, 0);
  const e = t.throws(() => ioctlSync(unbound, VFIO_DEVICE_GET_INFO, info), { instanceOf: SysError });
  t.is(e?.code, 'EINVAL');
  fs.closeSync(unbound);

  const c = openViaCdev(uuid);
  try {
    t.true(c.ioasId > 0, `ioas id ${c.ioasId}`);
    t.is(c.attachedPt, c.ioasId, 'attached to the IOAS we passed');
    t.is(deviceInfo(c.device).numRegions, 9);
    t.is(migrationFlags(c.device), 0x7n);
    t.is(setState(c.device, State.RUNNING), -1);
    t.is(getState(c.device), State.RUNNING);
  } finally {
    closeAll(c.iommufd, c.device);
  }
});

test('STOP_COPY gives a data_fd with 60 bytes carrying mtty magic and UART state; RESUMING loads it on another device', (t) => {
  const lane = laneEnv();
  const src = openViaGroup(lane.mtty1[2]!);
  const dst = openViaGroup(lane.mtty1[3]!);
  try {
    // The migration state survives close/reopen on mtty: start from RUNNING.
    ioctlSync(src.device, VFIO_DEVICE_RESET, 0);
    ioctlSync(dst.device, VFIO_DEVICE_RESET, 0);
    t.is(getState(src.device), State.RUNNING);
    // UART registers survive reset and reopen (other guest tests ran first): clear the FIFO.
    barWrite1(src.device, 0, 2, 0x07); // FCR: enable + clear RX/TX
    barWrite1(src.device, 0, 3, 0x1b); // LCR, DLAB clear
    barWrite1(src.device, 0, 7, 0x5a); // SCR
    for (const ch of Buffer.from('hi')) barWrite1(src.device, 0, 0, ch); // THR -> RX FIFO

    const fd = setState(src.device, State.STOP_COPY);
    t.true(fd >= 0, `data_fd ${fd}`);
    const stream = readAll(fd);
    fs.closeSync(fd);
    t.is(stream.length, 60);
    t.deepEqual(stream.subarray(0, 8), MTTY_MAGIC);
    t.is(stream.readUInt32LE(8), 1, 'major');
    t.is(stream.readUInt32LE(16), 1, 'nr_ports');
    t.is(stream[24 + 7], 0x5a, 'SCR in the stream');
    t.is(stream[24 + 26], 2, 'FIFO count in the stream');
    t.is(setState(src.device, State.RUNNING), -1);

    barWrite1(dst.device, 0, 7, 0x00);
    const rfd = setState(dst.device, State.RESUMING);
    t.true(rfd >= 0, `resume fd ${rfd}`);
    t.is(fs.writeSync(rfd, stream, 0, stream.length, null), 60);
    fs.closeSync(rfd); // closing early is harmless: the driver holds its own reference
    t.is(setState(dst.device, State.RUNNING), -1);
    t.is(barRead1(dst.device, 0, 7), 0x5a, 'SCR restored');
    t.is(barRead1(dst.device, 0, 3), 0x1b, 'LCR restored');
    t.is(barRead1(dst.device, 0, 5) & 1, 1, 'LSR.DR: RX data present');
    t.is(String.fromCharCode(barRead1(dst.device, 0, 0), barRead1(dst.device, 0, 0)), 'hi');
    t.is(barRead1(dst.device, 0, 5) & 1, 0, 'FIFO drained');
  } finally {
    closeAll(src.container, src.group, src.device);
    closeAll(dst.container, dst.group, dst.device);
  }
});
