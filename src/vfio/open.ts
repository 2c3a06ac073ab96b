// Opening devices from a spec string (the CLI's --device): real VFIO devices through the
// container/group path (docs/vfio-migration.md §1a) or the cdev + iommufd path (§1b), an fd handed
// in by a manager, or a simulated device.
//
//   sim:KEY=VALUE,...            simulated device (docs/devices.md)
//   pci:0000:00:04.0 | 0000:00:04.0 | 00:04.0     PCI device, group path
//   mdev:UUID | UUID             mediated device (e.g. mtty), group path
//   sysfs:/sys/... | /sys/...    any sysfs device directory, group path
//   cdev:/dev/vfio/devices/vfioX | /dev/vfio/devices/vfioX    cdev + iommufd
//   cdev:pci:ADDR | cdev:mdev:UUID | cdev:/sys/...          cdev found through sysfs
//   fd:N                         an open VFIO device fd (the device takes ownership)
import { constants as fsc, existsSync, openSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { basename, join } from 'node:path';
import { MigbridgeError, UsageError, errnoName, errnoNumber } from '../errors.js';
import { closeSync, ioctlSync } from '../native/index.js';
import type { MigrationDevice } from './device.js';
import { type IoctlRunner, KernelDevice } from './kernel.js';
import { createSimDevice } from './sim/index.js';
import {
  IommuType,
  Ioctl,
  VFIO_API_VERSION,
  decodeBindIommufd,
  decodeGroupStatus,
  decodeIoasAlloc,
  encodeAttachPt,
  encodeBindIommufd,
  encodeDeviceName,
  encodeFdArg,
  encodeGroupStatus,
  encodeIoasAlloc,
} from './uapi.js';

export type DeviceSpec =
  | { kind: 'sim'; spec: string }
  | { kind: 'sysfs'; path: string; via: 'group' | 'cdev' }
  | { kind: 'cdev'; path: string }
  | { kind: 'fd'; fd: number };

const PCI_RE = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/i;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface OpenOptions {
  /** Root of sysfs (tests point it at a fake tree). */
  sysfs?: string;
  /** Directory holding vfio/ and iommu (default /dev). */
  dev?: string;
  engine?: IoctlRunner;
}

/** A device could not be opened: names the spec, the step and the errno, with a hint. */
export class VfioOpenError extends MigbridgeError {
  readonly step: string;
  constructor(spec: string, step: string, errno: number | undefined, message: string) {
    super(errno !== undefined ? errnoName(errno) : 'EOPEN', `cannot open device ${spec}: ${step}: ${message}`, {
      device: spec,
      ...(errno !== undefined ? { errno } : {}),
    });
    this.step = step;
  }
}

function sysfsOf(o: OpenOptions): string {
  return o.sysfs ?? '/sys';
}

/** Parses a --device string (no I/O). */
export function parseDeviceSpec(spec: string, o: OpenOptions = {}): DeviceSpec {
  const s = spec.trim();
  if (s === 'sim' || s.startsWith('sim:')) return { kind: 'sim', spec: s };
  if (s.startsWith('fd:')) {
    const n = s.slice(3);
    if (!/^\d+$/.test(n)) throw new UsageError(`device ${JSON.stringify(spec)}: fd:N needs a file descriptor number`);
    return { kind: 'fd', fd: Number(n) };
  }
  if (s.startsWith('cdev:')) {
    const rest = s.slice(5);
    if (rest.startsWith('/dev/')) return { kind: 'cdev', path: rest };
    const inner = parseDeviceSpec(rest, o);
    if (inner.kind !== 'sysfs') throw new UsageError(`device ${JSON.stringify(spec)}: cdev: takes a /dev/vfio/devices path, pci:, mdev: or a sysfs path`);
    return { ...inner, via: 'cdev' };
  }
  if (s.startsWith('/dev/')) return { kind: 'cdev', path: s };
  const sys = sysfsOf(o);
  const body = s.replace(/^(pci|mdev|sysfs):/, '');
  const prefix = s.slice(0, s.length - body.length);
  if ((prefix === '' || prefix === 'pci:') && PCI_RE.test(body)) {
    const m = PCI_RE.exec(body)!;
    const addr = `${(m[1] ?? '0000').toLowerCase()}:${m[2]!.toLowerCase()}:${m[3]!.toLowerCase()}.${m[4]}`;
    return { kind: 'sysfs', path: join(sys, 'bus/pci/devices', addr), via: 'group' };
  }
  if ((prefix === '' || prefix === 'mdev:') && UUID_RE.test(body)) {
    return { kind: 'sysfs', path: join(sys, 'bus/mdev/devices', body.toLowerCase()), via: 'group' };
  }
  if ((prefix === '' || prefix === 'sysfs:') && body.startsWith('/')) return { kind: 'sysfs', path: body, via: 'group' };
  throw new UsageError(
    `device ${JSON.stringify(spec)}: not a device spec (sim:..., pci:DDDD:BB:DD.F, mdev:UUID, sysfs:/sys/..., cdev:/dev/vfio/devices/vfioX, cdev:pci:..., cdev:mdev:..., fd:N)`,
  );
}

function errnoFrom(e: unknown): number | undefined {
  if (e instanceof MigbridgeError) return e.errno;
  const code = (e as NodeJS.ErrnoException).code;
  return code ? errnoNumber(code) : undefined;
}

/** Runs one setup step, turning any failure into a VfioOpenError naming it. */
function step<T>(spec: string, what: string, fn: () => T, hint?: (errno: number | undefined) => string | undefined): T {
  try {
    return fn();
  } catch (e) {
    const errno = errnoFrom(e);
    const h = hint?.(errno);
    throw new VfioOpenError(spec, what, errno, `${(e as Error).message}${h ? ` (${h})` : ''}`);
  }
}

function openRw(spec: string, what: string, path: string, hint?: (errno: number | undefined) => string | undefined): number {
  return step(spec, what, () => openSync(path, fsc.O_RDWR), hint);
}

/** The IOMMU group number of a sysfs device directory (§1a step 2). */
export function iommuGroupOf(sysfsDevice: string): string {
  return basename(readlinkSync(join(sysfsDevice, 'iommu_group')));
}

/** The cdev name (vfioX) of a sysfs device directory (§1b step 2). */
export function cdevOf(sysfsDevice: string): string {
  const names = readdirSync(join(sysfsDevice, 'vfio-dev')).filter((n) => /^vfio\d+$/.test(n));
  if (names.length !== 1) throw new VfioOpenError(sysfsDevice, 'cdev', undefined, `expected one vfioX under ${join(sysfsDevice, 'vfio-dev')}, found ${names.length}`);
  return names[0]!;
}

// Groups are process-wide: a group can be opened once (EBUSY otherwise), so devices of
// one group share its fd and container. Keyed by the group's device path.
interface GroupRef {
  groupFd: number;
  containerFd: number;
  refs: number;
}
const groups = new Map<string, GroupRef>();

function releaseGroup(key: string): void {
  const g = groups.get(key);
  if (!g || --g.refs > 0) return;
  groups.delete(key);
  closeSync(g.groupFd);
  closeSync(g.containerFd);
}

function openGroup(spec: string, groupPath: string): GroupRef {
  const have = groups.get(groupPath);
  if (have) {
    have.refs++;
    return have;
  }
  const noiommu = basename(groupPath).startsWith('noiommu-');
  const devDir = join(groupPath, '..');
  const containerFd = openRw(spec, 'open the VFIO container', join(devDir, 'vfio'), (e) =>
    e === errnoNumber('ENOENT') ? 'no /dev/vfio/vfio: load vfio (CONFIG_VFIO_CONTAINER)' : undefined,
  );
  let groupFd = -1;
  try {
    const api = step(spec, 'VFIO_GET_API_VERSION', () => ioctlSync(containerFd, Ioctl.GET_API_VERSION, null));
    if (api !== VFIO_API_VERSION) throw new VfioOpenError(spec, 'VFIO_GET_API_VERSION', undefined, `API version ${api}, expected ${VFIO_API_VERSION}`);
    const type = noiommu
      ? IommuType.NOIOMMU
      : step(spec, 'VFIO_CHECK_EXTENSION', () => ioctlSync(containerFd, Ioctl.CHECK_EXTENSION, IommuType.TYPE1v2)) > 0
        ? IommuType.TYPE1v2
        : IommuType.TYPE1;
    groupFd = openRw(spec, `open group ${groupPath}`, groupPath, (e) =>
      e === errnoNumber('EBUSY')
        ? 'the group is already open (another process, or one of its devices is open through its cdev)'
        : e === errnoNumber('ENOENT')
          ? 'is the device bound to a VFIO driver (vfio-pci, or an mdev)?'
          : undefined,
    );
    const status = encodeGroupStatus();
    step(spec, 'VFIO_GROUP_GET_STATUS', () => ioctlSync(groupFd, Ioctl.GROUP_GET_STATUS, status));
    if (!decodeGroupStatus(status).viable) {
      throw new VfioOpenError(spec, 'VFIO_GROUP_GET_STATUS', undefined, `group ${groupPath} is not viable: bind every device in it to a VFIO driver`);
    }
    step(spec, 'VFIO_GROUP_SET_CONTAINER', () => ioctlSync(groupFd, Ioctl.GROUP_SET_CONTAINER, encodeFdArg(containerFd)));
    step(spec, `VFIO_SET_IOMMU(${type})`, () => ioctlSync(containerFd, Ioctl.SET_IOMMU, type));
  } catch (e) {
    if (groupFd >= 0) closeSync(groupFd);
    closeSync(containerFd);
    throw e;
  }
  const g = { groupFd, containerFd, refs: 1 };
  groups.set(groupPath, g);
  return g;
}

function openViaGroup(spec: string, sysfsDevice: string, o: OpenOptions): KernelDevice {
  const real = step(spec, `resolve ${sysfsDevice}`, () => realpathSync(sysfsDevice), (e) =>
    e === errnoNumber('ENOENT') ? 'no such device in sysfs' : undefined,
  );
  const name = basename(real);
  const group = step(spec, `read ${join(sysfsDevice, 'iommu_group')}`, () => iommuGroupOf(real), (e) =>
    e === errnoNumber('ENOENT') ? 'the device has no IOMMU group (no IOMMU, or not bound to a VFIO driver)' : undefined,
  );
  const devDir = join(o.dev ?? '/dev', 'vfio');
  const groupPath = existsSync(join(devDir, group)) ? join(devDir, group) : existsSync(join(devDir, `noiommu-${group}`)) ? join(devDir, `noiommu-${group}`) : join(devDir, group);
  const g = openGroup(spec, groupPath);
  let fd: number;
  try {
    fd = step(spec, `VFIO_GROUP_GET_DEVICE_FD(${name})`, () => ioctlSync(g.groupFd, Ioctl.GROUP_GET_DEVICE_FD, encodeDeviceName(name)));
  } catch (e) {
    releaseGroup(groupPath);
    throw e;
  }
  return new KernelDevice({ id: name, fd, path: `${groupPath} (${real})`, onClose: () => releaseGroup(groupPath), ...(o.engine ? { engine: o.engine } : {}) });
}

/** The sysfs name (PCI address / UUID) behind /dev/vfio/devices/vfioX, if sysfs shows it. */
function cdevDeviceName(cdevPath: string, o: OpenOptions): string | undefined {
  try {
    return basename(realpathSync(join(sysfsOf(o), 'class/vfio-dev', basename(cdevPath), 'device')));
  } catch {
    return undefined;
  }
}

function openViaCdev(spec: string, cdevPath: string, o: OpenOptions): KernelDevice {
  const iommufd = openRw(spec, 'open /dev/iommu', join(o.dev ?? '/dev', 'iommu'), (e) =>
    e === errnoNumber('ENOENT') ? 'no /dev/iommu: the kernel needs CONFIG_IOMMUFD' : undefined,
  );
  let fd = -1;
  try {
    fd = openRw(spec, `open ${cdevPath}`, cdevPath, (e) => (e === errnoNumber('ENOENT') ? 'no such cdev (CONFIG_VFIO_DEVICE_CDEV)' : undefined));
    const bind = encodeBindIommufd(iommufd);
    step(spec, 'VFIO_DEVICE_BIND_IOMMUFD', () => ioctlSync(fd, Ioctl.DEVICE_BIND_IOMMUFD, bind), (e) =>
      e === errnoNumber('EBUSY') ? "the device's group is open through /dev/vfio/N" : e === errnoNumber('EINVAL') ? 'already bound (one cdev open per device)' : undefined,
    );
    decodeBindIommufd(bind);
    const ioas = encodeIoasAlloc();
    step(spec, 'IOMMU_IOAS_ALLOC', () => ioctlSync(iommufd, Ioctl.IOMMU_IOAS_ALLOC, ioas));
    const { ioasId } = decodeIoasAlloc(ioas);
    step(spec, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', () => ioctlSync(fd, Ioctl.DEVICE_ATTACH_IOMMUFD_PT, encodeAttachPt(ioasId)));
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    closeSync(iommufd);
    throw e;
  }
  const id = cdevDeviceName(cdevPath, o) ?? basename(cdevPath);
  // The iommufd (and the IOAS in it) must outlive the bound device fd.
  return new KernelDevice({ id, fd, path: cdevPath, onClose: () => closeSync(iommufd), ...(o.engine ? { engine: o.engine } : {}) });
}

/**
 * Opens one device from a spec string. Kernel devices open synchronously (a few
 * ioctls); the returned device's migration ioctls then run on the native worker pool.
 */
export async function openDevice(spec: string, o: OpenOptions = {}): Promise<MigrationDevice> {
  const d = parseDeviceSpec(spec, o);
  switch (d.kind) {
    case 'sim':
      return createSimDevice(d.spec);
    case 'fd':
      return new KernelDevice({ id: `fd${d.fd}`, fd: d.fd, path: `fd:${d.fd}`, ...(o.engine ? { engine: o.engine } : {}) });
    case 'cdev':
      return openViaCdev(spec, d.path, o);
    case 'sysfs':
      if (d.via === 'cdev') {
        const real = step(spec, `resolve ${d.path}`, () => realpathSync(d.path), (e) => (e === errnoNumber('ENOENT') ? 'no such device in sysfs' : undefined));
        const name = step(spec, `find the cdev under ${join(real, 'vfio-dev')}`, () => cdevOf(real), (e) =>
          e === errnoNumber('ENOENT') ? 'no vfio-dev/: bound to a VFIO driver, with CONFIG_VFIO_DEVICE_CDEV?' : undefined,
        );
        return openViaCdev(spec, join(o.dev ?? '/dev', 'vfio/devices', name), o);
      }
      return openViaGroup(spec, d.path, o);
  }
}

/** Opens every spec, or none: on a failure the ones already open are closed again. */
export async function openDevices(specs: readonly string[], o: OpenOptions = {}): Promise<MigrationDevice[]> {
  const out: MigrationDevice[] = [];
  try {
    for (const s of specs) out.push(await openDevice(s, o));
    const ids = new Set<string>();
    for (const d of out) {
      if (ids.has(d.id)) throw new UsageError(`device id ${d.id} appears twice (give simulated devices distinct id=)`);
      ids.add(d.id);
    }
    return out;
  } catch (e) {
    for (const d of out) await d.close().catch(() => undefined);
    throw e;
  }
}

/**
 * VFIO devices this host exposes: mdevs, PCI devices bound to a vfio driver, and cdevs,
 * as spec strings for openDevice (no device is opened).
 */
export function listHostDevices(o: OpenOptions = {}): string[] {
  const sys = sysfsOf(o);
  const out: string[] = [];
  const ls = (p: string): string[] => {
    try {
      return readdirSync(p).sort();
    } catch {
      return [];
    }
  };
  for (const u of ls(join(sys, 'bus/mdev/devices'))) out.push(`mdev:${u}`);
  for (const a of ls(join(sys, 'bus/pci/devices'))) {
    let drv = '';
    try {
      drv = basename(readlinkSync(join(sys, 'bus/pci/devices', a, 'driver')));
    } catch {
      continue;
    }
    if (/vfio/.test(drv)) out.push(`pci:${a}`);
  }
  return out;
}
