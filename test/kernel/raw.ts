// Raw VFIO access for the guest smoke test: ioctl numbers and struct layouts written out
// from docs/vfio-migration.md on purpose (not taken from src/vfio), so the smoke test checks the real
// kernel independently of the project's own uAPI encoders.
import fs from 'node:fs';
import { closeSync, ioctlSync } from '../../src/native/index.js';

export const VFIO_GET_API_VERSION = 0x3b64;
export const VFIO_CHECK_EXTENSION = 0x3b65;
export const VFIO_SET_IOMMU = 0x3b66;
export const VFIO_GROUP_GET_STATUS = 0x3b67;
export const VFIO_GROUP_SET_CONTAINER = 0x3b68;
export const VFIO_GROUP_GET_DEVICE_FD = 0x3b6a;
export const VFIO_DEVICE_GET_INFO = 0x3b6b;
export const VFIO_DEVICE_RESET = 0x3b6f;
export const VFIO_DEVICE_FEATURE = 0x3b75;
export const VFIO_DEVICE_BIND_IOMMUFD = 0x3b76;
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = 0x3b77;
export const VFIO_MIG_GET_PRECOPY_INFO = 0x3b79;
export const IOMMU_IOAS_ALLOC = 0x3b81;
export const VFIO_TYPE1v2_IOMMU = 3;

export const FEATURE_GET = 1 << 16;
export const FEATURE_SET = 1 << 17;
export const FEATURE_MIGRATION = 1;
export const FEATURE_MIG_DEVICE_STATE = 2;
export const FEATURE_MIG_DATA_SIZE = 9;

export const State = { ERROR: 0, STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, RUNNING_P2P: 5, PRE_COPY: 6, PRE_COPY_P2P: 7 } as const;

/** mtty's stream magic 0x7e9d09898c3e2c4e, little-endian. */
export const MTTY_MAGIC = Buffer.from([0x4e, 0x2c, 0x3e, 0x8c, 0x89, 0x09, 0x9d, 0x7e]);

export function groupOf(uuid: string): number {
  const link = fs.readlinkSync(`/sys/bus/mdev/devices/${uuid}/iommu_group`);
  return Number(link.slice(link.lastIndexOf('/') + 1));
}

export function cdevOf(uuid: string): string {
  const names = fs.readdirSync(`/sys/bus/mdev/devices/${uuid}/vfio-dev`);
  if (names.length !== 1) throw new Error(`${uuid}: expected one vfio-dev entry, got ${names.join(',')}`);
  return `/dev/vfio/devices/${names[0]}`;
}

export interface GroupOpen { container: number; group: number; device: number; apiVersion: number; type1v2: number; groupFlags: number }

/** Container/group path: every step checked by the caller through the returned values. */
export function openViaGroup(uuid: string): GroupOpen {
  const container = fs.openSync('/dev/vfio/vfio', 'r+');
  const apiVersion = ioctlSync(container, VFIO_GET_API_VERSION, 0);
  const type1v2 = ioctlSync(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  const group = fs.openSync(`/dev/vfio/${groupOf(uuid)}`, 'r+');
  const status = Buffer.alloc(8);
  status.writeUInt32LE(8, 0);
  ioctlSync(group, VFIO_GROUP_GET_STATUS, status);
  const fdArg = Buffer.alloc(4);
  fdArg.writeInt32LE(container, 0);
  ioctlSync(group, VFIO_GROUP_SET_CONTAINER, fdArg);
  ioctlSync(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  const device = ioctlSync(group, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${uuid}\0`));
  return { container, group, device, apiVersion, type1v2, groupFlags: status.readUInt32LE(4) };
}

export interface CdevOpen { iommufd: number; device: number; devid: number; ioasId: number; attachedPt: number }

/** cdev + iommufd path: BIND_IOMMUFD, IOMMU_IOAS_ALLOC, ATTACH_IOMMUFD_PT. */
export function openViaCdev(uuid: string): CdevOpen {
  const iommufd = fs.openSync('/dev/iommu', 'r+');
  const device = fs.openSync(cdevOf(uuid), 'r+');
  const bind = Buffer.alloc(16);
  bind.writeUInt32LE(16, 0);
  bind.writeInt32LE(iommufd, 8);
  ioctlSync(device, VFIO_DEVICE_BIND_IOMMUFD, bind);
  const alloc = Buffer.alloc(12);
  alloc.writeUInt32LE(12, 0);
  ioctlSync(iommufd, IOMMU_IOAS_ALLOC, alloc);
  const ioasId = alloc.readUInt32LE(8);
  const attach = Buffer.alloc(12);
  attach.writeUInt32LE(12, 0);
  attach.writeUInt32LE(ioasId, 8);
  ioctlSync(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach);
  return { iommufd, device, devid: bind.readUInt32LE(12), ioasId, attachedPt: attach.readUInt32LE(8) };
}

export function closeAll(...fds: number[]): void {
  for (const fd of fds.reverse()) closeSync(fd);
}

export function deviceInfo(device: number): { flags: number; numRegions: number; numIrqs: number } {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(24, 0);
  ioctlSync(device, VFIO_DEVICE_GET_INFO, b);
  return { flags: b.readUInt32LE(4), numRegions: b.readUInt32LE(8), numIrqs: b.readUInt32LE(12) };
}

export function migrationFlags(device: number): bigint {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(16, 0);
  b.writeUInt32LE(FEATURE_GET | FEATURE_MIGRATION, 4);
  ioctlSync(device, VFIO_DEVICE_FEATURE, b);
  return b.readBigUInt64LE(8);
}

export function getState(device: number): number {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(16, 0);
  b.writeUInt32LE(FEATURE_GET | FEATURE_MIG_DEVICE_STATE, 4);
  ioctlSync(device, VFIO_DEVICE_FEATURE, b);
  return b.readUInt32LE(8);
}

/** SET MIG_DEVICE_STATE; returns the data_fd the kernel handed out (-1 for none). */
export function setState(device: number, state: number): number {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(16, 0);
  b.writeUInt32LE(FEATURE_SET | FEATURE_MIG_DEVICE_STATE, 4);
  b.writeUInt32LE(state, 8);
  b.writeInt32LE(-1, 12);
  ioctlSync(device, VFIO_DEVICE_FEATURE, b);
  return b.readInt32LE(12);
}

/** Reads a stream fd until read() returns 0 (mtty's end of data), bounded by `max`. */
export function readAll(fd: number, max = 1 << 20): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const b = Buffer.alloc(4096);
    const n = fs.readSync(fd, b, 0, b.length, null);
    if (n === 0) break;
    chunks.push(b.subarray(0, n));
    total += n;
    if (total > max) throw new Error(`stream longer than ${max} bytes`);
  }
  return Buffer.concat(chunks);
}

/** One-byte BAR access (mtty's UART handlers only look at the first byte). */
export function barWrite1(device: number, region: number, off: number, value: number): void {
  fs.writeSync(device, Buffer.from([value]), 0, 1, region * 2 ** 40 + off);
}

export function barRead1(device: number, region: number, off: number): number {
  const b = Buffer.alloc(1);
  fs.readSync(device, b, 0, 1, region * 2 ** 40 + off);
  return b[0]!;
}

/** GET MIG_DATA_SIZE: the driver's STOP_COPY size estimate. */
export function migDataSize(device: number): bigint {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(16, 0);
  b.writeUInt32LE(FEATURE_GET | FEATURE_MIG_DATA_SIZE, 4);
  ioctlSync(device, VFIO_DEVICE_FEATURE, b);
  return b.readBigUInt64LE(8);
}

/** VFIO_MIG_GET_PRECOPY_INFO on a saving data_fd. */
export function precopyInfo(dataFd: number): { initial: bigint; dirty: bigint } {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(24, 0);
  ioctlSync(dataFd, VFIO_MIG_GET_PRECOPY_INFO, b);
  return { initial: b.readBigUInt64LE(8), dirty: b.readBigUInt64LE(16) };
}

/** errno name of a failed call (fs.* throws code strings; ioctlSync throws SysError), or 'ok'. */
export function errnoOf(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
}
