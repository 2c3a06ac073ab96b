// VFIO / iommufd uAPI as TypeScript owns it: ioctl request numbers, struct layouts and
// argsz rules, encoded into and decoded from little-endian Buffers. The native core only
// passes these bytes to ioctl(2). Every fact lives here once, with the section of
// docs/vfio-migration.md (Linux 6.12.117 headers) it comes from. Debian's installed
// linux/vfio.h is from 6.1 and lacks several of these: it is deliberately not used.

// ---------------------------------------------------------------------------
// §0 Ioctl encoding: every VFIO ioctl is _IO(';', 100 + n) = 0x3B00 | (100 + n), no size
// or direction bits; iommufd uses the same type byte from 0x80 (IOMMUFD_CMD_BASE).

const VFIO_TYPE = 0x3b; // ';'
const VFIO_BASE = 100;
/** _IO(';', 100 + n) */
export function vfioIo(n: number): number {
  return (VFIO_TYPE << 8) | (VFIO_BASE + n);
}
/** _IO(';', IOMMUFD_CMD_BASE + n) with IOMMUFD_CMD_BASE = 0x80 */
export function iommufdIo(n: number): number {
  return (VFIO_TYPE << 8) | (0x80 + n);
}

/** §0 table: request numbers. */
export const Ioctl = {
  GET_API_VERSION: vfioIo(0), // 0x3B64, container
  CHECK_EXTENSION: vfioIo(1), // 0x3B65, container, extension id by value
  SET_IOMMU: vfioIo(2), // 0x3B66, container, iommu type by value
  GROUP_GET_STATUS: vfioIo(3), // 0x3B67, group, struct vfio_group_status *
  GROUP_SET_CONTAINER: vfioIo(4), // 0x3B68, group, int32 * (container or iommufd fd)
  GROUP_UNSET_CONTAINER: vfioIo(5), // 0x3B69, group, none
  GROUP_GET_DEVICE_FD: vfioIo(6), // 0x3B6A, group, NUL-terminated name; returns the fd
  DEVICE_GET_INFO: vfioIo(7), // 0x3B6B
  DEVICE_GET_REGION_INFO: vfioIo(8), // 0x3B6C
  DEVICE_GET_IRQ_INFO: vfioIo(9), // 0x3B6D
  DEVICE_SET_IRQS: vfioIo(10), // 0x3B6E
  DEVICE_RESET: vfioIo(11), // 0x3B6F, none
  DEVICE_FEATURE: vfioIo(17), // 0x3B75
  DEVICE_BIND_IOMMUFD: vfioIo(18), // 0x3B76, cdev only
  DEVICE_ATTACH_IOMMUFD_PT: vfioIo(19), // 0x3B77, cdev only
  DEVICE_DETACH_IOMMUFD_PT: vfioIo(20), // 0x3B78, cdev only
  MIG_GET_PRECOPY_INFO: vfioIo(21), // 0x3B79, on the migration data_fd (not the device fd)
  IOMMU_DESTROY: iommufdIo(0), // 0x3B80, /dev/iommu
  IOMMU_IOAS_ALLOC: iommufdIo(1), // 0x3B81, /dev/iommu
} as const;

/** §0: VFIO_GET_API_VERSION must return this. */
export const VFIO_API_VERSION = 0;

/** §0 VFIO_SET_IOMMU / VFIO_CHECK_EXTENSION ids. */
export const IommuType = {
  TYPE1: 1,
  TYPE1v2: 3,
  NOIOMMU: 8,
} as const;

// ---------------------------------------------------------------------------
// Helpers

function assertLen(buf: Buffer, min: number, what: string): void {
  if (buf.length < min) throw new RangeError(`${what}: need ${min} bytes, got ${buf.length}`);
}

// ---------------------------------------------------------------------------
// §1a struct vfio_group_status (8 B): argsz u32 @0 (>= 8), flags u32 @4.

export const GROUP_STATUS_SIZE = 8;
export const GroupFlag = { VIABLE: 0x1, CONTAINER_SET: 0x2 } as const;

export function encodeGroupStatus(): Buffer {
  const b = Buffer.alloc(GROUP_STATUS_SIZE);
  b.writeUInt32LE(GROUP_STATUS_SIZE, 0);
  return b;
}
export function decodeGroupStatus(b: Buffer): { flags: number; viable: boolean; containerSet: boolean } {
  assertLen(b, GROUP_STATUS_SIZE, 'vfio_group_status');
  const flags = b.readUInt32LE(4);
  return { flags, viable: (flags & GroupFlag.VIABLE) !== 0, containerSet: (flags & GroupFlag.CONTAINER_SET) !== 0 };
}

/** §1a step 4: GROUP_SET_CONTAINER takes a pointer to an int holding the fd. */
export function encodeFdArg(fd: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(fd, 0);
  return b;
}

/** §1a step 6: GROUP_GET_DEVICE_FD takes a NUL-terminated name (≤ PAGE_SIZE). */
export function encodeDeviceName(name: string): Buffer {
  const b = Buffer.from(name + '\0', 'utf8');
  if (b.length > 4096) throw new RangeError(`device name too long for VFIO_GROUP_GET_DEVICE_FD (${b.length} > 4096 bytes)`);
  if (name.includes('\0')) throw new RangeError('device name contains a NUL byte');
  return b;
}

// ---------------------------------------------------------------------------
// §1b struct vfio_device_bind_iommufd (16 B in 6.12): argsz @0 (>=16), flags @4 (=0),
// iommufd s32 @8, out_devid u32 @12.

export const BIND_IOMMUFD_SIZE = 16;
export function encodeBindIommufd(iommufd: number): Buffer {
  const b = Buffer.alloc(BIND_IOMMUFD_SIZE);
  b.writeUInt32LE(BIND_IOMMUFD_SIZE, 0);
  b.writeUInt32LE(0, 4);
  b.writeInt32LE(iommufd, 8);
  return b;
}
export function decodeBindIommufd(b: Buffer): { devid: number } {
  assertLen(b, BIND_IOMMUFD_SIZE, 'vfio_device_bind_iommufd');
  return { devid: b.readUInt32LE(12) };
}

/** §1b step 4: struct iommu_ioas_alloc (12 B): size @0 (=12), flags @4 (=0), out_ioas_id @8. */
export const IOAS_ALLOC_SIZE = 12;
export function encodeIoasAlloc(): Buffer {
  const b = Buffer.alloc(IOAS_ALLOC_SIZE);
  b.writeUInt32LE(IOAS_ALLOC_SIZE, 0);
  return b;
}
export function decodeIoasAlloc(b: Buffer): { ioasId: number } {
  assertLen(b, IOAS_ALLOC_SIZE, 'iommu_ioas_alloc');
  return { ioasId: b.readUInt32LE(8) };
}

/** §1b step 5: struct vfio_device_attach_iommufd_pt (12 B in 6.12): argsz @0, flags @4 (=0), pt_id @8 (in/out). */
export const ATTACH_PT_SIZE = 12;
export function encodeAttachPt(ptId: number): Buffer {
  const b = Buffer.alloc(ATTACH_PT_SIZE);
  b.writeUInt32LE(ATTACH_PT_SIZE, 0);
  b.writeUInt32LE(ptId, 8);
  return b;
}
export function decodeAttachPt(b: Buffer): { ptId: number } {
  assertLen(b, ATTACH_PT_SIZE, 'vfio_device_attach_iommufd_pt');
  return { ptId: b.readUInt32LE(8) };
}
/** §1b step 5: struct vfio_device_detach_iommufd_pt (8 B): argsz @0, flags @4 (=0). */
export const DETACH_PT_SIZE = 8;
export function encodeDetachPt(): Buffer {
  const b = Buffer.alloc(DETACH_PT_SIZE);
  b.writeUInt32LE(DETACH_PT_SIZE, 0);
  return b;
}

// ---------------------------------------------------------------------------
// §1c struct vfio_device_info (24 B; minimum argsz 16).

export const DEVICE_INFO_SIZE = 24;
export const DeviceInfoFlag = {
  RESET: 0x1,
  PCI: 0x2,
  PLATFORM: 0x4,
  AMBA: 0x8,
  CCW: 0x10,
  AP: 0x20,
  FSL_MC: 0x40,
  CAPS: 0x80,
  CDX: 0x100,
} as const;

export interface DeviceInfo {
  argsz: number;
  flags: number;
  numRegions: number;
  numIrqs: number;
  capOffset: number;
}
export function encodeDeviceInfo(): Buffer {
  const b = Buffer.alloc(DEVICE_INFO_SIZE);
  b.writeUInt32LE(DEVICE_INFO_SIZE, 0);
  return b;
}
/** mtty copies back only the first 16 bytes: cap_offset then stays 0 (what we passed). */
export function decodeDeviceInfo(b: Buffer): DeviceInfo {
  assertLen(b, 16, 'vfio_device_info');
  return {
    argsz: b.readUInt32LE(0),
    flags: b.readUInt32LE(4),
    numRegions: b.readUInt32LE(8),
    numIrqs: b.readUInt32LE(12),
    capOffset: b.length >= 20 ? b.readUInt32LE(16) : 0,
  };
}

/** §1c struct vfio_region_info (32 B; minimum argsz 32). */
export const REGION_INFO_SIZE = 32;
export const RegionFlag = { READ: 0x1, WRITE: 0x2, MMAP: 0x4, CAPS: 0x8 } as const;
/** §1c vfio-pci fixed region indexes. */
export const PciRegion = { BAR0: 0, BAR1: 1, BAR2: 2, BAR3: 3, BAR4: 4, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8, COUNT: 9 } as const;

export interface RegionInfo {
  argsz: number;
  flags: number;
  index: number;
  capOffset: number;
  size: bigint;
  /** File offset on the device fd for pread/pwrite (vfio-pci: index << 40). */
  offset: bigint;
}
export function encodeRegionInfo(index: number): Buffer {
  const b = Buffer.alloc(REGION_INFO_SIZE);
  b.writeUInt32LE(REGION_INFO_SIZE, 0);
  b.writeUInt32LE(index, 8);
  return b;
}
export function decodeRegionInfo(b: Buffer): RegionInfo {
  assertLen(b, REGION_INFO_SIZE, 'vfio_region_info');
  return {
    argsz: b.readUInt32LE(0),
    flags: b.readUInt32LE(4),
    index: b.readUInt32LE(8),
    capOffset: b.readUInt32LE(12),
    size: b.readBigUInt64LE(16),
    offset: b.readBigUInt64LE(24),
  };
}

// ---------------------------------------------------------------------------
// §2 VFIO_DEVICE_FEATURE: header struct vfio_device_feature (8 B) = argsz u32 @0
// (8 + payload), flags u32 @4 (bits 0-15 feature id, GET 1<<16, SET 1<<17, PROBE 1<<18);
// payload from @8.

export const FEATURE_HEADER_SIZE = 8;
export const FeatureFlag = {
  MASK: 0xffff,
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
} as const;

/** §2 per-feature ids. */
export const Feature = {
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
} as const;

export type FeatureOp = 'get' | 'set' | 'probe-get' | 'probe-set' | 'probe';

function opFlags(op: FeatureOp): number {
  switch (op) {
    case 'get':
      return FeatureFlag.GET;
    case 'set':
      return FeatureFlag.SET;
    case 'probe-get':
      return FeatureFlag.PROBE | FeatureFlag.GET;
    case 'probe-set':
      return FeatureFlag.PROBE | FeatureFlag.SET;
    case 'probe':
      return FeatureFlag.PROBE;
  }
}

/** Header + zeroed payload of `payloadSize` bytes; argsz = 8 + payloadSize (§2). */
export function encodeFeature(feature: number, op: FeatureOp, payloadSize = 0): Buffer {
  if (!Number.isInteger(feature) || feature < 0 || feature > FeatureFlag.MASK) throw new RangeError(`feature id ${feature} outside 0..0xffff`);
  const b = Buffer.alloc(FEATURE_HEADER_SIZE + payloadSize);
  b.writeUInt32LE(FEATURE_HEADER_SIZE + payloadSize, 0);
  b.writeUInt32LE((opFlags(op) | feature) >>> 0, 4);
  return b;
}

/** §2a: GET MIGRATION, payload {u64 flags} (argsz 16). */
export function encodeGetMigration(): Buffer {
  return encodeFeature(Feature.MIGRATION, 'get', 8);
}
/** Migration flags (VFIO_MIGRATION_*) as a number: only bits 0-2 are defined; larger bits are kept. */
export function decodeGetMigration(b: Buffer): number {
  assertLen(b, 16, 'vfio_device_feature_migration');
  const v = b.readBigUInt64LE(8);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`migration flags 0x${v.toString(16)} do not fit`);
  return Number(v);
}

/** §2b: struct vfio_device_feature_mig_state: device_state u32 @8, data_fd s32 @12 (argsz 16). */
export const MIG_STATE_ARGSZ = 16;
export function encodeSetMigState(state: number): Buffer {
  const b = encodeFeature(Feature.MIG_DEVICE_STATE, 'set', 8);
  b.writeUInt32LE(state >>> 0, 8);
  b.writeInt32LE(-1, 12); // ignored by the kernel on SET
  return b;
}
export function encodeGetMigState(): Buffer {
  const b = encodeFeature(Feature.MIG_DEVICE_STATE, 'get', 8);
  b.writeInt32LE(-1, 12);
  return b;
}
/**
 * After a successful SET, data_fd >= 0 is a new session fd (O_CLOEXEC, ours to close);
 * -1 means none. On failure the kernel writes back the *requested* state, so callers
 * must GET the real one (§2b).
 */
export function decodeMigState(b: Buffer): { state: number; dataFd: number } {
  assertLen(b, MIG_STATE_ARGSZ, 'vfio_device_feature_mig_state');
  return { state: b.readUInt32LE(8), dataFd: b.readInt32LE(12) };
}

/** §2c: GET MIG_DATA_SIZE, payload {u64 stop_copy_length} (argsz 16). */
export function encodeGetMigDataSize(): Buffer {
  return encodeFeature(Feature.MIG_DATA_SIZE, 'get', 8);
}
export function decodeMigDataSize(b: Buffer): bigint {
  assertLen(b, 16, 'vfio_device_feature_mig_data_size');
  return b.readBigUInt64LE(8);
}

// ---------------------------------------------------------------------------
// §5 struct vfio_precopy_info (24 B): argsz @0 (>= 24), flags @4 (6.12: echoed back),
// initial_bytes u64 @8, dirty_bytes u64 @16. Issued on the saving data_fd.

export const PRECOPY_INFO_SIZE = 24;
export function encodePrecopyInfo(): Buffer {
  const b = Buffer.alloc(PRECOPY_INFO_SIZE);
  b.writeUInt32LE(PRECOPY_INFO_SIZE, 0);
  return b;
}
export function decodePrecopyInfo(b: Buffer): { flags: number; initialBytes: bigint; dirtyBytes: bigint } {
  assertLen(b, PRECOPY_INFO_SIZE, 'vfio_precopy_info');
  return { flags: b.readUInt32LE(4), initialBytes: b.readBigUInt64LE(8), dirtyBytes: b.readBigUInt64LE(16) };
}

// ---------------------------------------------------------------------------
// The errno table is src/errno.ts (one for every layer); re-exported for the vfio namespace.
export { Errno } from '../errno.js';
