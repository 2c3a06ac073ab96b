// The kernel backend: a VFIO device fd driven through the migration uAPI. Struct bytes
// come from uapi.ts; ioctls run on the native ioctl worker pool (IoEngine.ioctlBatch), so
// a slow arc on one device never holds up the JS thread or the other devices.
import { read as fsRead, write as fsWrite } from 'node:fs';
import { promisify } from 'node:util';
import { MigState, isState } from '../fsm/index.js';
import { type IoctlRequest, type IoctlResult, closeSync, defaultEngine } from '../native/index.js';
import { type DataFd, type MigrationDevice, type PrecopyInfo, type RegionInfoSummary, VfioDeviceError } from './device.js';
import {
  Errno,
  Ioctl,
  RegionFlag,
  type RegionInfo,
  decodeGetMigration,
  decodeMigDataSize,
  decodeMigState,
  decodePrecopyInfo,
  decodeRegionInfo,
  encodeGetMigDataSize,
  encodeGetMigState,
  encodeGetMigration,
  encodePrecopyInfo,
  encodeRegionInfo,
  encodeSetMigState,
} from './uapi.js';

const preadAsync = promisify(fsRead);
const pwriteAsync = promisify(fsWrite);

/** The part of IoEngine this backend needs (tests inject a fake kernel here). */
export interface IoctlRunner {
  ioctlBatch(reqs: IoctlRequest[]): Promise<IoctlResult[]>;
}

export interface KernelDeviceOptions {
  /** Name used in errors and as the stream idstr prefix (PCI address, mdev UUID, ...). */
  id: string;
  /** An open VFIO device fd (group path, bound cdev, or handed in); the device owns it. */
  fd: number;
  engine?: IoctlRunner;
  /** Called after the device fd is closed (releases group/container or iommufd). */
  onClose?: () => void;
  /** How it was opened, for listings. */
  path?: string;
}

class KernelDataFd implements DataFd {
  #closed = false;
  constructor(
    readonly fd: number,
    readonly direction: 'save' | 'resume',
    private readonly dev: KernelDevice,
  ) {}
  get device(): string {
    return this.dev.id;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** A kernel stream that hit read() == 0 is complete unless the device fell into ERROR. */
  async verifyEnd(): Promise<void> {
    const s = await this.dev.state();
    if (s === MigState.ERROR) throw new VfioDeviceError(this.dev.id, 'read', Errno.EIO, { state: s, message: 'device entered ERROR while its state was read' });
  }
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.fd);
  }
}

export class KernelDevice implements MigrationDevice {
  readonly kind = 'kernel' as const;
  readonly id: string;
  readonly path: string | undefined;
  readonly #fd: number;
  readonly #engine: IoctlRunner;
  readonly #onClose: (() => void) | undefined;
  /** The saving data_fd of the open session, for PRECOPY_INFO. */
  #saving: KernelDataFd | undefined;
  #regions = new Map<number, RegionInfo>();
  #closed = false;

  constructor(o: KernelDeviceOptions) {
    this.id = o.id;
    this.path = o.path;
    this.#fd = o.fd;
    this.#engine = o.engine ?? defaultEngine();
    this.#onClose = o.onClose;
  }

  get fd(): number {
    return this.#fd;
  }

  async #ioctl(op: string, fd: number, request: number, arg: Buffer | number | null): Promise<IoctlResult> {
    if (this.#closed) throw new VfioDeviceError(this.id, op, Errno.EBADF, { message: 'device is closed' });
    const [r] = await this.#engine.ioctlBatch([{ fd, request, arg }]);
    return r!;
  }

  async #must(op: string, fd: number, request: number, arg: Buffer | number | null): Promise<number> {
    const r = await this.#ioctl(op, fd, request, arg);
    if (r.errno !== 0) throw new VfioDeviceError(this.id, op, r.errno);
    return r.ret;
  }

  async migrationFlags(): Promise<number> {
    const b = encodeGetMigration();
    await this.#must('migrationFlags', this.#fd, Ioctl.DEVICE_FEATURE, b);
    return decodeGetMigration(b);
  }

  async stateAnswer(): Promise<{ state: number; dataFd: number }> {
    const b = encodeGetMigState();
    await this.#must('state', this.#fd, Ioctl.DEVICE_FEATURE, b);
    return decodeMigState(b);
  }

  async state(): Promise<MigState> {
    const { state } = await this.stateAnswer();
    if (!isState(state)) throw new VfioDeviceError(this.id, 'state', Errno.EINVAL, { message: `kernel reported unknown state ${state}` });
    return state;
  }

  async setState(target: MigState): Promise<DataFd | null> {
    const b = encodeSetMigState(target);
    const r = await this.#ioctl('setState', this.#fd, Ioctl.DEVICE_FEATURE, b);
    if (r.errno !== 0) {
      // The kernel copies back the *requested* state on failure: ask for the real one.
      let actual: MigState | undefined;
      try {
        actual = await this.state();
      } catch {
        actual = undefined;
      }
      this.#trackSession(actual);
      throw new VfioDeviceError(this.id, 'setState', r.errno, actual === undefined ? { requested: target } : { requested: target, state: actual });
    }
    const { dataFd } = decodeMigState(b);
    this.#trackSession(target);
    if (dataFd < 0) return null;
    const fd = new KernelDataFd(dataFd, target === MigState.RESUMING ? 'resume' : 'save', this);
    if (fd.direction === 'save') this.#saving = fd;
    return fd;
  }

  /** A saving session survives only inside PRE_COPY / PRE_COPY_P2P / STOP_COPY. */
  #trackSession(now: MigState | undefined): void {
    if (now !== MigState.PRE_COPY && now !== MigState.PRE_COPY_P2P && now !== MigState.STOP_COPY) this.#saving = undefined;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    const s = this.#saving;
    if (!s) throw new VfioDeviceError(this.id, 'precopyInfo', Errno.EINVAL, { message: 'no saving data_fd is open (the device is not in PRE_COPY*)' });
    if (s.closed) throw new VfioDeviceError(this.id, 'precopyInfo', Errno.EBADF, { message: 'the saving data_fd was closed' });
    const b = encodePrecopyInfo();
    const r = await this.#ioctl('precopyInfo', s.fd, Ioctl.MIG_GET_PRECOPY_INFO, b);
    if (r.errno !== 0) throw new VfioDeviceError(this.id, 'precopyInfo', r.errno);
    const { initialBytes, dirtyBytes } = decodePrecopyInfo(b);
    return { initialBytes, dirtyBytes };
  }

  async stopCopySize(): Promise<bigint> {
    const b = encodeGetMigDataSize();
    await this.#must('stopCopySize', this.#fd, Ioctl.DEVICE_FEATURE, b);
    return decodeMigDataSize(b);
  }

  async reset(): Promise<void> {
    await this.#must('reset', this.#fd, Ioctl.DEVICE_RESET, null);
    this.#saving = undefined;
  }

  async #region(index: number): Promise<RegionInfo> {
    let info = this.#regions.get(index);
    if (!info) {
      const b = encodeRegionInfo(index);
      await this.#must('regionInfo', this.#fd, Ioctl.DEVICE_GET_REGION_INFO, b);
      info = decodeRegionInfo(b);
      this.#regions.set(index, info);
    }
    return info;
  }

  async regionInfo(index: number): Promise<RegionInfoSummary> {
    const r = await this.#region(index);
    return { index, size: Number(r.size), readable: (r.flags & RegionFlag.READ) !== 0, writable: (r.flags & RegionFlag.WRITE) !== 0 };
  }

  async #access(op: string, index: number, offset: number, length: number): Promise<number> {
    const r = await this.#region(index);
    if (!Number.isInteger(offset) || offset < 0 || length < 0 || BigInt(offset + length) > r.size) {
      throw new VfioDeviceError(this.id, op, Errno.EINVAL, { message: `access [${offset}, +${length}) outside region ${index} (${r.size} bytes)` });
    }
    const pos = r.offset + BigInt(offset);
    if (pos > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfioDeviceError(this.id, op, Errno.EINVAL, { message: `region offset 0x${pos.toString(16)} too large` });
    return Number(pos);
  }

  async regionRead(index: number, offset: number, length: number): Promise<Buffer> {
    const pos = await this.#access('regionRead', index, offset, length);
    const buf = Buffer.alloc(length);
    try {
      const n = await preadAsync(this.#fd, buf, 0, length, pos);
      return buf.subarray(0, typeof n === 'number' ? n : n.bytesRead);
    } catch (e) {
      throw new VfioDeviceError(this.id, 'regionRead', errnoOf(e), { message: (e as Error).message });
    }
  }

  async regionWrite(index: number, offset: number, data: Buffer): Promise<void> {
    const pos = await this.#access('regionWrite', index, offset, data.length);
    try {
      await pwriteAsync(this.#fd, data, 0, data.length, pos);
    } catch (e) {
      throw new VfioDeviceError(this.id, 'regionWrite', errnoOf(e), { message: (e as Error).message });
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#saving = undefined;
    try {
      closeSync(this.#fd);
    } finally {
      this.#onClose?.();
    }
  }

  toString(): string {
    return `${this.id} (kernel${this.path ? `, ${this.path}` : ''})`;
  }
}

/** errno of a Node fs error (its `errno` is negative on Linux builds of Node 20). */
export function errnoOf(e: unknown): number {
  const n = (e as NodeJS.ErrnoException).errno;
  if (typeof n === 'number' && n !== 0) return Math.abs(n);
  return Errno.EIO;
}

