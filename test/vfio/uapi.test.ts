// Byte layouts and request numbers of src/vfio/uapi.ts checked against the numbers in
// docs/vfio-migration.md (§ given per test), which came from compiling the 6.12 headers.
import test from 'ava';
import * as u from '../../src/vfio/uapi.js';

test('§0 ioctl request numbers', (t) => {
  const expected: Record<keyof typeof u.Ioctl, number> = {
    GET_API_VERSION: 0x3b64,
    CHECK_EXTENSION: 0x3b65,
    SET_IOMMU: 0x3b66,
    GROUP_GET_STATUS: 0x3b67,
    GROUP_SET_CONTAINER: 0x3b68,
    GROUP_UNSET_CONTAINER: 0x3b69,
    GROUP_GET_DEVICE_FD: 0x3b6a,
    DEVICE_GET_INFO: 0x3b6b,
    DEVICE_GET_REGION_INFO: 0x3b6c,
    DEVICE_GET_IRQ_INFO: 0x3b6d,
    DEVICE_SET_IRQS: 0x3b6e,
    DEVICE_RESET: 0x3b6f,
    DEVICE_FEATURE: 0x3b75,
    DEVICE_BIND_IOMMUFD: 0x3b76,
    DEVICE_ATTACH_IOMMUFD_PT: 0x3b77,
    DEVICE_DETACH_IOMMUFD_PT: 0x3b78,
    MIG_GET_PRECOPY_INFO: 0x3b79,
    IOMMU_DESTROY: 0x3b80,
    IOMMU_IOAS_ALLOC: 0x3b81,
  };
  t.deepEqual({ ...u.Ioctl }, expected);
  t.is(u.IommuType.TYPE1v2, 3);
  t.is(u.IommuType.TYPE1, 1);
  t.is(u.IommuType.NOIOMMU, 8);
});

test('§1a group status, container fd pointer, device name string', (t) => {
  const s = u.encodeGroupStatus();
  t.is(s.length, 8);
  t.is(s.readUInt32LE(0), 8);
  s.writeUInt32LE(0x3, 4);
  t.deepEqual(u.decodeGroupStatus(s), { flags: 3, viable: true, containerSet: true });
  t.deepEqual([...u.encodeFdArg(7)], [7, 0, 0, 0]);
  t.deepEqual([...u.encodeFdArg(-1)], [0xff, 0xff, 0xff, 0xff]);
  const name = u.encodeDeviceName('83b8f4f2-509f-382f-3c1e-e6bfe0fa1001');
  t.is(name.length, 37);
  t.is(name[36], 0);
  t.is(name.subarray(0, 36).toString(), '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001');
  t.throws(() => u.encodeDeviceName('x'.repeat(4096)), { instanceOf: RangeError });
});

test('§1b bind iommufd (16 B), ioas alloc (12 B), attach (12 B) / detach (8 B)', (t) => {
  const bind = u.encodeBindIommufd(5);
  t.deepEqual([...bind], [16, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
  bind.writeUInt32LE(42, 12);
  t.deepEqual(u.decodeBindIommufd(bind), { devid: 42 });
  const ioas = u.encodeIoasAlloc();
  t.deepEqual([...ioas], [12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  ioas.writeUInt32LE(9, 8);
  t.deepEqual(u.decodeIoasAlloc(ioas), { ioasId: 9 });
  const att = u.encodeAttachPt(9);
  t.deepEqual([...att], [12, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]);
  t.deepEqual(u.decodeAttachPt(att), { ptId: 9 });
  t.deepEqual([...u.encodeDetachPt()], [8, 0, 0, 0, 0, 0, 0, 0]);
});

test('§1c device info (24 B) and region info (32 B)', (t) => {
  const di = u.encodeDeviceInfo();
  t.is(di.length, 24);
  t.is(di.readUInt32LE(0), 24);
  // What mtty copies back (docs/vfio-migration.md §8.6): flags PCI, 9 regions, 5 irqs, first 16 bytes only.
  di.writeUInt32LE(u.DeviceInfoFlag.PCI, 4);
  di.writeUInt32LE(9, 8);
  di.writeUInt32LE(5, 12);
  t.deepEqual(u.decodeDeviceInfo(di), { argsz: 24, flags: 2, numRegions: 9, numIrqs: 5, capOffset: 0 });
  t.is(u.DeviceInfoFlag.CAPS, 0x80);
  t.is(u.DeviceInfoFlag.CDX, 0x100);

  const ri = u.encodeRegionInfo(7);
  t.is(ri.length, 32);
  t.is(ri.readUInt32LE(0), 32);
  t.is(ri.readUInt32LE(8), 7);
  ri.writeUInt32LE(u.RegionFlag.READ | u.RegionFlag.WRITE, 4);
  ri.writeBigUInt64LE(0xffn, 16);
  ri.writeBigUInt64LE(0x70000000000n, 24); // CONFIG at index << 40
  t.deepEqual(u.decodeRegionInfo(ri), { argsz: 32, flags: 3, index: 7, capOffset: 0, size: 0xffn, offset: 0x70000000000n });
  t.is(u.PciRegion.CONFIG, 7);
  t.is(u.PciRegion.COUNT, 9);
});

test('§2 feature header: argsz = 8 + payload, GET/SET/PROBE bits 16/17/18', (t) => {
  t.is(u.FeatureFlag.GET, 0x10000);
  t.is(u.FeatureFlag.SET, 0x20000);
  t.is(u.FeatureFlag.PROBE, 0x40000);
  const probe = u.encodeFeature(u.Feature.DMA_LOGGING_START, 'probe-set');
  t.deepEqual([...probe], [8, 0, 0, 0, 6, 0, 0x06, 0]);
  t.is(u.encodeFeature(u.Feature.MIGRATION, 'probe').readUInt32LE(4), 0x40001);
  t.is(u.encodeFeature(u.Feature.MIGRATION, 'probe-get').readUInt32LE(4), 0x50001);
  t.throws(() => u.encodeFeature(0x10000, 'get'), { instanceOf: RangeError });
  t.deepEqual(
    { ...u.Feature },
    {
      PCI_VF_TOKEN: 0,
      MIGRATION: 1,
      MIG_DEVICE_STATE: 2,
      LOW_POWER_ENTRY: 3,
      LOW_POWER_ENTRY_WITH_WAKEUP: 4,
      LOW_POWER_EXIT: 5,
      DMA_LOGGING_START: 6,
      DMA_LOGGING_STOP: 7,
      DMA_LOGGING_REPORT: 8,
      MIG_DATA_SIZE: 9,
      BUS_MASTER: 10,
    },
  );
});

test('§2a GET MIGRATION: argsz 16, flags 0x10001, u64 flags at 8', (t) => {
  const b = u.encodeGetMigration();
  t.deepEqual([...b], [16, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  b.writeBigUInt64LE(7n, 8); // mtty: STOP_COPY|P2P|PRE_COPY
  t.is(u.decodeGetMigration(b), 7);
});

test('§2b MIG_DEVICE_STATE: SET 0x20002 / GET 0x10002, state u32 @8, data_fd s32 @12', (t) => {
  const set = u.encodeSetMigState(3);
  t.deepEqual([...set], [16, 0, 0, 0, 2, 0, 2, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  const get = u.encodeGetMigState();
  t.deepEqual([...get.subarray(0, 8)], [16, 0, 0, 0, 2, 0, 1, 0]);
  set.writeInt32LE(11, 12);
  t.deepEqual(u.decodeMigState(set), { state: 3, dataFd: 11 });
  t.deepEqual(u.decodeMigState(get), { state: 0, dataFd: -1 });
});

test('§2c MIG_DATA_SIZE: id 9, GET, u64 @8', (t) => {
  const b = u.encodeGetMigDataSize();
  t.deepEqual([...b.subarray(0, 8)], [16, 0, 0, 0, 9, 0, 1, 0]);
  b.writeBigUInt64LE(60n, 8);
  t.is(u.decodeMigDataSize(b), 60n);
});

test('§5 precopy info (24 B): initial @8, dirty @16', (t) => {
  const b = u.encodePrecopyInfo();
  t.is(b.length, 24);
  t.is(b.readUInt32LE(0), 24);
  b.writeBigUInt64LE(24n, 8);
  t.deepEqual(u.decodePrecopyInfo(b), { flags: 0, initialBytes: 24n, dirtyBytes: 0n });
  t.throws(() => u.decodePrecopyInfo(Buffer.alloc(16)), { instanceOf: RangeError });
});
